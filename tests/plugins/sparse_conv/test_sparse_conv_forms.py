"""All forms agree: reference, fast CPU path, torch custom op, portable ONNX and trt ONNX in onnxruntime."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgevis.plugins.flavor import export_flavor
from edgevis.plugins.ort_ops import extensions_library_path, for_onnxruntime
from edgevis.plugins.sparse_conv import triple_sparse_conv
from edgevis.plugins.sparse_conv.fast import SparseConvStats, triple_sparse_conv_fast
from edgevis.plugins.sparse_conv.reference import COMPUTE, INTERPOLATE, REUSE, out_size, triple_sparse_conv_reference

KW = dict(stride=1, padding=1, block=4, tau_t=0.3, tau_s=0.2)


def scene(n=1, c=4, h=13, w=19, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, c, h, w, generator=g)
    x = x0.clone()
    x[:, :, 2:8, 1:8] += torch.randn(n, c, 6, 7, generator=g)
    x[:, :, :, w - 6:] = 0.5
    x0[:, :, :, w - 6:] = 2.0
    return x0, x


CONFIGS = [(k, s, p, b) for k, s, b in itertools.product((1, 3), (1, 2), (1, 4, 8, 16)) for p in range(k // 2 + 1)]


@pytest.mark.parametrize("dense_above", [2.0, 0.0])  # sparse gather-GEMM path, dense fallback
@pytest.mark.parametrize("k,s,p,b", CONFIGS)
def test_fast_path_matches_reference(k, s, p, b, dense_above):
    x0, x = scene(n=2)
    w, bias = torch.randn(5, 4, k, k), torch.randn(5)
    y0 = torch.randn(2, 5, out_size(13, k, s, p), out_size(19, k, s, p))
    kw = dict(stride=s, padding=p, block=b, tau_t=0.3, tau_s=0.2)
    ref = triple_sparse_conv_reference(x, x0, y0, w, bias, **kw)
    fast = triple_sparse_conv_fast(x, x0, y0, w, bias, dense_above=dense_above, **kw)
    assert torch.equal(ref[3], fast[3])
    for a, e in zip(fast[:3], ref[:3]):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def test_fast_path_counts_flops_per_decision():
    x0, x = scene()
    w = torch.randn(5, 4, 3, 3)
    st = SparseConvStats()
    _, _, _, d = triple_sparse_conv_fast(x, x0, torch.zeros(1, 5, 13, 19), w, None, stats=st, dense_above=2.0, **KW)
    per_point = 2 * 4 * 9 * 5
    assert st.flops_dense == per_point * 13 * 19
    assert sum(st.pixels) == 13 * 19 and all(p > 0 for p in st.pixels)
    assert st.flops_compute == per_point * st.pixels[COMPUTE]
    assert per_point * st.lattice_points <= st.flops_interpolate < per_point * st.pixels[INTERPOLATE]
    sparse = st.flops_compute + st.flops_interpolate + st.flops_gate
    assert st.flops_saved == pytest.approx(1 - sparse / st.flops_dense)
    assert st.fractions()[REUSE] == st.pixels[REUSE] / (13 * 19)


def test_custom_op_matches_reference_and_does_not_alias():
    x0, x = scene()
    w, bias = torch.randn(5, 4, 3, 3), torch.randn(5)
    y0 = torch.randn(1, 5, 13, 19)
    ref = triple_sparse_conv_reference(x, x0, y0, w, bias, **KW)
    out = torch.ops.edgevis.triple_sparse_conv(x, x0, y0, w, bias, 1, 1, 4, 0.3, 0.2, False)
    assert torch.equal(out[3], ref[3])
    for a, e in zip(out[:3], ref[:3]):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)
    assert out[0].data_ptr() != out[2].data_ptr()
    via_fn = triple_sparse_conv(x, x0, y0, w, bias, **KW)
    torch.testing.assert_close(via_fn[0], ref[0], atol=1e-5, rtol=1e-5)


class Layer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv2d(4, 5, 3, padding=1)

    def forward(self, x, x0, y0):  # noqa: ANN001
        return triple_sparse_conv(x, x0, y0, self.conv.weight, self.conv.bias, **KW)


def export(flavor: str, path) -> onnx.ModelProto:  # noqa: ANN001
    x0, x = scene()
    with export_flavor(flavor):
        torch.onnx.export(Layer().eval(), (x, x0, torch.zeros(1, 5, 13, 19)), str(path), dynamo=True,
                          input_names=["x", "x0", "y0"], output_names=["y", "x0_new", "y0_new", "decision"],
                          external_data=False, opset_version=18)
    return onnx.load(str(path))


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    m, needs_ext = for_onnxruntime(model)
    so = ort.SessionOptions()
    if needs_ext:
        so.register_custom_ops_library(extensions_library_path())
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def models(tmp_path_factory):  # noqa: ANN001
    d = tmp_path_factory.mktemp("tsc")
    return {f: export(f, d / f"{f}.onnx") for f in ("portable", "trt")}


def test_trt_form_is_one_plugin_node(models):  # noqa: ANN001
    m = models["trt"]
    nodes = [n for n in m.graph.node if n.op_type == "TripleSparseConv"]
    assert len(nodes) == 1 and nodes[0].domain == "edgevis"
    assert len(nodes[0].input) == 5 and len(nodes[0].output) == 4
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["plugin_namespace"] == b"edgevis" and attrs["plugin_version"] == b"1"
    assert (attrs["stride"], attrs["padding"], attrs["block"], attrs["force_dense"]) == (1, 1, 4, 0)
    assert attrs["tau_t"] == pytest.approx(0.3) and attrs["tau_s"] == pytest.approx(0.2)


def test_portable_form_uses_standard_ops_only(models):  # noqa: ANN001
    assert {n.domain for n in models["portable"].graph.node} <= {"", "ai.onnx"}


@pytest.mark.parametrize("flavor", ["portable", "trt"])
def test_onnx_forms_match_reference_over_frames(models, flavor):  # noqa: ANN001
    """Thread the caches through 3 frames in onnxruntime and in torch; decisions include all three kinds."""
    sess = session(models[flavor])
    layer = Layer().eval()
    x0, x = scene()
    y0 = torch.zeros(1, 5, 13, 19)
    seen = set()
    frames = [x, x + 0.01 * torch.randn_like(x), x.roll(2, dims=3)]
    c_ort = (x0.numpy(), y0.numpy())
    c_ref = (x0, y0)
    for f in frames:
        with torch.no_grad():
            ref = triple_sparse_conv_reference(f, *c_ref, layer.conv.weight, layer.conv.bias, **KW)
        out = sess.run(None, {"x": f.numpy(), "x0": c_ort[0], "y0": c_ort[1]})
        np.testing.assert_array_equal(out[3], ref[3].numpy())
        for a, e in zip(out[:3], ref[:3]):
            np.testing.assert_allclose(a, e.numpy(), atol=1e-5, rtol=1e-5)
        seen |= set(out[3].flatten().tolist())
        c_ort, c_ref = (out[1], out[2]), (ref[1], ref[2])
    assert seen == {REUSE, INTERPOLATE, COMPUTE}
