"""Fast CPU path of the triple-gated sparse convolution (same definition as reference.py).

Active output pixels are gathered (im2col on the active pixels only, from a channels-last padded copy
of the input, so the halo of each block comes along) and multiplied by the weight matrix in one GEMM;
the result is scattered into a copy of ``y0``. INTERPOLATE blocks run the same gather-GEMM on the
stride-2 lattice points they need, then are filled bilinearly. Above ``dense_above`` (active cost as a
fraction of the dense conv) the work is done densely with ``conv2d`` and selected, which is the
break-even fallback measured by ``python -m edgevis.bench.sparse_conv``.

FLOPs are counted per decision in :class:`SparseConvStats` (multiply-add = 2 FLOPs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from edgevis.plugins.sparse_conv.reference import (
    COMPUTE,
    INTERPOLATE,
    REUSE,
    check_config,
    check_inputs,
    expand_blocks,
    fill_from_lattice,
    gate,
    lattice_index,
)

# Active cost fraction above which the dense conv2d + select is cheaper on CPU: the break-even measured
# by `python -m edgevis.bench.sparse_conv` (2 threads, x86 AVX-512: ~45%; see reports/bench/sparse_conv.jsonl).
DENSE_ABOVE = 0.45


@dataclass
class SparseConvStats:
    """FLOP and decision accounting, accumulated over calls (``frames`` counts calls x batch)."""

    frames: int = 0
    pixels: list[int] = field(default_factory=lambda: [0, 0, 0])  # output pixels per decision
    lattice_points: int = 0  # conv evaluations done for INTERPOLATE blocks
    flops_dense: float = 0.0  # what the dense conv would cost
    flops_compute: float = 0.0
    flops_interpolate: float = 0.0  # lattice convs + bilinear fill
    flops_gate: float = 0.0
    dense_fallbacks: int = 0

    @property
    def flops_sparse(self) -> float:
        return self.flops_compute + self.flops_interpolate + self.flops_gate

    @property
    def flops_saved(self) -> float:
        """Fraction of the dense FLOPs saved (gate overhead included)."""
        return 1.0 - self.flops_sparse / self.flops_dense if self.flops_dense else 0.0

    def fractions(self) -> tuple[float, float, float]:
        """Fraction of output pixels REUSEd, INTERPOLATEd, COMPUTEd."""
        total = sum(self.pixels) or 1
        return tuple(p / total for p in self.pixels)  # type: ignore[return-value]

    def add(self, other: SparseConvStats) -> None:
        self.frames += other.frames
        self.pixels = [a + b for a, b in zip(self.pixels, other.pixels)]
        self.lattice_points += other.lattice_points
        self.flops_dense += other.flops_dense
        self.flops_compute += other.flops_compute
        self.flops_interpolate += other.flops_interpolate
        self.flops_gate += other.flops_gate
        self.dense_fallbacks += other.dense_fallbacks


def count_decisions(decision: torch.Tensor, block: int, ho: int, wo: int) -> tuple[int, int, int]:
    """(COMPUTE pixels, INTERPOLATE pixels, lattice points the INTERPOLATE pixels need)."""
    dpix = expand_blocks(decision, block, ho, wo)  # (N, Ho, Wo)
    interp = dpix == INTERPOLATE
    need = F.max_pool2d(interp.unsqueeze(1).float(), 3, stride=2, padding=1) > 0  # (N, 1, ceil(Ho/2), ceil(Wo/2))
    return int((dpix == COMPUTE).sum()), int(interp.sum()), int(need.sum())


def account(stats: SparseConvStats, counts: tuple[int, int, int], x_shape: tuple[int, ...],
            w_shape: tuple[int, ...], y_hw: tuple[int, int], dense: bool = False) -> None:
    """Add one call's FLOPs to ``stats`` from its decision counts (see :func:`count_decisions`)."""
    n, cin, h, w = x_shape
    cout, _, k, _ = w_shape
    n_comp, n_int, n_lat = counts
    total = n * y_hw[0] * y_hw[1]
    per_point = 2.0 * cin * k * k * cout
    stats.frames += n
    stats.pixels = [a + b for a, b in zip(stats.pixels, (total - n_comp - n_int, n_int, n_comp))]
    stats.lattice_points += n_lat
    stats.flops_dense += per_point * total
    stats.flops_gate += 16.0 * cin * n * h * w  # residual, 3x3 mean, |x - mean|, channel means
    if dense:
        stats.flops_compute += per_point * total
        stats.dense_fallbacks += 1
    else:
        stats.flops_compute += per_point * n_comp
        stats.flops_interpolate += per_point * n_lat + 4.0 * cout * n_int


def _gather_gemm(xflat: torch.Tensor, wmat: torch.Tensor, bias: torch.Tensor | None, flat_idx: torch.Tensor,
                 grid_hw: tuple[int, int], step: int, padded_hw: tuple[int, int], k: int) -> torch.Tensor:
    """Conv at output points ``flat_idx`` (over N x grid) of a conv with stride ``step``: (P, Cout)."""
    gh, gw = grid_hw
    hp, wp = padded_hw
    b, rem = flat_idx // (gh * gw), flat_idx % (gh * gw)
    oy, ox = rem // gw, rem % gw
    base = b * (hp * wp) + oy * (step * wp) + ox * step  # (P,) top-left of each receptive field
    koff = (torch.arange(k, device=xflat.device)[:, None] * wp + torch.arange(k, device=xflat.device)).flatten()
    cols = xflat.index_select(0, (base[:, None] + koff).flatten())  # (P*k*k, Cin): im2col of active points
    cols = cols.view(flat_idx.numel(), -1)  # (P, k*k*Cin)
    return torch.addmm(bias, cols, wmat) if bias is not None else cols @ wmat  # (P, Cout)


