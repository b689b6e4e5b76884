"""ConvGRU reference cell and the torch custom op: parity, streaming, reset, precision, bad input."""

from __future__ import annotations

import pytest
import torch

from edgevis.errors import EdgevisError
from edgevis.plugins.convgru import ConvGRUCell, convgru_update, convgru_update_fp16, gru_update_reference
from edgevis.plugins.convgru.op import update_torch

TOL = 1e-5


def _cell(in_ch: int, hid: int, separable: bool, fused: bool = True, seed: int = 0) -> ConvGRUCell:
    torch.manual_seed(seed)
    return ConvGRUCell(in_ch, hid, kernel=3, separable=separable, fused=fused).eval()


def _update_inputs(b: int, c: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    zr = torch.randn(b, 2 * c, h, w, generator=g) * 3  # (B, 2C, H, W)
    n = torch.randn(b, c, h, w, generator=g) * 3  # (B, C, H, W)
    st = torch.randn(b, c, h, w, generator=g)  # (B, C, H, W)
    return zr, n, st


@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (2, 3, 7, 5), (1, 1, 1, 1), (3, 5, 9, 13)])
def test_op_matches_reference_formula(shape: tuple[int, int, int, int]) -> None:
    zr, n, h = _update_inputs(*shape)
    want = gru_update_reference(zr, n, h)
    got = torch.ops.edgevis.convgru_update(zr, n, h)
    assert got.shape == h.shape and got.dtype == torch.float32
    assert (got - want).abs().max().item() <= TOL
    # the written-out formula, independent of both implementations
    c = shape[1]
    z = 1 / (1 + torch.exp(-zr[:, :c]))
    assert torch.allclose(got, (1 - z) * h + z * torch.tanh(n), atol=TOL, rtol=0)


def test_op_mixed_precision_keeps_fp32_state() -> None:
    zr, n, h = _update_inputs(2, 4, 5, 7)
    zr16, n16 = zr.half(), n.half()
    out, out16 = convgru_update_fp16(zr16, n16, h)
    assert out.dtype == torch.float32 and out16.dtype == torch.float16
    want = gru_update_reference(zr16.float(), n16.float(), h)  # same rounded inputs, FP32 math
    assert (out - want).abs().max().item() <= TOL
    assert torch.equal(out16, out.half())
    # the all-FP16 path returns an FP16 state
    assert convgru_update(zr16, n16, h.half()).dtype == torch.float16


def test_custom_op_registration_passes_opcheck() -> None:
    zr, n, h = _update_inputs(1, 2, 3, 5)
    torch.library.opcheck(torch.ops.edgevis.convgru_update.default, (zr, n, h))
    torch.library.opcheck(torch.ops.edgevis.convgru_update_fp16.default, (zr.half(), n.half(), h))


@pytest.mark.parametrize("separable", [False, True])
@pytest.mark.parametrize("size", [(6, 6), (7, 9)])
def test_fused_cell_matches_reference_cell(separable: bool, size: tuple[int, int]) -> None:
    fused, plain = _cell(3, 5, separable), _cell(3, 5, separable, fused=False)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, *size)
    h = torch.randn(2, 5, *size)
    with torch.no_grad():
        a, b = fused(x, h), plain(x, h)
    assert a.shape == (2, 5, *size)
    assert (a - b).abs().max().item() <= TOL


def test_separable_variant_is_lighter() -> None:
    dense, light = _cell(16, 16, False), _cell(16, 16, True)
    n_dense = sum(p.numel() for p in dense.parameters())
    n_light = sum(p.numel() for p in light.parameters())
    assert n_light < n_dense / 4


def test_streaming_300_frames_equals_forward_sequence() -> None:
    cell = _cell(2, 3, separable=True)
    x_seq = torch.randn(1, 300, 2, 5, 4)  # (B, T, C, H, W)
    with torch.no_grad():
        outs, h_t = cell.forward_sequence(x_seq, cell.init_hidden(x_seq))
        h = cell.init_hidden(x_seq[:, 0])
        for t in range(300):
            h = cell(x_seq[:, t], h)
            assert torch.equal(h, outs[:, t]), f"frame {t} differs"
    assert outs.shape == (1, 300, 3, 5, 4)
    assert torch.equal(h, h_t)


def test_reset_reproduces_frame_zero() -> None:
    cell = _cell(3, 4, separable=False)
    x_seq = torch.randn(1, 6, 3, 5, 5)
    with torch.no_grad():
        outs, _ = cell.forward_sequence(x_seq, cell.init_hidden(x_seq))
        h = cell.init_hidden(x_seq)
        assert h.dtype == torch.float32 and h.shape == (1, 4, 5, 5) and not h.any()
        again = cell(x_seq[:, 0], cell.init_hidden(x_seq))  # a reset stream
    assert torch.equal(again, outs[:, 0])
    assert not torch.equal(outs[:, 1], outs[:, 0])


