"""The definition: vectorised reference vs a literal block-by-block reading, and its video behaviour."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from edgevis.errors import EdgevisError
from edgevis.plugins.sparse_conv.reference import (
    COMPUTE,
    INTERPOLATE,
    REUSE,
    out_size,
    triple_sparse_conv_blockwise,
    triple_sparse_conv_reference,
)


def scene(n=1, c=4, h=13, w=19, seed=0):
    """x0, x with a changed textured patch, a flat (low-variation) changed band and a static part."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, c, h, w, generator=g)
    x = x0.clone()
    x[:, :, 2:8, 1:8] += torch.randn(n, c, 6, 7, generator=g)  # textured change -> COMPUTE
    x[:, :, :, w - 6:] = 0.5  # flat band ...
    x0[:, :, :, w - 6:] = 2.0  # ... that changed a lot -> INTERPOLATE
    return x0, x


CONFIGS = [(k, s, p, b) for k, s, b in itertools.product((1, 3), (1, 2), (1, 4, 8)) for p in range(k // 2 + 1)]


@pytest.mark.parametrize("k,s,p,b", CONFIGS)
def test_reference_matches_blockwise_definition(k, s, p, b):
    x0, x = scene()
    w = torch.randn(5, 4, k, k, generator=torch.Generator().manual_seed(1))
    bias = torch.randn(5)
    y0 = torch.randn(1, 5, out_size(13, k, s, p), out_size(19, k, s, p))
    kw = dict(stride=s, padding=p, block=b, tau_t=0.3, tau_s=0.2)
    ref = triple_sparse_conv_reference(x, x0, y0, w, bias, **kw)
    lit = triple_sparse_conv_blockwise(x, x0, y0, w, bias, **kw)
    assert torch.equal(ref[3], lit[3])
    for a, e in zip(ref[:3], lit[:3]):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def test_scene_exercises_all_three_decisions():
    x0, x = scene()
    w = torch.randn(5, 4, 3, 3)
    d = triple_sparse_conv_reference(x, x0, torch.zeros(1, 5, 13, 19), w, None, block=4, tau_t=0.3, tau_s=0.2)[3]
    assert {REUSE, INTERPOLATE, COMPUTE} <= set(d.flatten().tolist())
    # x0 takes x exactly on the input tiles owned by non-REUSE blocks (13 x 19 input, 4 x 5 blocks of 4)
    _, x0n, _, d = triple_sparse_conv_reference(x, x0, torch.zeros(1, 5, 13, 19), w, None, block=4, tau_t=0.3,
                                                tau_s=0.2)
    for bi in range(4):
        for bj in range(5):
            rows = slice(bi * 4, 13 if bi == 3 else bi * 4 + 4)
            cols = slice(bj * 4, 19 if bj == 4 else bj * 4 + 4)
            want = x0 if d[0, bi, bj] == REUSE else x
            assert torch.equal(x0n[:, :, rows, cols], want[:, :, rows, cols])


def test_first_frame_dense_equals_conv_exactly():
    x = torch.randn(2, 4, 12, 16)
    w, b = torch.randn(6, 4, 3, 3), torch.randn(6)
    y, x0n, y0n, d = triple_sparse_conv_reference(x, torch.zeros_like(x), torch.zeros(2, 6, 12, 16), w, b,
                                                  force_dense=True)
    assert torch.equal(y, F.conv2d(x, w, b, padding=1))
    assert torch.equal(x0n, x) and bool((d == COMPUTE).all())


def test_neg_inf_cache_gives_a_dense_frame():
    """Stateless graphs get their dense first frame / refresh by feeding x0 = -inf (StateSpec 'neg_inf')."""
    x = torch.randn(1, 4, 12, 16)
    w = torch.randn(6, 4, 3, 3)
    x0 = torch.full_like(x, float("-inf"))
    y, x0n, _, d = triple_sparse_conv_reference(x, x0, torch.zeros(1, 6, 12, 16), w, None, tau_t=1e3, tau_s=1e3)
    assert bool((d == COMPUTE).all()) and torch.equal(x0n, x)
    assert torch.equal(y, F.conv2d(x, w, None, padding=1))


@pytest.mark.parametrize("bad,match", [
    (dict(block=3), "block size 3 is not supported; expected one of \\(1, 4, 8, 16\\)"),
    (dict(tau_t=-0.1), "tau_t=-0.1 is invalid; expected a finite number >= 0"),
    (dict(tau_s=float("nan")), "tau_s=nan is invalid"),
    (dict(stride=3), "stride 3 is not supported"),
    (dict(padding=2), "padding 2 with kernel 3 is not supported"),
])
def test_invalid_config_raises_clear_error(bad, match):
    x = torch.randn(1, 4, 8, 8)
    kw = dict(stride=1, padding=1, block=4, tau_t=0.1, tau_s=0.1) | bad
    with pytest.raises(EdgevisError, match=match):
        triple_sparse_conv_reference(x, x, torch.zeros(1, 4, 8, 8), torch.randn(4, 4, 3, 3), None, **kw)


def test_mismatched_caches_raise_at_the_reference_boundary():
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(EdgevisError, match=r"caches do not match the input: x0 \[1, 4, 6, 6\]"):
        triple_sparse_conv_reference(x, torch.zeros(1, 4, 6, 6), torch.zeros(1, 4, 8, 8), torch.randn(4, 4, 3, 3), None)
