"""Fast CPU path internals: channels-last caches fed back, gate statistics, weight-matrix cache, eager op."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgevis.plugins.sparse_conv import fast, triple_sparse_conv
from edgevis.plugins.sparse_conv.fast import _Buffers, _Plan, triple_sparse_conv_fast, weight_matrix
from edgevis.plugins.sparse_conv.reference import pixel_stats, triple_sparse_conv_reference

KW = dict(stride=1, padding=1, block=4, tau_t=0.3, tau_s=0.2)


@pytest.fixture(autouse=True)
def winograd_on_small_maps(monkeypatch):
    """These maps are far below the size where Winograd cells pay off (WINOGRAD_MIN_MACS); lower the
    bar so the cell path is what these tests check (test_sparse_conv_forms covers the im2col path)."""
    monkeypatch.setattr(fast, "WINOGRAD_MIN_MACS", 0)


def frames(t=4, c=4, h=13, w=19, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, c, h, w, generator=g)
    out = [x]
    for i in range(1, t):
        x = x.clone()
        x[:, :, 2 + i:6 + i, 3:9] += torch.randn(1, c, 4, 6, generator=g)  # textured change
        x[:, :, :, w - 5:] = 0.5 * i  # flat band that changes -> INTERPOLATE
        out.append(x)
    return out


def test_caches_fed_back_match_reference_over_frames():
    w, b = torch.randn(5, 4, 3, 3), torch.randn(5)
    fx0, fy0 = torch.full((1, 4, 13, 19), float("-inf")), torch.zeros(1, 5, 13, 19)
    rx0, ry0 = fx0.clone(), fy0.clone()
    seen = set()
    for x in frames():
        fy, fx0, fy0, fd = triple_sparse_conv_fast(x, fx0, fy0, w, b, dense_above=2.0, **KW)
        ry, rx0, ry0, rd = triple_sparse_conv_reference(x, rx0, ry0, w, b, **KW)
        assert torch.equal(fd, rd)
        torch.testing.assert_close(fy, ry, atol=1e-5, rtol=1e-5)
        assert torch.equal(fx0, rx0)  # x0 is copied, never computed
        seen |= set(fd.flatten().tolist())
    assert fy.is_contiguous(memory_format=torch.channels_last) and fx0.is_contiguous(memory_format=torch.channels_last)
    assert seen == {0, 1, 2}


def test_buffer_statistics_equal_reference_pixel_stats():
    x, x0 = torch.randn(2, 6, 9, 11), torch.randn(2, 6, 9, 11)
    bufs, plan = _Buffers(2, 6, 9, 11, x.dtype, x.device), _Plan(2, 9, 11, 3, 1, 1, x.device)
    bufs.ensure(x)
    r, v = pixel_stats(x, x0)
    torch.testing.assert_close(bufs.residual(x0.contiguous(memory_format=torch.channels_last)), r)
    torch.testing.assert_close(bufs.variation(plan.count), v)
    assert torch.equal(bufs.x[:, 0], torch.zeros_like(bufs.x[:, 0]))  # zero border kept


def test_weight_matrix_cache_follows_in_place_updates():
    conv = torch.nn.Conv2d(4, 5, 3, padding=1)
    first = weight_matrix(conv.weight)
    assert weight_matrix(conv.weight) is first  # cached
    with torch.no_grad():
        conv.weight.mul_(2)
    second = weight_matrix(conv.weight)
    assert second is not first
    torch.testing.assert_close(second, conv.weight.detach().permute(2, 3, 1, 0).reshape(-1, 5))


def test_eager_op_returns_y_as_y0_new_and_matches_dense_on_dense_frame():
    conv = torch.nn.Conv2d(4, 5, 3, padding=1)
    x = torch.randn(1, 4, 13, 19)
    with torch.no_grad():
        y, x0n, y0n, d = triple_sparse_conv(x, torch.zeros_like(x), torch.zeros(1, 5, 13, 19), conv.weight, conv.bias,
                                            force_dense=True, **KW)
        assert torch.equal(y, F.conv2d(x, conv.weight, conv.bias, padding=1))
    assert y0n is y and torch.equal(x0n, x) and bool((d == 2).all())


def test_scratch_made_under_inference_mode_is_reusable_outside_it():
    """The torch backend runs under inference_mode; onnxruntime's Python op then reuses the same
    per-shape scratch outside it (``edgevis check`` does both in one process)."""
    from edgevis.plugins.sparse_conv.fast import clear_buffers

    clear_buffers()
    w, b = torch.randn(5, 4, 3, 3), torch.randn(5)
    xs = frames()
    x0, y0 = torch.full((1, 4, 13, 19), float("-inf")), torch.zeros(1, 5, 13, 19)
    with torch.inference_mode():
        y_inf = triple_sparse_conv_fast(xs[1], xs[0], F.conv2d(xs[0], w, b, padding=1), w, b, dense_above=2.0, **KW)[0]
    y, *_ = triple_sparse_conv_fast(xs[1], xs[0], F.conv2d(xs[0], w, b, padding=1), w, b, dense_above=2.0, **KW)
    torch.testing.assert_close(y, y_inf.clone())
    assert x0.isinf().all() and not y0.any()  # untouched inputs


def _decision_case(k, p, block, h=13, w=19, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, x0 = torch.randn(n, 6, h, w, generator=g), torch.randn(n, 6, h, w, generator=g)
    wt, b = torch.randn(7, 6, k, k, generator=g), torch.randn(7, generator=g)
    ho, wo = h + 2 * p - k + 1, w + 2 * p - k + 1
    y0 = torch.randn(n, 7, ho, wo, generator=g)
    return x, x0, y0, wt, b, (n, -(-ho // block), -(-wo // block))


def _check_apply(x, x0, y0, wt, b, d, p, block):
    from edgevis.plugins.sparse_conv.fast import apply_decisions_fast
    from edgevis.plugins.sparse_conv.reference import apply_decisions

    fy, fx0 = apply_decisions_fast(x, x0, y0, wt, b, d, 1, p, block, dense_above=2.0)
    ry, rx0 = apply_decisions(x, x0, y0, wt, b, d, 1, p, block)
    torch.testing.assert_close(fy, ry, atol=1e-5, rtol=1e-5)
    assert torch.equal(fx0, rx0)
    return fy, fx0


def test_partial_edge_blocks_match_reference():
    """Random decisions with COMPUTE on the partial last block row/column (13x19 is no multiple of the
    block): outputs beyond the image edge are dropped."""
    for k, p in ((3, 1), (3, 0), (1, 0)):
        for block in (4, 8, 16):
            x, x0, y0, wt, b, dshape = _decision_case(k, p, block)
            d = torch.randint(0, 3, dshape, generator=torch.Generator().manual_seed(block), dtype=torch.int32)
            d[:, -1, :] = 2  # every partial edge block COMPUTE
            d[:, :, -1] = 2
            _check_apply(x, x0, y0, wt, b, d, p, block)


def test_every_block_active_equals_dense_conv():
    for k, p in ((3, 1), (1, 0)):
        x, x0, y0, wt, b, dshape = _decision_case(k, p, 8, h=24, w=21)
        d = torch.full(dshape, 2, dtype=torch.int32)
        fy, fx0 = _check_apply(x, x0, y0, wt, b, d, p, 8)
        torch.testing.assert_close(fy, F.conv2d(x, wt, b, padding=p), atol=1e-5, rtol=1e-5)
        assert torch.equal(fx0, x)


def test_no_block_active_returns_the_caches():
    x, x0, y0, wt, b, dshape = _decision_case(3, 1, 8)
    fy, fx0 = _check_apply(x, x0, y0, wt, b, torch.zeros(dshape, dtype=torch.int32), 1, 8)
    assert torch.equal(fy, y0) and torch.equal(fx0, x0)



def test_winograd_cells_equal_direct_conv_at_their_pixels():
    """F(2x2, 3x3) and F(4x4, 3x3) cells at 64 -> 32 channels: the pixels of each cell match conv2d up to
    float rounding (the transforms add rounding over the direct sum, F(4x4) more than F(2x2))."""
    from edgevis.plugins.sparse_conv.fast import _winograd_cells

    g = torch.Generator().manual_seed(3)
    for m, tol in ((2, 2e-5), (4, 1e-4)):
        for p, (h, w) in ((1, (12, 17)), (0, (11, 14))):
            x, wt, b = torch.randn(2, 64, h, w, generator=g), torch.randn(32, 64, 3, 3, generator=g) / 24, torch.randn(32)
            bufs, plan = _Buffers(2, 64, h, w, x.dtype, x.device), _Plan(2, h, w, 3, 1, p, x.device)
            bufs.ensure(x)
            tab = plan.cells(m)
            cells = torch.arange(0, tab.org.numel(), 3)  # every third cell, both images
            pix = (tab.cell_off[:, None] + tab.pix.index_select(0, cells)[None, :]).flatten()
            want = F.conv2d(x, wt, b, padding=p).permute(0, 2, 3, 1).reshape(-1, 32).index_select(0, pix)
            torch.testing.assert_close(_winograd_cells(bufs, plan, m, cells, wt, b), want, atol=tol, rtol=tol)


def test_wide_layer_mixes_cell_sizes_and_im2col_and_matches_reference():
    """64 -> 64 channels (F(4x4) cells, then F(2x2) cells, then im2col rows for an odd edge): random
    decisions on a 22x27 map match the dense+select reference."""
    from edgevis.plugins.sparse_conv.fast import winograd_sizes

    assert winograd_sizes(64, 64) == (4, 2) and winograd_sizes(16, 32) == (2,)
    g = torch.Generator().manual_seed(5)
    x, x0 = torch.randn(1, 64, 22, 27, generator=g), torch.randn(1, 64, 22, 27, generator=g)
    wt, b, y0 = torch.randn(64, 64, 3, 3, generator=g) / 24, torch.randn(64, generator=g), torch.randn(1, 64, 22, 27)
    for block in (4, 8, 16):
        nb = (-(-22 // block), -(-27 // block))
        d = torch.randint(0, 3, (1, *nb), generator=g, dtype=torch.int32)
        d[:, -1, :] = 2
        from edgevis.plugins.sparse_conv.fast import apply_decisions_fast
        from edgevis.plugins.sparse_conv.reference import apply_decisions

        fast.clear_buffers()
        fy, fx0 = apply_decisions_fast(x, x0, y0, wt, b, d, 1, 1, block, dense_above=2.0)
        ry, rx0 = apply_decisions(x, x0, y0, wt, b, d, 1, 1, block)
        torch.testing.assert_close(fy, ry, atol=1e-4, rtol=1e-4)
        assert torch.equal(fx0, rx0)
        assert "m" in fast._buffers(x).flat  # the cells ran (their GEMM scratch exists)


def test_fast_block_pool_equals_reference():
    from edgevis.plugins.sparse_conv.fast import _block_pool
    from edgevis.plugins.sparse_conv.reference import block_pool

    g = torch.Generator().manual_seed(0)
    for h, w in ((13, 19), (16, 24), (3, 5), (96, 160), (12, 20), (6, 10), (2, 2), (1, 7)):
        m = torch.rand(2, 1, h, w, generator=g)
        m[0, 0, 0, 0] = float("inf")  # the -inf-x0 dense frame makes R infinite
        for block in (1, 2, 4, 8, 16):
            for k, s, p in ((3, 1, 1), (3, 1, 0), (1, 1, 0), (1, 2, 0), (3, 2, 1), (5, 1, 2), (5, 2, 2), (7, 2, 3)):
                if min(h, w) + 2 * p < k:
                    continue
                assert torch.equal(_block_pool(m, k, s, p, block), block_pool(m, k, s, p, block)), (h, w, block, k, s, p)


def test_small_map_path_matches_reference_and_never_aliases_its_inputs():
    """Small maps (under SMALL_MACS) take the lean path: the reference gate, then no conv when every
    block is REUSE, else one dense conv2d and a select. Same decisions and outputs as the reference."""
    w, b = torch.randn(5, 4, 3, 3), torch.randn(5)
    assert 1 * 13 * 19 * 4 * 5 * 9 < fast.SMALL_MACS
    fx0, fy0 = torch.full((1, 4, 13, 19), float("-inf")), torch.zeros(1, 5, 13, 19)
    rx0, ry0 = fx0.clone(), fy0.clone()
    seen = set()
    xs = frames(6)
    for x in [*xs, xs[-1]]:  # the repeated last frame is all REUSE
        px0, py0 = fx0, fy0
        fy, fx0, fy0, fd = triple_sparse_conv_fast(x, fx0, fy0, w, b, **KW)  # dense_above None: pick by size
        ry, rx0, ry0, rd = triple_sparse_conv_reference(x, rx0, ry0, w, b, **KW)
        assert torch.equal(fd, rd) and torch.equal(fx0, rx0)
        torch.testing.assert_close(fy, ry, atol=1e-5, rtol=1e-5)
        assert fy.data_ptr() != py0.data_ptr() and fx0.data_ptr() != px0.data_ptr()
        seen |= set(fd.flatten().tolist())
    assert seen == {0, 1, 2} and bool((fd == 0).all())


def test_recycled_outputs_are_never_handed_out_while_held():
    """Outputs come from a per-thread pool (no page faults per frame): a tensor still held by the caller
    (here: three frames of outputs kept alive) is never reused, a dropped one is."""
    from edgevis.plugins.sparse_conv.fast import _recycled_empty

    like = torch.empty(0)
    a = _recycled_empty((1, 3, 4, 5), like).fill_(1.0)
    view = a.permute(0, 3, 1, 2)  # what callers get
    b = _recycled_empty((1, 3, 4, 5), like)
    assert b.data_ptr() != a.data_ptr()  # a is still held through its view
    a_ptr = a.data_ptr()
    del view, a
    c = _recycled_empty((1, 3, 4, 5), like)
    assert c.data_ptr() == a_ptr  # dropped: recycled (b is still held)

    w, bias = torch.randn(5, 4, 3, 3), torch.randn(5)
    xs = frames(6)
    x0, y0 = torch.full((1, 4, 13, 19), float("-inf")), torch.zeros(1, 5, 13, 19)
    kept, copies = [], []
    for x in xs:
        y, x0, y0, _ = triple_sparse_conv_fast(x, x0, y0, w, bias, dense_above=2.0, **KW)
        kept.append((y, x0))
        copies.append((y.clone(), x0.clone()))
    for (y, x0k), (yc, x0c) in zip(kept, copies):  # nothing kept was overwritten by a later frame
        assert torch.equal(y, yc) and torch.equal(x0k, x0c)


def test_every_pixel_compute_by_default_is_the_exact_conv2d():
    """A -inf x0 (the stateless graphs' first frame and refresh) makes every block COMPUTE: by default
    that frame is computed by conv2d itself, bit for bit, even on a wide map where partial frames use
    Winograd cells (and the FLOP counter sees the dense conv)."""
    g = torch.Generator().manual_seed(1)
    x, wt, b = torch.randn(1, 64, 40, 48, generator=g), torch.randn(64, 64, 3, 3, generator=g) / 24, torch.randn(64)
    assert 1 * 40 * 48 * 64 * 64 * 9 >= fast.SMALL_MACS  # the gather path, not the small-map one
    y, x0n, _, d = triple_sparse_conv_fast(x, torch.full_like(x, float("-inf")), torch.zeros(1, 64, 40, 48), wt, b,
                                           stride=1, padding=1, block=8, tau_t=0.1)
    assert bool((d == 2).all()) and torch.equal(y, F.conv2d(x, wt, b, padding=1)) and torch.equal(x0n, x)
