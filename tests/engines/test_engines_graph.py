from __future__ import annotations

import onnx

from edgevis.engines.precision import make_plan, sensitive_nodes
from edgevis.spec import IOSpec


def test_trt_graph_has_exactly_the_plugin_node_with_attributes(gru_onnx):
    g = onnx.load(str(gru_onnx["trt"])).graph
    plugin = [n for n in g.node if n.domain == "edgevis"]
    assert [n.op_type for n in plugin] == ["ConvGRUCell"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in plugin[0].attribute}
    assert attrs == {"plugin_namespace": b"edgevis", "plugin_version": b"1", "emit_fp16": 0}
    assert list(plugin[0].output) == ["h_out"]  # the state output comes straight from the plugin
    portable = onnx.load(str(gru_onnx["portable"])).graph
    assert not [n for n in portable.node if n.domain not in ("", "ai.onnx")]


def test_precision_plan_keeps_softmax_and_gru_state_fp32(gru_onnx):
    for flavor in ("trt", "portable"):
        m = onnx.load(str(gru_onnx[flavor]))
        spec = IOSpec.from_onnx(m)
        keep = sensitive_nodes(m, [(s.name_in, s.name_out) for s in spec.states])
        by_op = {}
        for n in m.graph.node:
            if n.name in keep:
                by_op.setdefault(n.op_type, []).append(keep[n.name])
        assert by_op.pop("Softmax") == ["softmax"]
        convs = [n.name for n in m.graph.node if n.op_type == "Conv"]
        assert not set(convs) & set(keep), "convolutions must stay free to run in FP16"
        if flavor == "trt":
            assert by_op.pop("ConvGRUCell") == ["GRU state"]
        else:  # the portable update (1 - z) * h + z * tanh(n) is the element-wise cone behind h_out
            assert {"Add", "Mul", "Tanh", "Sigmoid"} <= set(by_op)
        assert all(r == ["GRU state"] * len(r) for r in by_op.values())  # r * h reads the state: kept too


def test_plans_per_generation(gru_onnx):
    m = onnx.load(str(gru_onnx["trt"]))
    p10 = make_plan(m, "fp16", "10.3.0", [("h", "h_out")])
    assert not p10.strongly_typed and p10.flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS") and p10.onnx_rewrite is None
    assert "node_softmax" in p10.fp32_nodes and not p10.calibrator
    i10 = make_plan(m, "int8", "10.3.0", [("h", "h_out")])
    assert i10.calibrator and i10.flags[:2] == ("INT8", "FP16")
    assert make_plan(m, "fp32", "10.3.0").clear_flags == ("TF32",)
    p11 = make_plan(m, "fp16", "11.1.0", [("h", "h_out")])
    assert p11.strongly_typed and p11.flags == () and p11.onnx_rewrite == "fp16"
    assert p11.fp32_nodes == p10.fp32_nodes
    assert make_plan(m, "int8", "11.1.0").onnx_rewrite == "qdq"
