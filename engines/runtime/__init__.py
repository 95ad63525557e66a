"""The model runtimes, once: the code that loads a TFLite, ONNX or TensorRT model and scores
batches with it, used in-process by ``birdd.engines`` and by the engine worker process.

The worker may run under another interpreter than birdd's, one that has the runtime's bindings
but not birdd (TensorRT exists only for each JetPack's system Python). So this package imports
nothing from birdd, only the standard library, numpy and the runtimes (each where it is used),
uses relative imports inside itself, and keeps to Python 3.6. ``python engines/runtime`` starts
the worker (see ``__main__.py``).
"""
