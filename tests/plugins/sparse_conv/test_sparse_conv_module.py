"""TripleSparseConv2d over videos: dense first frame, static/changing video, drift bound, streams, bad input."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from edgevis.errors import EdgevisError
from edgevis.plugins.sparse_conv import COMPUTE, REUSE, TripleSparseConv2d


def make(block=4, tau_t=0.05, tau_s=0.0, refresh=30, **kw) -> TripleSparseConv2d:
    torch.manual_seed(0)
    return TripleSparseConv2d(torch.nn.Conv2d(4, 6, 3, padding=1), block=block, tau_t=tau_t, tau_s=tau_s,
                              refresh=refresh, **kw)


def video(t: int, h: int = 16, w: int = 24, seed: int = 0) -> torch.Tensor:
    """(T, 1, 4, H, W): static textured background, a square moving right, small sensor noise."""
    g = torch.Generator().manual_seed(seed)
    bg = torch.randn(1, 4, h, w, generator=g)
    obj = torch.randn(1, 4, 4, 4, generator=g) + 2
    frames = []
    for i in range(t):
        f = bg + 0.002 * torch.randn(1, 4, h, w, generator=g)
        c = (2 + i) % (w - 4)
        f[:, :, 6:10, c:c + 4] = obj
        frames.append(f)
    return torch.stack(frames)


@pytest.mark.parametrize("impl", ["op", "reference"])
def test_first_frame_equals_dense_exactly(impl):
    m = make(impl=impl)
    x = torch.randn(1, 4, 16, 24)
    with torch.no_grad():
        assert torch.equal(m(x), F.conv2d(x, m.conv.weight, m.conv.bias, padding=1))
    assert bool((m.last_decision == COMPUTE).all())


def test_static_video_computes_nothing_after_frame_0():
    m = make()
    x = torch.randn(1, 4, 16, 24)
    with torch.no_grad():
        y_first = m(x)
        for _ in range(5):
            y = m(x + 1e-4 * torch.randn_like(x))
            assert bool((m.last_decision == REUSE).all())
            assert torch.equal(y, y_first)
    assert m.stats[0].pixels[COMPUTE] == 16 * 24  # frame 0 only


def test_fully_changing_video_computes_everything():
    m = make(tau_s=0.0)
    with torch.no_grad():
        for i in range(4):
            x = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(i))
            y = m(x)
            assert bool((m.last_decision == COMPUTE).all())
            torch.testing.assert_close(y, F.conv2d(x, m.conv.weight, m.conv.bias, padding=1), atol=1e-5, rtol=1e-5)


def test_error_vs_dense_stays_bounded_over_300_frames_with_refresh():
    m = make(block=4, tau_t=0.05, tau_s=0.02, refresh=20)
    frames = video(300)
    errs, computed = [], []
    with torch.no_grad():
        for f in frames:
            y = m(f)
            dense = F.conv2d(f, m.conv.weight, m.conv.bias, padding=1)
            errs.append(float((y - dense).norm() / dense.norm()))
            computed.append(float((m.last_decision != REUSE).float().mean()))
    assert max(errs) < 0.05, max(errs)
    assert sum(errs[-50:]) / 50 < 0.02
    assert sum(computed) / len(computed) < 0.6  # and it does skip work


def test_two_streams_never_mix():
    m = make()
    a, b = video(6, seed=1), video(6, seed=2)
    solo_a, solo_b = make(), make()
    with torch.no_grad():
        for fa, fb in zip(a, b):
            ya, yb = m(fa, stream="a"), m(fb, stream="b")
            assert torch.equal(ya, solo_a(fa)) and torch.equal(yb, solo_b(fb))
    assert m.cache("a").frame == 6 and not torch.equal(m.cache("a").x0, m.cache("b").x0)


def test_reset_reproduces_frame_0():
    m = make()
    v = video(4)
    with torch.no_grad():
        first = m(v[0])
        for f in v[1:]:
            m(f)
        m.reset()
        assert m.cache() is None
        assert torch.equal(m(v[0]), first)


def test_refresh_every_r_frames_is_dense():
    m = make(refresh=3)
    x = torch.randn(1, 4, 16, 24)
    kinds = []
    with torch.no_grad():
        for _ in range(7):
            m(x)
            kinds.append(bool((m.last_decision == COMPUTE).all()))
    assert kinds == [True, False, False, True, False, False, True]


def test_resolution_change_resets_caches_with_a_log_note(caplog):
    m = make()
    with torch.no_grad():
        m(torch.randn(1, 4, 16, 24))
        m(torch.randn(1, 4, 16, 24))
        with caplog.at_level(logging.WARNING):
            x = torch.randn(1, 4, 20, 28)
            y = m(x)
    assert "do not match input [1, 4, 20, 28]" in caplog.text and "resetting" in caplog.text
    assert torch.equal(y, F.conv2d(x, m.conv.weight, m.conv.bias, padding=1))
    assert m.cache().frame == 1


@pytest.mark.parametrize("kw,match", [
    (dict(block=5), "block size 5 is not supported; expected one of"),
    (dict(tau_t=-1.0), "tau_t=-1.0 is invalid"),
    (dict(tau_s=float("inf")), "tau_s=inf is invalid; expected a finite number >= 0"),
    (dict(refresh=-2), "refresh=-2; expected an int >= 0"),
    (dict(impl="cuda"), "impl 'cuda' unknown"),
])
def test_invalid_settings_raise_clear_errors(kw, match):
    with pytest.raises(EdgevisError, match=match):
        make(**kw)


def test_unsupported_conv_is_rejected():
    with pytest.raises(EdgevisError, match="groups=1"):
        TripleSparseConv2d(torch.nn.Conv2d(4, 4, 3, padding=1, groups=2))


def test_learned_gate_trains_with_sparsity_loss():
    m = make(learned_gate=True, tau_t=0.05, tau_s=0.02).train()
    v = video(3)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(v[0])
    y = m(v[1])
    dense = F.conv2d(v[1], m.conv.weight, m.conv.bias, padding=1)
    loss = (y - dense.detach()).pow(2).mean() + m.sparsity_loss(target=0.3, lam=1.0)
    loss.backward()
    assert m.gate.proj.weight.grad is not None and m.gate.proj.weight.grad.abs().sum() > 0
    assert set(m.last_decision.unique().tolist()) <= {0, 1, 2}
    opt.step()
    m.eval()
    with torch.no_grad():  # eval runs the hard gate through the fast path
        assert m(v[2]).shape == dense.shape
