"""The ONNX Runtime session helper: a provider that cannot start becomes one warning with ONNX
Runtime's reason (the lines below are what onnxruntime-gpu 1.31.1 printed on this machine,
which has no GPU: bench/onnx_gpu.py runs the real package), and a session whose providers all
start passes through untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from birdd.engines.runtime.onnx_session import CPU_PROVIDER, ORT_LINE, open_session, reason

CUDA_MISSING = (
    b"\x1b[1;31m2026-12-07 09:10:13.054224611 [E:onnxruntime:Default, provider_bridge_ort.cc:2458"
    b" operator()] /onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:2043 "
    b"onnxruntime::Provider& onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL :"
    b" Failed to load library /venv/lib/python3.11/site-packages/onnxruntime/capi/"
    b"libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open shared object "
    b"file: No such file or directory\n\x1b[m\n"
    b"\x1b[0;93m2026-12-07 09:10:13.054292074 [W:onnxruntime:Default, onnxruntime_pybind_state"
    b".cc:1295 CreateExecutionProviderFactoryInstance] Failed to create CUDAExecutionProvider. "
    b"Require cuDNN 9.* and CUDA 13.*.\x1b[m\n"
)
TENSORRT_BANNER = (
    b"*************** EP Error ***************\n"
    b"EP Error /onnxruntime_src/onnxruntime/python/onnxruntime_pybind_state.cc:729 void "
    b"onnxruntime::python::RegisterTensorRTPluginsAsCustomOps(PySessionOptions&, const "
    b"onnxruntime::ProviderOptions&) Please install TensorRT libraries as mentioned in the GPU "
    b"requirements page, make sure they're in the PATH\n when using ['TensorrtExecutionProvider',"
    b" 'CPUExecutionProvider']\nFalling back to ['CPUExecutionProvider'] and retrying.\n"
)


def test_the_reason_is_the_missing_library_and_every_native_line_is_recognised() -> None:
    assert reason(CUDA_MISSING) == (
        "libcublasLt.so.13: cannot open shared object file: No such file or directory"
    )
    assert all(ORT_LINE.search(line) for line in CUDA_MISSING.splitlines(True))
    assert not ORT_LINE.search(b"birdd: a line of our own\n")


def test_a_tensorrt_banner_names_tensorrt_and_nothing_found_says_so() -> None:
    assert reason(TENSORRT_BANNER) == "TensorRT libraries not found"
    assert reason(b"") == "no GPU, or no CUDA/TensorRT libraries for it"


def test_a_cpu_session_passes_through(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ort = pytest.importorskip("onnxruntime")
    helper = pytest.importorskip("onnx.helper")
    onnx = pytest.importorskip("onnx")
    tensor = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [tensor("x", onnx.TensorProto.FLOAT, [1])],
        [tensor("y", onnx.TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph), str(path))
    session = open_session(ort, str(path), ort.SessionOptions(), [CPU_PROVIDER])
    assert session.get_providers() == [CPU_PROVIDER]
    assert not [r for r in caplog.records if "could not start" in r.getMessage()]
