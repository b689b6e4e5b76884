"""``TripleSparseConv2d``: a Conv2d with the SpVOS triple gate and per-stream caches.

The functional core (:func:`edgevis.plugins.sparse_conv.op.triple_sparse_conv`) is stateless; stage
graphs call it with the caches as explicit inputs/outputs. This module wraps it for eager use: one
typed :class:`SparseConvCache` per stream (x0, y0, frame counter), a dense first frame, a dense refresh
every ``refresh`` frames, ``reset()``, FLOP statistics per stream, and an optional learned gate.

Learned gate (training): a 1x1 conv on the block statistics [R, V] (pooled residual and variation,
see reference.py) gives two logits, *change* and *detail*; a hard Gumbel-sigmoid (straight-through)
turns them into 0/1: REUSE if not change, else INTERPOLATE if not detail, else COMPUTE. The output is
the mask-weighted mix of y0, the interpolated conv and the full conv, so gradients reach both the gate
and the conv; :meth:`TripleSparseConv2d.sparsity_loss` is ``lam * |mean(cost) - target|`` with cost 0
(REUSE), 1/4 (INTERPOLATE), 1 (COMPUTE). Mixed sparse training alternates dense iterations
(``force_dense=True`` in :meth:`step`) with sparse ones. The deployed ONNX/TensorRT forms use the
threshold gate (tau_t, tau_s).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgevis.errors import EdgevisError
from edgevis.plugins.sparse_conv import reference as ref
from edgevis.plugins.sparse_conv.fast import SparseConvStats, account, apply_decisions_fast, count_decisions
from edgevis.plugins.sparse_conv.op import fit_caches, triple_sparse_conv

log = logging.getLogger(__name__)
IMPLS = ("op", "reference")


@dataclass
class SparseConvCache:
    """One stream's state for one sparse layer."""

    x0: torch.Tensor  # (N, Cin, H, W) input the cached output was computed from (where computed)
    y0: torch.Tensor  # (N, Cout, Ho, Wo) previous output
    frame: int = 0  # frames processed since the last reset


def hard_gumbel_sigmoid(logits: torch.Tensor, temperature: float, training: bool) -> torch.Tensor:
    """0/1 forward, sigmoid gradient backward (straight-through); noisy while training."""
    if training:
        u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
        logits = logits + torch.log(u) - torch.log1p(-u)
    soft = torch.sigmoid(logits / temperature)
    return (soft > 0.5).to(soft.dtype) + soft - soft.detach()