def test_mixed_precision_stream_stays_close_over_300_frames() -> None:
    """FP16 convs with an FP32 state (real CPU half convs) stay within 1e-2 of FP32 at frame 300."""
    torch.manual_seed(0)
    cell32 = _cell(2, 4, separable=True)
    cell16 = _cell(2, 4, separable=True).half()
    cell16.load_state_dict({k: v.half() for k, v in cell32.state_dict().items()})
    t = torch.arange(300, dtype=torch.float32)[:, None, None]
    yy, xx = torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing="ij")
    frames = torch.stack([torch.sin(0.7 * xx + 0.05 * t), torch.cos(0.5 * yy - 0.03 * t)], dim=1)  # (T, 2, H, W)
    h32 = cell32.init_hidden(frames[:1])
    h16 = h32.clone()
    with torch.no_grad():
        for f in frames:
            h32 = cell32(f[None], h32)
            h16 = cell16(f[None].half(), h16)
    assert h16.dtype == torch.float32
    rel = ((h16 - h32).norm() / h32.norm()).item()
    assert rel < 1e-2


# ---- bad input ------------------------------------------------------------------------------
def test_wrong_hidden_shape_names_both_shapes() -> None:
    cell = _cell(3, 4, False)
    x = torch.randn(2, 3, 6, 7)
    with pytest.raises(
        EdgevisError, match=r"h has shape \[2, 5, 6, 7\] but x has shape \[2, 3, 6, 7\].*\[2, 4, 6, 7\]"
    ):
        cell(x, torch.zeros(2, 5, 6, 7))


def test_spatial_mismatch_names_both_shapes() -> None:
    cell = _cell(3, 4, False)
    x = torch.randn(1, 3, 6, 7)
    with pytest.raises(
        EdgevisError,
        match=r"x/h spatial mismatch: x is 6x7, h is 5x7.*h has shape \[1, 4, 5, 7\] but x has shape \[1, 3, 6, 7\]",
    ):
        cell(x, torch.zeros(1, 4, 5, 7))


def test_wrong_hidden_dtype_is_named() -> None:
    cell = _cell(3, 4, False)
    x = torch.randn(1, 3, 6, 7)
    with pytest.raises(
        EdgevisError,
        match=r"h dtype torch.float64 \(shape \[1, 4, 6, 7\]\).*x torch.float32 \(shape \[1, 3, 6, 7\]\).*init_hidden",
    ):
        cell(x, torch.zeros(1, 4, 6, 7, dtype=torch.float64))


def test_wrong_input_channels_and_rank() -> None:
    cell = _cell(3, 4, False)
    with pytest.raises(EdgevisError, match=r"x has shape \[1, 2, 6, 7\], expected \(B, 3, H, W\)"):
        cell(torch.randn(1, 2, 6, 7), torch.zeros(1, 4, 6, 7))
    with pytest.raises(EdgevisError, match=r"x_seq \[1, 3, 6, 7\]; expected \(B, T, 3, H, W\)"):
        cell.forward_sequence(torch.randn(1, 3, 6, 7), torch.zeros(1, 4, 6, 7))
    with pytest.raises(EdgevisError, match=r"x dtype torch.float16 but the weights are torch.float32"):
        cell(torch.randn(1, 3, 6, 7).half(), torch.zeros(1, 4, 6, 7))


def test_bad_constructor_arguments() -> None:
    with pytest.raises(EdgevisError, match=r"kernel=4; expected an odd size"):
        ConvGRUCell(3, 4, kernel=4)
    with pytest.raises(EdgevisError, match=r"hid_ch=0"):
        ConvGRUCell(3, 0)


def test_op_input_checks_name_shapes() -> None:
    zr, n, h = _update_inputs(1, 4, 5, 5)
    with pytest.raises(
        EdgevisError,
        match=r"zr_pre \[1, 4, 5, 5\], n_pre \[1, 4, 5, 5\], h \[1, 4, 5, 5\]; expected zr_pre \[B, 2C, H, W\] = \[1, 8, 5, 5\]",
    ):
        convgru_update(zr[:, :4], n, h)
    with pytest.raises(EdgevisError, match=r"zr_pre is torch.float16 but n_pre is torch.float32"):
        convgru_update(zr.half(), n, h)
    with pytest.raises(EdgevisError, match=r"h has dtype torch.int64"):
        convgru_update(zr, n, h.long())
    with pytest.raises(EdgevisError, match=r"n_pre is \[4, 5, 5\]; expected a 4-D"):
        convgru_update(zr, n[0], h)


def test_generic_impl_is_reference_to_ulp() -> None:
    zr, n, h = _update_inputs(2, 8, 11, 3, seed=3)
    assert (update_torch(zr, n, h) - gru_update_reference(zr, n, h)).abs().max().item() <= 1e-6
