"""Autograd through ``edgevis::convgru_update`` (and its FP16-copy twin), and export with a dynamic batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgevis.plugins.convgru import ConvGRUCell, gru_update_reference
from edgevis.plugins.convgru.onnx_forms import ort_session
from edgevis.plugins.flavor import export_flavor


def _inputs(b: int, c: int, h: int, w: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    zr = (torch.randn(b, 2 * c, h, w, generator=g) * 2).to(dtype)  # (B, 2C, H, W)
    n = (torch.randn(b, c, h, w, generator=g) * 2).to(dtype)  # (B, C, H, W)
    st = torch.randn(b, c, h, w, generator=g).to(dtype)  # (B, C, H, W)
    return tuple(t.requires_grad_(True) for t in (zr, n, st))


@pytest.mark.parametrize("shape", [(1, 2, 3, 3), (2, 1, 2, 5)])
def test_gradcheck_float64(shape: tuple[int, int, int, int]) -> None:
    inputs = _inputs(*shape, torch.float64)
    assert torch.autograd.gradcheck(torch.ops.edgevis.convgru_update, inputs, eps=1e-6, atol=1e-8)


def test_gradients_equal_the_pointwise_formula() -> None:
    """Same upstream gradient through the op and through the plain torch formula: same input gradients."""
    op_in = _inputs(2, 3, 4, 5, torch.float64, seed=1)
    ref_in = tuple(t.detach().clone().requires_grad_(True) for t in op_in)
    up = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.autograd.backward(torch.ops.edgevis.convgru_update(*op_in), up)
    torch.autograd.backward(gru_update_reference(*ref_in), up)
    for name, a, b in zip(("zr_pre", "n_pre", "h"), op_in, ref_in):
        assert a.grad is not None and a.grad.dtype == torch.float64
        assert torch.allclose(a.grad, b.grad, rtol=0, atol=1e-12), name
    assert torch.count_nonzero(op_in[0].grad[:, 3:]) == 0  # the r half is not read by the update
    assert torch.count_nonzero(op_in[0].grad[:, :3]) > 0


def test_fp16_copy_op_backpropagates_both_outputs() -> None:
    zr, n, h = _inputs(1, 2, 3, 4, torch.float32, seed=3)
    zr16, n16 = (t.detach().half().requires_grad_(True) for t in (zr, n))
    out, out16 = torch.ops.edgevis.convgru_update_fp16(zr16, n16, h)
    (out.sum() + 2.0 * out16.float().sum()).backward()
    zr_ref, n_ref, h_ref = (t.detach().float().requires_grad_(True) for t in (zr16, n16, h))
    (3.0 * gru_update_reference(zr_ref, n_ref, h_ref)).sum().backward()  # out16 is a copy of out
    assert zr16.grad.dtype == torch.float16 and n16.grad.dtype == torch.float16 and h.grad.dtype == torch.float32
    assert torch.allclose(h.grad, h_ref.grad, atol=1e-6)
    assert torch.allclose(zr16.grad.float(), zr_ref.grad, atol=2e-3)
    assert torch.allclose(n16.grad.float(), n_ref.grad, atol=2e-3)


def test_training_through_the_fused_cell_matches_the_plain_cell() -> None:
    torch.manual_seed(0)
    fused = ConvGRUCell(3, 4, separable=True)
    plain = ConvGRUCell(3, 4, separable=True, fused=False)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 2, 3, 6, 5)  # (B, T, C, H, W)
    losses = []
    for cell in (fused, plain):
        out, _ = cell.forward_sequence(x, cell.init_hidden(x))
        loss = (out**2).mean()
        loss.backward()
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    for (name, a), b in zip(fused.named_parameters(), plain.parameters()):
        assert a.grad is not None and torch.count_nonzero(a.grad) > 0, name
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


@pytest.mark.parametrize("flavor", ["portable", "trt"])
def test_cell_export_keeps_batch_dynamic(tmp_path: Path, flavor: str) -> None:
    """``check_inputs`` no longer int()s sizes, so torch.export does not pin B to the example's 2."""
    torch.manual_seed(0)
    cell = ConvGRUCell(3, 4, separable=True).eval()
    x, h = torch.randn(2, 3, 5, 6), torch.zeros(2, 4, 5, 6)
    batch = torch.export.Dim("B", min=1, max=8)
    path = tmp_path / f"{flavor}.onnx"
    with torch.no_grad(), export_flavor(flavor):
        torch.onnx.export(
            cell,
            (x, h),
            str(path),
            dynamo=True,
            input_names=["x", "h"],
            output_names=["h_out"],
            dynamic_shapes=({0: batch}, {0: batch}),
            external_data=False,
            opset_version=18,
        )
    model = onnx.load(str(path))
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.output]
    assert dims == [["B", 4, 5, 6]]
    sess = ort_session(model)
    x3, h3 = torch.randn(3, 3, 5, 6), torch.randn(3, 4, 5, 6)  # another batch size
    (got,) = sess.run(None, {"x": x3.numpy(), "h": h3.numpy()})
    with torch.no_grad():
        want = cell(x3, h3).numpy()
    assert got.shape == (3, 4, 5, 6) and np.abs(got - want).max() <= 1e-5
