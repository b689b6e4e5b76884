from __future__ import annotations

import pytest
import torch
from onnx import TensorProto, helper

from edgevis.errors import SpecError
from edgevis.spec import METADATA_KEY, IOSpec, Preprocess, StateSpec, TensorSpec


def make_spec() -> IOSpec:
    return IOSpec(
        model="m", stage="frame",
        inputs=[TensorSpec("image", "float32", ("B", 3, 8, 8)), TensorSpec("idx", "int64", ("B",))],
        outputs=[TensorSpec("y", "float32", ("B", 4))],
        states=[StateSpec("h", "h_out", ("B", 2, 4, 4), "float32", "zeros"),
                StateSpec("m", "m_out", ("B", 3), "float32", "neg_inf")],
        preprocess=Preprocess(size_multiple=64, channel_order="BGR"), image_input="image",
        dims={"B": 1}, tolerances={"y": 1e-5},
    )


def test_json_round_trip():
    spec = make_spec()
    again = IOSpec.from_json(spec.to_json())
    assert again == spec
    assert again.input_names == ["image", "idx", "h", "m"]
    assert again.output_names == ["y", "h_out", "m_out"]


def test_onnx_metadata_round_trip_and_identity_checks():
    spec = make_spec()
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    proto = helper.make_model(g)
    with pytest.raises(SpecError, match=f"no '{METADATA_KEY}' metadata"):
        IOSpec.from_onnx(proto)
    spec.write_onnx(proto)
    spec.write_onnx(proto)  # replaces, never duplicates
    assert sum(p.key == METADATA_KEY for p in proto.metadata_props) == 1
    assert IOSpec.from_onnx(proto) == spec
    with pytest.raises(SpecError, match="exported from model 'm', expected 'other'"):
        IOSpec.from_onnx(proto, expect_model="other")
    with pytest.raises(SpecError, match="is stage 'frame', expected stage 'clip'"):
        IOSpec.from_onnx(proto, expect_stage="clip")


def test_from_onnx_missing_and_corrupt_files(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        IOSpec.from_onnx(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(SpecError, match="not a readable ONNX file"):
        IOSpec.from_onnx(bad)


def test_validate_names_dtype_rank_and_named_dims():
    spec = make_spec()
    feeds = spec.example_inputs({"B": 2})
    assert spec.validate(feeds) == {"B": 2}
    with pytest.raises(SpecError, match=r"missing \['m'\], unexpected \['extra'\]"):
        spec.validate({**{k: v for k, v in feeds.items() if k != "m"}, "extra": feeds["m"]})
    with pytest.raises(SpecError, match=r"input 'idx': received dtype float32, expected int64"):
        spec.validate({**feeds, "idx": torch.zeros(2)})
    with pytest.raises(SpecError, match=r"input 'image': received shape \[2, 3, 8\] \(rank 3\), expected \['B', 3, 8, 8\] \(rank 4\)"):
        spec.validate({**feeds, "image": torch.zeros(2, 3, 8)})
    with pytest.raises(SpecError, match=r"input 'h': axis 0 \('B'\) is 3 but 'B' is 2"):
        spec.validate({**feeds, "h": torch.zeros(3, 2, 4, 4)})
    with pytest.raises(SpecError, match=r"axis 2 must be 8"):
        spec.validate({**feeds, "image": torch.zeros(2, 3, 9, 8)})


def test_init_rules():
    st = make_spec().init_state({"B": 2})
    assert torch.equal(st["h"], torch.zeros(2, 2, 4, 4))
    assert torch.isneginf(st["m"]).all() and st["m"].shape == (2, 3)


def test_bad_spec_values_are_clear():
    with pytest.raises(SpecError, match="dtype 'float8' is not supported"):
        TensorSpec("x", "float8", (1,))
    with pytest.raises(SpecError, match="init rule 'random' unknown"):
        StateSpec("h", "h_out", (1,), init="random")
    with pytest.raises(SpecError, match="version 99 is not supported"):
        IOSpec.from_dict({**make_spec().to_dict(), "version": 99})
    with pytest.raises(SpecError, match="malformed"):
        IOSpec.from_dict({"version": 1, "model": "m"})
