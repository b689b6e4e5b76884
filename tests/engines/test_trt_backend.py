from __future__ import annotations

import importlib.util

import pytest
import torch

from edgevis.engines.cache import BuildSettings, EngineError, Environment, make_key, write_sidecar
from edgevis.errors import MissingDependencyError
from edgevis.runtime.backends.trt import TrtBackend
from edgevis.spec import IOSpec

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _fake_engine(tmp_path, onnx_path):
    spec = IOSpec.from_onnx(onnx_path)
    settings = BuildSettings("fp32")
    key = make_key(spec, onnx_path, settings, Environment("Orin", "8.7", "10.3.0"))
    path = key.path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not really an engine" * 50)
    write_sidecar(path, key, spec, settings, {}, onnx_path)
    return path


def test_sidecar_is_checked_before_tensorrt_is_imported(tmp_path, gru_onnx, monkeypatch):
    path = _fake_engine(tmp_path, gru_onnx["trt"])
    path.write_bytes(path.read_bytes()[:100])  # truncated
    import edgevis.runtime.backends.trt as mod

    def boom():
        raise AssertionError("imported TensorRT before checking the sidecar")

    monkeypatch.setattr(mod, "import_tensorrt", boom)
    with pytest.raises(EngineError, match="corrupt or truncated"):
        TrtBackend(path)
    with pytest.raises(EngineError, match="holds model 'gru_plugin_test', expected 'toy_convgru'"):
        _fake = _fake_engine(tmp_path / "b", gru_onnx["trt"])
        TrtBackend(_fake, expect_model="toy_convgru")


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown where TensorRT is missing")
def test_valid_engine_without_tensorrt_names_the_install(tmp_path, gru_onnx):
    path = _fake_engine(tmp_path, gru_onnx["trt"])
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed.*JetPack"):
        TrtBackend(path)


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown where TensorRT is missing")
def test_open_backends_trt_without_tensorrt(toy):
    from edgevis.runtime.pipeline import open_backends

    with pytest.raises(MissingDependencyError, match="TensorRT"):
        open_backends(toy, "trt")


@pytest.mark.trt
@pytest.mark.skipif(not (HAS_TRT and torch.cuda.is_available()), reason="needs TensorRT and a CUDA GPU")
def test_ping_pong_state_and_cuda_graphs_match_torch(tmp_path, gru_onnx):
    import tensorrt as trt

    from edgevis.engines.build import build_stage
    from edgevis.runtime.backends import TorchBackend

    res = build_stage(trt, gru_onnx["trt"], "fp32", Environment.detect(trt.__version__), tmp_path)
    model = gru_onnx["model"]
    spec = model.iospec("frame")
    ref = TorchBackend(model.stage("frame"), spec)
    be = TrtBackend(res.path, cuda_graphs=True)
    feeds = spec.example_inputs(seed=1)
    h_ref, h_got, ptrs = feeds["h"], feeds["h"].cuda(), []
    for t in range(6):
        img = spec.example_inputs(seed=10 + t)["image"]
        o_ref = ref({"image": img, "h": h_ref})
        o_got = be({"image": img.cuda(), "h": h_got})
        h_ref, h_got = o_ref["h_out"], o_got["h_out"]
        ptrs.append(h_got.data_ptr())
        assert torch.allclose(o_ref["probs"], o_got["probs"].cpu(), atol=1e-3)
    assert torch.allclose(h_ref, h_got.cpu(), atol=1e-3)
    assert ptrs[0] == ptrs[2] == ptrs[4] and ptrs[1] == ptrs[3] and ptrs[0] != ptrs[1]  # ping-pong, no copies
    assert be.describe()["cuda_graphs"] in (True, False)