class LearnedGate(nn.Module):
    """1x1 conv on [R, V] (N, 2, nbh, nbw) -> masks (N, 3, nbh, nbw) for REUSE/INTERPOLATE/COMPUTE."""

    def __init__(self, tau_t: float, tau_s: float, temperature: float = 2 / 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(2, 2, 1)
        self.temperature = temperature
        with torch.no_grad():  # start at the threshold gate: change = R - tau_t, detail = V - tau_s
            self.proj.weight.zero_()
            self.proj.weight[0, 0, 0, 0] = 1.0 / max(tau_t, 1e-3)
            self.proj.weight[1, 1, 0, 0] = 1.0 / max(tau_s, 1e-3)
            self.proj.bias.copy_(torch.tensor([-tau_t / max(tau_t, 1e-3), -tau_s / max(tau_s, 1e-3)]))

    def forward(self, rb: torch.Tensor, vb: torch.Tensor) -> torch.Tensor:
        g = hard_gumbel_sigmoid(self.proj(torch.cat([rb, vb], 1)), self.temperature, self.training)
        change, detail = g[:, :1], g[:, 1:]
        return torch.cat([1 - change, change * (1 - detail), change * detail], 1)  # (N, 3, nbh, nbw)


class TripleSparseConv2d(nn.Module):
    """Sparse drop-in for ``conv`` (k in {1, 3}, stride 1 or 2, groups 1) over video frames.

    ``forward(x, stream)`` keeps the caches in the module (one per stream id); ``step(x, cache)``
    takes and returns the cache explicitly. ``impl="op"`` runs the fast path / CUDA kernel,
    ``impl="reference"`` the dense+select reference.
    """

    def __init__(self, conv: nn.Conv2d, *, block: int = 8, tau_t: float = 0.05, tau_s: float = 0.0,
                 refresh: int = 30, learned_gate: bool = False, impl: str = "op") -> None:
        super().__init__()
        k = conv.kernel_size[0]
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.kernel_size[0] != conv.kernel_size[1] or \
                conv.stride[0] != conv.stride[1] or not isinstance(conv.padding, tuple) or \
                conv.padding[0] != conv.padding[1]:
            raise EdgevisError(f"TripleSparseConv2d wraps square, undilated, groups=1 convs with equal strides and "
                               f"paddings; received {conv}")
        ref.check_config(k, conv.stride[0], conv.padding[0], block, tau_t, tau_s)
        if impl not in IMPLS:
            raise EdgevisError(f"TripleSparseConv2d: impl {impl!r} unknown; expected one of {IMPLS}")
        if not isinstance(refresh, int) or refresh < 0:
            raise EdgevisError(f"TripleSparseConv2d: refresh={refresh!r}; expected an int >= 0 (0 = never)")
        self.conv = conv
        self.block, self.tau_t, self.tau_s, self.refresh, self.impl = block, float(tau_t), float(tau_s), refresh, impl
        self.stride, self.padding = conv.stride[0], conv.padding[0]
        self.gate = LearnedGate(tau_t, tau_s) if learned_gate else None
        self._caches: dict[Hashable, SparseConvCache] = {}
        self.stats: dict[Hashable, SparseConvStats] = {}
        self.last_decision: torch.Tensor | None = None
        self._last_cost: torch.Tensor | None = None

    # ---- explicit-state API ------------------------------------------------------------------
    def step(self, x: torch.Tensor, cache: SparseConvCache | None, force_dense: bool = False,
             stats: SparseConvStats | None = None) -> tuple[torch.Tensor, SparseConvCache, torch.Tensor]:
        """One frame: (y, new cache, decision). ``cache=None`` (or a mismatched one) starts a stream."""
        w, b = self.conv.weight, self.conv.bias
        x0 = y0 = None
        frame = 0
        if cache is not None:
            x0, y0, frame = cache.x0, cache.y0, cache.frame
        force = force_dense or frame == 0 or (self.refresh > 0 and frame % self.refresh == 0)
        x0, y0, force = fit_caches(x, x0, y0, w, self.stride, self.padding, force)
        if x0 is not (cache.x0 if cache is not None else None):
            frame = 0  # caches were reset
        kw = dict(stride=self.stride, padding=self.padding, block=self.block)
        if self.gate is not None and not force:
            y, x0_new, d = self._learned_step(x, x0, y0, **kw)
        elif self.impl == "reference":
            y, x0_new, _, d = ref.triple_sparse_conv_reference(x, x0, y0, w, b, tau_t=self.tau_t, tau_s=self.tau_s,
                                                               force_dense=force, **kw)
        else:
            y, x0_new, _, d = triple_sparse_conv(x, x0, y0, w, b, tau_t=self.tau_t, tau_s=self.tau_s,
                                                 force_dense=force, **kw)
        if stats is not None:
            account(stats, count_decisions(d, self.block, *y.shape[-2:]), tuple(x.shape), tuple(w.shape),
                    tuple(y.shape[-2:]))
        return y, SparseConvCache(x0_new.detach(), y.detach(), frame + 1), d

    def _learned_step(self, x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, stride: int, padding: int,
                      block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self.gate is not None
        k = self.conv.kernel_size[0]
        r, v = ref.pixel_stats(x, x0)
        masks = self.gate(ref.block_pool(r, k, stride, padding, block), ref.block_pool(v, k, stride, padding, block))
        d = masks.detach().argmax(1).to(torch.int32)  # (N, nbh, nbw)
        self._last_cost = (masks[:, 1] * 0.25 + masks[:, 2]).mean()
        w, b = self.conv.weight, self.conv.bias
        if not torch.is_grad_enabled() or not self.training:
            y, x0_new = apply_decisions_fast(x, x0, y0, w, b, d, stride, padding, block)
            return y, x0_new, d
        ho, wo = y0.shape[-2:]
        y_full = F.conv2d(x, w, b, stride=stride, padding=padding)  # (N, Cout, Ho, Wo)
        y_int = ref.fill_from_lattice(y_full[:, :, ::2, ::2], ho, wo)
        m = ref.expand_blocks(masks, block, ho, wo)  # (N, 3, Ho, Wo)
        y = m[:, :1] * y0 + m[:, 1:2] * y_int + m[:, 2:] * y_full
        own = ref.expand_blocks(d, block, x.shape[-2], x.shape[-1], unit=stride).unsqueeze(1)
        return y, torch.where(own != ref.REUSE, x, x0), d

    def sparsity_loss(self, target: float, lam: float = 1.0) -> torch.Tensor:
        """``lam * |mean(cost) - target|`` of the last learned-gate step (0 if none)."""
        if self._last_cost is None:
            return torch.zeros(())
        return lam * (self._last_cost - target).abs()

    # ---- per-stream convenience API ----------------------------------------------------------
    def forward(self, x: torch.Tensor, stream: Hashable = 0) -> torch.Tensor:
        stats = self.stats.setdefault(stream, SparseConvStats())
        y, self._caches[stream], self.last_decision = self.step(x, self._caches.get(stream), stats=stats)
        return y

    def cache(self, stream: Hashable = 0) -> SparseConvCache | None:
        return self._caches.get(stream)

    def reset(self, stream: Hashable | None = None) -> None:
        """Forget one stream's caches and stats (all streams when ``stream`` is None)."""
        if stream is None:
            self._caches.clear()
            self.stats.clear()
        else:
            self._caches.pop(stream, None)
            self.stats.pop(stream, None)
