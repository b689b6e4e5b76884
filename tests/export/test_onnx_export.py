from __future__ import annotations

import onnx
import pytest

from edgevis.errors import SpecError
from edgevis.export import export_stage
from edgevis.export.onnx_export import read_metadata, weights_fingerprint
from edgevis.runtime.backends import OrtBackend
from edgevis.runtime.pipeline import ensure_onnx
from edgevis.spec import IOSpec


@pytest.mark.parametrize("flavor", ["portable", "trt"])
def test_export_writes_single_file_with_spec_and_parity(toy, tmp_path, flavor):
    path = tmp_path / f"frame.{flavor}.onnx"
    report = export_stage(toy, "frame", path, flavor)
    assert path.is_file() and not list(tmp_path.glob("*.data"))  # single file, no external data
    proto = onnx.load(str(path))
    assert IOSpec.from_onnx(proto) == toy.iospec("frame")
    assert [i.name for i in proto.graph.input] == ["image", "h"]
    assert [o.name for o in proto.graph.output] == ["logits", "scores", "h_out"]
    assert set(report.max_abs_error) == {"logits", "scores", "h_out"}
    assert max(report.max_abs_error.values()) <= 1e-4
    meta = read_metadata(path)
    assert meta["edgevis.flavor"] == flavor
    assert meta["edgevis.weights"] == weights_fingerprint(toy.net)


def test_exported_graph_has_dynamic_stream_batch(toy, tmp_path):
    path = tmp_path / "f.onnx"
    export_stage(toy, "frame", path, parity=False)
    b = OrtBackend(path)
    out = b(toy.iospec("frame").example_inputs({"B": 3}))
    assert out["logits"].shape[0] == 3 and out["h_out"].shape[0] == 3


def test_ensure_onnx_reexports_when_weights_change(toy, tmp_path):
    p = ensure_onnx(toy, "frame", "portable", tmp_path)
    stamp = p.stat().st_mtime_ns
    assert ensure_onnx(toy, "frame", "portable", tmp_path) == p and p.stat().st_mtime_ns == stamp
    with __import__("torch").no_grad():
        toy.net.head.bias.add_(1.0)
    ensure_onnx(toy, "frame", "portable", tmp_path)
    assert read_metadata(p)["edgevis.weights"] == weights_fingerprint(toy.net)


def test_onnx_without_iospec_is_a_clear_error(tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    p = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(g), str(p))
    with pytest.raises(SpecError, match="export it with `edgevis export`"):
        OrtBackend(p)


def test_onnx_of_another_model_is_rejected(toy, tmp_path):
    p = tmp_path / "f.onnx"
    export_stage(toy, "frame", p, parity=False)
    with pytest.raises(SpecError, match="expected 'mobileinst_tiny'"):
        OrtBackend(p, expect_model="mobileinst_tiny")
