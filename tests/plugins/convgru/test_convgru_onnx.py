"""ConvGRU ONNX forms: portable and trt graphs in onnxruntime vs the reference cell; trt node contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from edgevis.errors import EdgevisError
from edgevis.plugins.convgru import ConvGRUCell
from edgevis.plugins.convgru.onnx_forms import export_cell, ort_session, run_onnx
from edgevis.plugins.convgru.ort_op import convgru_cell_ort
from edgevis.spec import IOSpec

TOL = 1e-5


def _cells(separable: bool) -> tuple[ConvGRUCell, ConvGRUCell]:
    torch.manual_seed(1)
    fused = ConvGRUCell(3, 4, separable=separable).eval()
    plain = ConvGRUCell(3, 4, separable=separable, fused=False).eval()
    plain.load_state_dict(fused.state_dict())
    return fused, plain


@pytest.mark.parametrize(("separable", "b", "hh", "ww"), [(False, 2, 7, 9), (True, 1, 8, 5)])
def test_all_forms_agree(tmp_path: Path, separable: bool, b: int, hh: int, ww: int) -> None:
    fused, plain = _cells(separable)
    sessions = {
        fl: ort_session(export_cell(fused, tmp_path / f"{fl}.onnx", fl, b, hh, ww)) for fl in ("portable", "trt")
    }
    g = torch.Generator().manual_seed(2)
    h_ref = torch.zeros(b, 4, hh, ww)
    h_forms = {name: h_ref.clone() for name in ("op", "portable", "trt")}
    for _frame in range(3):  # a short stream: state carried through every form
        x = torch.randn(b, 3, hh, ww, generator=g)
        with torch.no_grad():
            h_ref = plain(x, h_ref)
            h_forms["op"] = fused(x, h_forms["op"])
        for fl, sess in sessions.items():
            h_forms[fl] = run_onnx(sess, x, h_forms[fl])
        for name, h in h_forms.items():
            err = (h - h_ref).abs().max().item()
            assert err <= TOL, f"{name}: max abs {err:.2e}"


def test_trt_graph_has_one_plugin_node(tmp_path: Path) -> None:
    fused, _ = _cells(True)
    model = export_cell(fused, tmp_path / "trt.onnx", "trt", 1, 6, 6)
    custom = [n for n in model.graph.node if n.domain == "edgevis"]
    assert len(custom) == 1
    node = custom[0]
    assert node.op_type == "ConvGRUCell"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"plugin_namespace": b"edgevis", "plugin_version": b"1", "emit_fp16": 0}
    producers = {o: n for n in model.graph.node for o in n.output}
    assert producers[node.input[0]].op_type == "Conv" and producers[node.input[1]].op_type == "Conv"
    assert node.input[2] == "h" and list(node.output) == ["h_out"]  # explicit state in and out
    assert {n.op_type for n in model.graph.node if n.domain == ""} <= {"Concat", "Conv", "Slice", "Sigmoid", "Mul"}
    spec = IOSpec.from_onnx(model)
    assert spec.input_names == ["x", "h"] and spec.output_names == ["h_out"]
    assert spec.states[0].name_in == "h" and spec.states[0].init == "zeros"


def test_portable_graph_is_standard_ops_only(tmp_path: Path) -> None:
    fused, _ = _cells(False)
    model = export_cell(fused, tmp_path / "portable.onnx", "portable", 1, 5, 5)
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert {"Conv", "Sigmoid", "Tanh"} <= {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model)


def test_fp16_cell_emits_fp16_copy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cell = ConvGRUCell(2, 4).half()
    model = export_cell(cell, tmp_path / "mixed.onnx", "trt", 1, 4, 6)
    node = next(n for n in model.graph.node if n.domain == "edgevis")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["emit_fp16"] == 1 and len(node.output) == 2
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert types == {"x": onnx.TensorProto.FLOAT16, "h": onnx.TensorProto.FLOAT}  # FP32 state in an FP16 graph
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_ort_python_op_refuses_fp16_form() -> None:
    zr = np.zeros((1, 2, 2, 2), np.float32)
    with pytest.raises(EdgevisError, match="emit_fp16=1 has two outputs"):
        convgru_cell_ort(zr, zr[:, :1], zr[:, :1], emit_fp16=1)
    out = convgru_cell_ort(zr, zr[:, :1], np.ones((1, 1, 2, 2), np.float32), emit_fp16=0)
    np.testing.assert_allclose(out, 0.5, atol=1e-7)  # z = 0.5, n = 0: h' = h / 2
