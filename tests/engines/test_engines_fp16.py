from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgevis.engines.precision import FLOAT, FLOAT16, PrecisionError, convert_fp16, sensitive_nodes
from edgevis.spec import IOSpec


def _session(model):
    import onnxruntime as ort

    from edgevis.plugins.ort_ops import extensions_library_path, for_onnxruntime

    m, ext = for_onnxruntime(model)
    so = ort.SessionOptions()
    if ext:
        so.register_custom_ops_library(extensions_library_path())
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _io(m):
    return [(v.name, v.type.tensor_type.elem_type) for v in (*m.graph.input, *m.graph.output)]


@pytest.mark.parametrize("flavor", ["trt", "portable"])
def test_fp16_keeps_io_and_sensitive_nodes_and_matches_within_fp16_tolerance(gru_onnx, flavor):
    m = onnx.load(str(gru_onnx[flavor]))
    spec = IOSpec.from_onnx(m)
    keep = sensitive_nodes(m, [("h", "h_out")])
    m16, used = convert_fp16(m, keep, converter="edgevis")
    assert used == "edgevis" and _io(m16) == _io(m)
    onnx.checker.check_model(m16)
    conv_w = [t for t in m16.graph.initializer if t.name.endswith("__fp16")]
    assert conv_w and all(t.data_type == FLOAT16 for t in conv_w)
    # kept nodes read and write FP32; the convolutions run in FP16
    types = {v.name: v.type.tensor_type.elem_type for v in (*m16.graph.value_info, *m16.graph.output)}
    for n in m16.graph.node:
        if n.name in keep and n.op_type != "ConvGRUCell":
            assert all(types.get(o, FLOAT) == FLOAT for o in n.output), n.name
        if n.op_type == "Conv":
            assert types.get(n.output[0]) == FLOAT16, n.name
    feeds = {k: v.numpy() for k, v in spec.example_inputs(seed=3).items()}
    feeds["h"] = np.random.default_rng(0).uniform(-1, 1, feeds["h"].shape).astype(np.float32)
    ref = _session(m).run(None, feeds)
    got = _session(m16).run(None, feeds)
    for name, a, b in zip(spec.output_names, ref, got):
        assert b.dtype == np.float32
        assert np.abs(a - b).max() < 1e-2, name  # FP16 tolerance (uint8 image through 3 FP16 convs)
        assert np.abs(a - b).max() > 0 or name == "probs"  # it really ran in reduced precision


def test_unknown_converter_is_a_clear_error(gru_onnx):
    with pytest.raises(PrecisionError, match="unknown"):
        convert_fp16(onnx.load(str(gru_onnx["trt"])), set(), converter="magic")


@pytest.mark.slow
def test_qdq_keeps_plugin_domain_and_sensitive_nodes_unquantised(gru_onnx, tmp_path):
    from edgevis.engines.calibration import quantize_qdq

    m = onnx.load(str(gru_onnx["trt"]))
    spec = IOSpec.from_onnx(m)
    keep = sensitive_nodes(m, [("h", "h_out")])
    feeds = [{k: v.numpy() for k, v in spec.example_inputs(seed=s).items()} for s in range(4)]
    q = quantize_qdq(m, feeds, list(keep), tmp_path)
    ops = [n.op_type for n in q.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    plugin = [n for n in q.graph.node if n.op_type == "ConvGRUCell"]
    assert plugin and plugin[0].domain == "edgevis"
    assert IOSpec.from_onnx(q).to_json() == spec.to_json()
