"""MSDA parity across every CPU form, and the exported graphs' structure.

Forms compared with the grid_sample reference (FP32, max abs error <= 1e-5): the custom op, the
portable form eagerly, the portable ONNX in onnxruntime, the trt-flavor ONNX
(edgevis::MSDeformAttn) and the built-in-TensorRT-node variant in onnxruntime via Python custom ops.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgevis.plugins.flavor import PLUGIN_DOMAIN, export_flavor
from edgevis.plugins.ms_deform_attn import (
    BUILTIN_PLUGIN_NAME,
    PLUGIN_NAME,
    level_starts,
    ms_deform_attn,
    ms_deform_attn_reference,
    msda_portable,
)
from edgevis.plugins.ort_ops import extensions_library_path, for_onnxruntime

TOL = 1e-5
# (B, Q, M, D, P, level shapes): odd sizes, 1 and 4 levels, a 1x1 level, B > 1.
CASES = {
    "one_level_odd": (1, 13, 3, 5, 3, ((9, 7),)),
    "four_levels_b2": (2, 11, 2, 4, 4, ((7, 11), (4, 6), (2, 3), (1, 1))),
    "encoder_like": (3, 27, 2, 8, 2, ((4, 5), (2, 3))),  # Q = S, as in the deformable encoder
}


def make_inputs(B: int, Q: int, M: int, D: int, P: int, shapes: tuple, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    L, S = len(shapes), sum(h * w for h, w in shapes)
    loc = torch.rand(B, Q, M, L, P, 2, generator=g) * 1.6 - 0.3  # about a third of the points fall outside [0, 1]
    loc[0, 0, 0, 0, 0] = torch.tensor([-0.02, 0.5])  # just outside the left edge: half a pixel of zeros
    loc[0, 0, 0, 0, 1] = torch.tensor([1.7, 2.0])  # far outside: contributes nothing
    w = torch.rand(B, Q, M, L, P, generator=g)
    return {
        "value": torch.randn(B, S, M, D, generator=g),
        "spatial_shapes": torch.tensor(shapes, dtype=torch.int64),
        "level_start_index": torch.tensor(level_starts(shapes), dtype=torch.int64),
        "sampling_locations": loc,
        "attention_weights": w / w.sum((-1, -2), keepdim=True),
    }


class Msda(torch.nn.Module):
    """How models call the op: shape tensors built from Python ints, plus the static shapes."""

    def __init__(self, shapes: tuple) -> None:
        super().__init__()
        self.shapes = shapes

    def forward(self, value: torch.Tensor, loc: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ss = torch.tensor(self.shapes, dtype=torch.int64)
        starts = torch.tensor(level_starts(self.shapes), dtype=torch.int64)
        return ms_deform_attn(value, ss, starts, loc, weights, shapes=self.shapes)


def export(shapes: tuple, x: dict[str, torch.Tensor], path, flavor: str, **options) -> onnx.ModelProto:
    args = (x["value"], x["sampling_locations"], x["attention_weights"])
    with export_flavor(flavor, **options):
        torch.onnx.export(
            Msda(shapes).eval(),
            args,
            str(path),
            dynamo=True,
            input_names=["value", "loc", "weights"],
            output_names=["out"],
            external_data=False,
            opset_version=18,
        )
    return onnx.load(str(path))


def run_ort(model: onnx.ModelProto, x: dict[str, torch.Tensor]) -> np.ndarray:
    m, needs_ext = for_onnxruntime(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if needs_ext:
        so.register_custom_ops_library(extensions_library_path())
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {
        "value": x["value"].numpy(),
        "loc": x["sampling_locations"].numpy(),
        "weights": x["attention_weights"].numpy(),
    }
    return sess.run(None, feeds)[0]


VARIANTS = {"portable": ("portable", {}), "trt": ("trt", {}), "trt_builtin": ("trt", {"msda_builtin": True})}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """(case, variant) -> (inputs, reference output, ONNX model); each graph exported once."""
    out = {}
    tmp = tmp_path_factory.mktemp("msda")
    for case, (B, Q, M, D, P, shapes) in CASES.items():
        x = make_inputs(B, Q, M, D, P, shapes)
        ref = ms_deform_attn_reference(**x)
        for variant, (flavor, options) in VARIANTS.items():
            out[case, variant] = (x, ref, export(shapes, x, tmp / f"{case}_{variant}.onnx", flavor, **options))
    return out


@pytest.mark.parametrize("case", CASES)
def test_custom_op_and_eager_portable_match_reference(case: str) -> None:
    B, Q, M, D, P, shapes = CASES[case]
    x = make_inputs(B, Q, M, D, P, shapes, seed=1)
    ref = ms_deform_attn_reference(**x)
    assert ref.shape == (B, Q, M * D)
    op = torch.ops.edgevis.ms_deform_attn(*x.values())
    assert torch.allclose(op, ref, rtol=0, atol=TOL)
    assert (ms_deform_attn(*x.values()) - ref).abs().max().item() <= TOL
    got = msda_portable(x["value"], shapes, x["sampling_locations"], x["attention_weights"])
    assert (got - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES)
def test_onnx_forms_match_reference_in_onnxruntime(exported: dict, case: str, variant: str) -> None:
    x, ref, model = exported[case, variant]
    got = run_ort(model, x)
    assert got.shape == tuple(ref.shape)
    assert np.abs(got - ref.numpy()).max() <= TOL


def test_portable_samples_exactly_on_edges_and_corners() -> None:
    """Sample points on pixel centres, map edges and corners: the clamped rows and zeroed weights agree."""
    shapes = ((3, 4), (2, 2))
    x = make_inputs(1, 4, 2, 3, 2, shapes, seed=5)
    edges = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.125, 1.0 / 6.0], [1.0, 0.0]])  # (Q, 2): corners, a centre
    x["sampling_locations"][:] = edges.view(1, 4, 1, 1, 1, 2)
    ref = ms_deform_attn_reference(**x)
    got = msda_portable(x["value"], shapes, x["sampling_locations"], x["attention_weights"])
    assert (got - ref).abs().max().item() <= TOL
    # The first level's (0.125, 1/6) point is pixel (0, 0)'s centre: an exact read, no blending.
    centre = torch.zeros_like(x["sampling_locations"][:, 2:3]) - 5.0  # every other level far off the map
    centre[..., 0, :, :] = torch.tensor([0.125, 1.0 / 6.0])
    w = torch.ones(1, 1, 2, 2, 2)
    one = msda_portable(x["value"], shapes, centre, w).view(1, 2, 3)  # (B, M, D)
    assert torch.allclose(one, 2.0 * x["value"][:, 0], atol=TOL)  # P=2 points, both at pixel (0, 0)


def test_portable_graph_is_one_gather_and_one_matmul(exported: dict) -> None:
    """All levels, points and corners in one Gather of value's rows and one MatMul; value is never copied."""
    _, _, model = exported["four_levels_b2", "portable"]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMul") == 1
    assert not {"Pad", "Concat", "ScatterND", "ScatterElements"} & set(ops)
    value_views = {n.output[0] for n in model.graph.node if n.op_type == "Reshape" and n.input[0] == "value"}
    gathers_of_value = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in value_views]
    assert len(gathers_of_value) == 1  # rows of value viewed as (B*S*M, D): no Transpose/copy before it
    assert sum(1 for n in model.graph.node if "value" in n.input) == 1  # value feeds only that Reshape


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("case", CASES)
def test_trt_graph_is_one_plugin_node_with_attributes(exported: dict, case: str) -> None:
    _, ref, model = exported[case, "trt"]
    B, Q, M, D, P, shapes = CASES[case]
    plugin_nodes = [n for n in model.graph.node if n.domain == PLUGIN_DOMAIN]
    assert [n.op_type for n in plugin_nodes] == [PLUGIN_NAME]
    node = plugin_nodes[0]
    assert _attrs(node) == {
        "plugin_namespace": b"edgevis",
        "plugin_version": b"1",
        "num_levels": len(shapes),
        "num_points": P,
    }
    assert len(node.input) == 5 and len(node.output) == 1
    # spatial_shapes / level_start_index are int64 constants holding the static shapes.
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    consts = {
        n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"
    }
    consts.update(inits)
    assert consts[node.input[1]].tolist() == [list(s) for s in shapes] and consts[node.input[1]].dtype == np.int64
    assert consts[node.input[2]].tolist() == list(level_starts(shapes))
    # Shape inference: the output's shape is known downstream.
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [B, Q, M * D]


