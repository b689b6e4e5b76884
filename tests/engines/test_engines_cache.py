from __future__ import annotations

import dataclasses
import json

import pytest

from edgevis.engines.cache import (
    BuildSettings,
    EngineError,
    Environment,
    check_engine,
    make_key,
    read_sidecar,
    stale_reason,
    write_sidecar,
)
from edgevis.spec import IOSpec

ORIN = Environment("Orin", "8.7", "10.3.0")


@pytest.fixture
def built(tmp_path, gru_onnx):
    """A fake engine file with a real sidecar, as the builder writes them."""
    onnx_path = gru_onnx["trt"]
    spec = IOSpec.from_onnx(onnx_path)
    settings = BuildSettings("fp16", plan={"precision": "fp16"})
    key = make_key(spec, onnx_path, settings, ORIN)
    path = key.path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00engine-bytes" * 100)
    write_sidecar(path, key, spec, settings, {"tensorrt": "10.3.0"}, onnx_path, ["ConvGRUCell"])
    return path, key, spec, settings, onnx_path


def test_name_and_sidecar_round_trip_iospec(built):
    path, key, spec, _, _ = built
    assert path.name.startswith("gru_plugin_test.frame.fp16.orin.sm87.trt10.3.0.") and path.suffix == ".engine"
    got, doc = check_engine(path, ORIN, "gru_plugin_test", "frame")
    assert got.to_json() == spec.to_json() and got == spec
    assert doc["environment"] == dataclasses.asdict(ORIN) and doc["plugin_ops"] == ["ConvGRUCell"]
    assert path.read_bytes().startswith(b"\x00engine")  # no custom header: plain TensorRT bytes
    assert stale_reason(path, key) is None


def test_key_changes_with_every_build_input(built, tmp_path):
    _, key, spec, settings, onnx_path = built
    names = {key.name}
    for s in (dataclasses.replace(settings, precision="int8"), dataclasses.replace(settings, max_batch=8),
              dataclasses.replace(settings, opt_batch=4), dataclasses.replace(settings, workspace_mb=512),
              dataclasses.replace(settings, plan={"precision": "fp16", "fp32_nodes": {"x": "softmax"}}),
              dataclasses.replace(settings, plugin_lib_sha="abc")):
        names.add(make_key(spec, onnx_path, s, ORIN).name)
    for env in (Environment("Orin", "8.7", "10.4.0"), Environment("RTX 4090", "8.9", "10.3.0")):
        names.add(make_key(spec, onnx_path, settings, env).name)
    other = tmp_path / "other.onnx"
    other.write_bytes(onnx_path.read_bytes() + b"\x00")
    names.add(make_key(spec, other, settings, ORIN).name)
    assert len(names) == 10


def test_truncated_or_corrupt_engine_is_refused_before_tensorrt(built):
    path, *_ = built
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(EngineError, match="corrupt or truncated.*rebuild"):
        check_engine(path, ORIN)
    path.write_bytes(data[:-1] + b"X")
    with pytest.raises(EngineError, match="corrupt or truncated"):
        check_engine(path, ORIN)


@pytest.mark.parametrize("env, expect", [
    (Environment("Orin", "8.7", "10.4.0"), "TensorRT 10.3.0, this machine has TensorRT 10.4.0"),
    (Environment("H100", "9.0", "10.3.0"), "built for Orin (sm 8.7), this GPU is H100 (sm 9.0)"),
])
def test_foreign_engine_is_refused_with_the_fix(built, env, expect):
    path, key, *_ = built
    with pytest.raises(EngineError, match="foreign") as e:
        check_engine(path, env)
    assert expect in str(e.value) and "edgevis build" in str(e.value) and "\n" not in str(e.value)


def test_missing_or_bad_sidecar_and_stale_onnx(built, tmp_path):
    path, key, spec, settings, onnx_path = built
    changed = tmp_path / "changed.onnx"
    changed.write_bytes(onnx_path.read_bytes() + b"\x00")
    k2 = dataclasses.replace(key, onnx_sha=make_key(spec, changed, settings, ORIN).onnx_sha)
    assert stale_reason(path, k2) == "the ONNX changed since it was built"
    side = path.with_suffix(".json")
    side.write_text("{not json")
    with pytest.raises(EngineError, match="not a valid engine sidecar"):
        read_sidecar(path)
    side.unlink()
    with pytest.raises(EngineError, match="has no sidecar.*edgevis build"):
        check_engine(path, ORIN)
    with pytest.raises(EngineError, match="does not exist"):
        check_engine(tmp_path / "nope.engine", ORIN)
    doc = {"sidecar_version": 99}
    side.write_text(json.dumps(doc))
    with pytest.raises(EngineError, match="sidecar version 99"):
        read_sidecar(path)