def apply_decisions_fast(x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None, decision: torch.Tensor, stride: int, padding: int, block: int,
                         dense_above: float = DENSE_ABOVE,
                         stats: SparseConvStats | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs for a given decision map: (y, x0_new), only active pixels computed."""
    n, cin, h, w = x.shape
    cout, _, k, _ = weight.shape
    ho, wo = y0.shape[-2:]
    lh, lw = (ho + 1) // 2, (wo + 1) // 2
    dpix = expand_blocks(decision, block, ho, wo)  # (N, Ho, Wo)
    comp, interp = dpix == COMPUTE, dpix == INTERPOLATE
    # lattice point (i, j) is needed by interp pixels in rows 2i-1..2i+1 and cols 2j-1..2j+1
    need = F.max_pool2d(interp.unsqueeze(1).to(x.dtype), 3, stride=2, padding=1)[:, 0] > 0  # (N, lh, lw)
    n_comp, n_int, n_lat = int(comp.sum()), int(interp.sum()), int(need.sum())
    use_dense = (n_comp + n_lat) > dense_above * n * ho * wo
    if stats is not None:
        account(stats, (n_comp, n_int, n_lat), tuple(x.shape), tuple(weight.shape), (ho, wo), use_dense)

    own = expand_blocks(decision, block, h, w, unit=stride).unsqueeze(1)  # (N, 1, H, W)
    x0_new = torch.where(own != REUSE, x, x0)
    if use_dense:
        y_full = F.conv2d(x, weight, bias, stride=stride, padding=padding)  # (N, Cout, Ho, Wo)
        y_int = fill_from_lattice(y_full[:, :, ::2, ::2], ho, wo) if n_int else y_full
        d1 = dpix.unsqueeze(1)
        return torch.where(d1 == REUSE, y0, torch.where(d1 == INTERPOLATE, y_int, y_full)), x0_new

    y_cl = torch.empty((n, ho, wo, cout), dtype=y0.dtype, device=y0.device)  # (N, Ho, Wo, Cout)
    y_cl.copy_(y0.permute(0, 2, 3, 1))
    yflat = y_cl.view(-1, cout)
    if n_comp or n_lat:
        xp = F.pad(x, (padding,) * 4).permute(0, 2, 3, 1).contiguous()  # (N, H+2p, W+2p, Cin)
        xflat = xp.view(-1, cin)
        wmat = weight.permute(0, 2, 3, 1).reshape(cout, k * k * cin).t()  # (k*k*Cin, Cout)
        padded = (xp.shape[1], xp.shape[2])
    if n_comp:
        idx = comp.flatten().nonzero().squeeze(1)
        yflat.index_copy_(0, idx, _gather_gemm(xflat, wmat, bias, idx, (ho, wo), stride, padded, k))
    if n_int:
        lidx = need.flatten().nonzero().squeeze(1)
        lat = torch.zeros((n * lh * lw, cout), dtype=x.dtype, device=x.device)  # (N*lh*lw, Cout)
        lat.index_copy_(0, lidx, _gather_gemm(xflat, wmat, bias, lidx, (lh, lw), 2 * stride, padded, k))
        pidx = interp.flatten().nonzero().squeeze(1)
        b, rem = pidx // (ho * wo), pidx % (ho * wo)
        r0, r1 = (t[rem // wo] for t in lattice_index(ho, x.device))
        c0, c1 = (t[rem % wo] for t in lattice_index(wo, x.device))
        base = b * (lh * lw)
        val = (lat[base + r0 * lw + c0] + lat[base + r1 * lw + c0]) * 0.5
        val = 0.5 * (val + (lat[base + r0 * lw + c1] + lat[base + r1 * lw + c1]) * 0.5)  # same order as reference
        yflat.index_copy_(0, pidx, val)
    return y_cl.permute(0, 3, 1, 2), x0_new


def triple_sparse_conv_fast(
    x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
    stride: int = 1, padding: int = 1, block: int = 8, tau_t: float = 0.05, tau_s: float = 0.0,
    force_dense: bool = False, dense_above: float = DENSE_ABOVE, stats: SparseConvStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Functional core, fast path: (y, x0_new, y0_new, decision); ``y0_new`` is ``y``.

    ``y`` is returned in channels-last memory format (a valid NCHW tensor).
    """
    k = weight.shape[-1]
    check_config(k, stride, padding, block, tau_t, tau_s)
    check_inputs(x, x0, y0, weight, stride, padding)
    d = gate(x, x0, k, stride, padding, block, tau_t, tau_s, force_dense)
    y, x0_new = apply_decisions_fast(x, x0, y0, weight, bias, d, stride, padding, block, dense_above, stats)
    return y, x0_new, y, d
