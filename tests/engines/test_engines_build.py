from __future__ import annotations

import importlib.util

import onnx
import pytest
import torch

from edgevis.engines.build import build_engines, build_stage, profile_shapes
from edgevis.engines.cache import EngineError, Environment
from edgevis.errors import MissingDependencyError, SpecError
from edgevis.spec import IOSpec

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_trt = pytest.mark.skipif(not (HAS_TRT and torch.cuda.is_available()),
                               reason="needs TensorRT and a CUDA GPU (not installable on the CPU dev machines)")


def test_profile_spans_streams(gru_onnx):
    spec = IOSpec.from_onnx(gru_onnx["trt"])
    shapes = profile_shapes(spec, 1, 4, 16)
    assert shapes["image"] == ((1, 16, 24, 3), (4, 16, 24, 3), (16, 16, 24, 3))
    assert shapes["h"] == ((1, 8, 8, 12), (4, 8, 8, 12), (16, 8, 8, 12))


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown where TensorRT is missing")
def test_without_tensorrt_stops_before_any_export(monkeypatch, capsys):
    import edgevis.runtime.pipeline as pipeline
    from edgevis.cli import main

    def no_export(*a, **k):
        raise AssertionError("exported before checking for TensorRT")

    monkeypatch.setattr(pipeline, "ensure_onnx", no_export)
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed.*JetPack.*pip install"):
        build_engines("toy_convgru")
    assert main(["build", "--model", "toy_convgru", "--precision", "fp16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "TensorRT" in err and "Traceback" not in err


def test_onnx_without_iospec_is_one_line_error(tmp_path, gru_onnx):
    m = onnx.load(str(gru_onnx["portable"]))
    del m.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(m, str(bare))
    with pytest.raises(SpecError, match="no 'edgevis.iospec' metadata.*edgevis export"):
        build_stage(None, bare, "fp16", Environment("Orin", "8.7", "10.3.0"), tmp_path)


@needs_trt
@pytest.mark.trt
def test_build_cache_reuse_and_run(tmp_path, gru_onnx):
    import tensorrt as trt

    from edgevis.runtime.backends import TorchBackend, TrtBackend

    env = Environment.detect(trt.__version__)
    first = build_stage(trt, gru_onnx["trt"], "fp32", env, tmp_path)
    again = build_stage(trt, gru_onnx["trt"], "fp32", env, tmp_path)
    assert first.rebuilt and not again.rebuilt and first.path == again.path
    model = gru_onnx["model"]
    spec = model.iospec("frame")
    feeds = spec.example_inputs(seed=2)
    ref = TorchBackend(model.stage("frame"), spec)(feeds)
    be = TrtBackend(first.path)
    got = be({k: v.cuda() for k, v in feeds.items()})
    for n in spec.output_names:
        assert torch.allclose(ref[n], got[n].cpu(), atol=1e-3), n
    path = first.path
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(EngineError, match="corrupt or truncated"):
        TrtBackend(path)


def test_int8_calibration_is_recorded_only_when_a_build_needs_it(monkeypatch):
    """build_engines hands build_stage the calibration lazily and keys engines on the request (frames,
    seed), not on what was recorded: reopening cached INT8 engines records nothing; a build records the
    feeds once for all stages. TensorRT and the per-stage build are stand-ins here (no TensorRT on CPU
    machines); what is checked is build_engines' own wiring."""
    import types

    import edgevis.engines.build as build
    import edgevis.engines.calibration as calibration
    import edgevis.runtime.backends.trt as trt_backend
    import edgevis.runtime.pipeline as pipeline

    recorded = []
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(build.Environment, "detect", classmethod(lambda cls, v: Environment("Orin", "8.7", v)))
    monkeypatch.setattr(pipeline, "ensure_onnx", lambda model, stage, flavor, d: d / f"{stage}.onnx")
    monkeypatch.setattr(calibration, "calibration_frames", lambda model, n, seed: [f"frame{i}" for i in range(n)])
    monkeypatch.setattr(calibration, "record_feeds",
                        lambda model, frames: recorded.append(len(frames)) or {s: [{"f": i} for i in range(3)]
                                                                             for s in model.stages})
    seen = []

    def fake_stage(trt, onnx_path, precision, env, engine_dir, *, calib_calls, calib_key, must_build, **kw):
        seen.append((onnx_path.stem, calib_key, calib_calls() if must_build else None))
        return types.SimpleNamespace(line=lambda: "", key=types.SimpleNamespace(stage=onnx_path.stem))

    model = types.SimpleNamespace(name="m", stages=["a", "b"])
    for needs_build in (False, True):
        seen.clear()
        monkeypatch.setattr(build, "build_stage",
                            lambda *a, nb=needs_build, **k: fake_stage(*a, must_build=nb, **k))
        build.build_engines(model, precision="int8", calib_frames=8)
        assert [s[1] for s in seen] == [build.calibration_key(8)] * 2  # the request, the same for both stages
        assert recorded == ([] if not needs_build else [8])  # nothing recorded to reopen; once for a build
        if needs_build:
            assert [s[2] for s in seen] == [[{"f": 0}, {"f": 1}, {"f": 2}]] * 2