def test_builtin_trt_graph_uses_int32_shapes_and_reshapes(exported: dict) -> None:
    _, _, model = exported["four_levels_b2", "trt_builtin"]
    B, Q, M, D, P, shapes = CASES["four_levels_b2"]
    nodes = [n for n in model.graph.node if n.op_type == BUILTIN_PLUGIN_NAME]
    assert len(nodes) == 1 and not any(n.domain == PLUGIN_DOMAIN for n in model.graph.node)
    assert _attrs(nodes[0])["plugin_version"] == b"1"
    inferred = onnx.shape_inference.infer_shapes(model)
    vi = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    out = vi[nodes[0].output[0]].type.tensor_type
    assert [d.dim_value for d in out.shape.dim] == [B, Q, M, D]
    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in model.graph.node if n.op_type == "Constant"}
    consts.update(inits)
    assert consts[nodes[0].input[1]].data_type == onnx.TensorProto.INT32
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [B, Q, M * D]


@pytest.mark.parametrize("case", CASES)
def test_portable_graph_has_only_standard_ops(exported: dict, case: str) -> None:
    _, _, model = exported[case, "portable"]
    ops = {n.op_type for n in model.graph.node}
    assert "GridSample" not in ops
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    assert "Gather" in ops and "MatMul" in ops  # the gather-based bilinear sampling
    onnx.checker.check_model(model, full_check=True)


