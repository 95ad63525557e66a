"""Build a student's TFLite files from its weights: run by the conversion virtualenv's Python.

``python tflite_build.py WORK``: ``WORK/student.json`` (the layers, written by
``birdd.training.export.tflite_student``) and ``WORK/student.npz`` (their arrays, batch norm
already folded in) → ``WORK/student.tflite`` (FP32), and, when ``WORK/calibration.npy`` is
there, ``WORK/student_int8.tflite``; ``WORK/built.json`` names each file's output tensor.

Only TensorFlow and numpy are imported: this runs in the throwaway TensorFlow virtualenv
(engines/models/convert.py), not under birdd's interpreter (no torch there, no TF here).

The network is rebuilt from TF ops rather than converted from ONNX (onnx2tf 1.29 failed on the
front end's first convolution). The layout is NHWC with H the STFT frames and W the mel bands
(torch's [mels, frames] maps transposed, so the log-mel needs no Transpose); the 3×3 kernels
are transposed to match, and torch's symmetric padding is an explicit Pad before a VALID
convolution (TF's SAME pads a stride-2 convolution on one side only).

int8: full-integer static quantisation calibrated on training chunks, inputs and outputs in
float; the front end's power, mel and log stay in float (as in the ONNX int8 file: int8 steps
on linear power wipe out the quiet bands), through TFLite's selective quantisation.
"""

import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

# Names given to the front end's float-only ops, denylisted in the int8 file.
FLOAT_NODES = ("power", "mel", "log_mel")


def conv_weight(torch_weight):
    """torch Conv2d [out, in, mel, frame] → TF [frame, mel, in, out]."""
    return np.ascontiguousarray(torch_weight.transpose(3, 2, 1, 0))


def depthwise_weight(torch_weight):
    """torch depthwise [C, 1, mel, frame] → TF [frame, mel, C, 1]."""
    return np.ascontiguousarray(torch_weight.transpose(3, 2, 0, 1))


class StudentTF(tf.Module):
    def __init__(self, spec, arrays):
        super().__init__()
        self.spec = spec
        self.a = {key: tf.constant(value) for key, value in arrays.items()}

    def frontend(self, audio):
        spec = self.spec["frontend"]
        x = audio[:, :, None]
        if spec["decimate"] > 1:
            x = tf.nn.conv1d(x, self.a["lowpass"], spec["decimate"], "VALID")
        x = tf.nn.conv1d(x, self.a["dft"], spec["hop"], "VALID")  # [B, frames, 2K]
        bins = spec["bins"]
        real, imaginary = x[:, :, :bins], x[:, :, bins:]
        squares = tf.multiply(real, real, "power_re"), tf.multiply(imaginary, imaginary, "power_im")
        power = tf.add(*squares, name="power")
        mel = tf.matmul(power, self.a["mel"], name="mel")  # [B, frames, mels]
        x = tf.math.log(mel + spec["log_floor"], name="log_mel")[:, :, :, None]
        return x * self.a["norm_scale"] + self.a["norm_shift"]

    def conv(self, x, layer):
        x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        stride = [1, layer["stride"], layer["stride"], 1]
        weight = self.a[layer["weight"]]
        if layer["type"] == "depthwise":
            x = tf.nn.depthwise_conv2d(x, weight, stride, "VALID")
        else:
            x = tf.nn.conv2d(x, weight, stride, "VALID")
        return tf.nn.relu(x + self.a[layer["bias"]])

    def pointwise(self, x, layer):
        x = tf.nn.conv2d(x, self.a[layer["weight"]], 1, "VALID")
        return tf.nn.relu(x + self.a[layer["bias"]])

    @tf.function
    def __call__(self, audio):
        x = self.frontend(audio)
        for layer in self.spec["layers"]:
            x = self.pointwise(x, layer) if layer["type"] == "pointwise" else self.conv(x, layer)
        x = tf.reduce_mean(x, axis=2)  # over the mel bands: [B, frames, C]
        pooled = tf.concat([tf.reduce_mean(x, axis=1), tf.reduce_max(x, axis=1)], axis=1)
        return tf.matmul(pooled, self.a["classifier_weight"]) + self.a["classifier_bias"]


def load(work):
    spec = json.loads((work / "student.json").read_text(encoding="utf-8"))
    with np.load(work / "student.npz") as stored:
        arrays = {key: stored[key].astype(np.float32) for key in stored.files}
    for layer in spec["layers"]:
        weight = arrays[layer["weight"]]
        arrays[layer["weight"]] = (
            depthwise_weight(weight) if layer["type"] == "depthwise" else conv_weight(weight)
        )
    arrays["dft"] = np.ascontiguousarray(arrays["dft"].T[:, None, :])  # [n_fft, 1, 2K]
    arrays["mel"] = np.ascontiguousarray(arrays["mel"].T)  # [K, mels]
    if "lowpass" in arrays:
        arrays["lowpass"] = arrays["lowpass"][:, None, None]
    arrays["classifier_weight"] = np.ascontiguousarray(arrays["classifier_weight"].T)
    return spec, arrays


def converter_for(module, samples):
    signature = tf.TensorSpec([None, samples], tf.float32, name="audio")
    function = module.__call__.get_concrete_function(signature)
    return tf.lite.TFLiteConverter.from_concrete_functions([function], module)


def float_nodes(fp32_bytes):
    """The FP32 file's tensors that the front end's float-only ops write."""
    interpreter = tf.lite.Interpreter(model_content=fp32_bytes)
    names = [detail["name"] for detail in interpreter.get_tensor_details()]
    return [name for name in names if any(part in name for part in FLOAT_NODES)]


def int8_bytes(module, samples, calibration, keep_float):
    def representative():
        for row in calibration:
            yield [row[None].astype(np.float32)]

    converter = converter_for(module, samples)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=keep_float)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=representative, debug_options=options
    )
    return debugger.get_nondebug_quantized_model()


def output_name(model_bytes):
    interpreter = tf.lite.Interpreter(model_content=model_bytes)
    return interpreter.get_output_details()[0]["name"]


def main(work):
    spec, arrays = load(work)
    module = StudentTF(spec, arrays)
    samples = spec["samples"]
    fp32 = converter_for(module, samples).convert()
    (work / "student.tflite").write_bytes(fp32)
    built = {"student.tflite": {"output": output_name(fp32)}}
    calibration_path = work / "calibration.npy"
    if calibration_path.is_file():
        keep_float = float_nodes(fp32)
        int8 = int8_bytes(module, samples, np.load(calibration_path), keep_float)
        (work / "student_int8.tflite").write_bytes(int8)
        built["student_int8.tflite"] = {"output": output_name(int8), "float_nodes": keep_float}
    (work / "built.json").write_text(json.dumps(built, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