def test_custom_op_gradients_match_reference() -> None:
    x = make_inputs(2, 5, 2, 3, 2, ((3, 4), (2, 2)), seed=3)
    leaves = ("value", "sampling_locations", "attention_weights")
    grads = []
    for fn in (lambda **k: torch.ops.edgevis.ms_deform_attn(*k.values()), ms_deform_attn_reference):
        inp = {k: (v.clone().requires_grad_(True) if k in leaves else v) for k, v in x.items()}
        (fn(**inp) ** 2).sum().backward()
        grads.append([inp[k].grad for k in leaves])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("variant", ["portable", "trt"])
def test_dynamic_batch_export_runs_other_batch_sizes(tmp_path, variant: str) -> None:
    """Stages export with a dynamic ``B`` (streams); both forms keep it symbolic."""
    B, Q, M, D, P, shapes = CASES["encoder_like"]
    x = make_inputs(B, Q, M, D, P, shapes)
    batch = torch.export.Dim("B", min=1, max=8)
    with export_flavor(variant):
        torch.onnx.export(
            Msda(shapes).eval(),
            (x["value"], x["sampling_locations"], x["attention_weights"]),
            str(tmp_path / "dyn.onnx"),
            dynamo=True,
            input_names=["value", "loc", "weights"],
            output_names=["out"],
            external_data=False,
            opset_version=18,
            dynamic_shapes=({0: batch}, {0: batch}, {0: batch}),
        )
    model = onnx.load(str(tmp_path / "dyn.onnx"))
    assert [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == ["B", Q, M * D]
    x5 = make_inputs(5, Q, M, D, P, shapes, seed=4)
    assert np.abs(run_ort(model, x5) - ms_deform_attn_reference(**x5).numpy()).max() <= TOL
