"""Fast CPU path of the triple-gated sparse convolution (same definition as reference.py).

Layout of one call (all index tables and scratch buffers are cached per shape and per thread):

1. ``x`` is copied once into a zero-bordered channels-last buffer (N, H+2, W+2, Cin), reused across calls.
2. Gate: residual ``mean_c |x - x0|`` as in the reference; when ``tau_s > 0`` (and some block changed)
   the 3x3 local mean is a separable box sum over that buffer (slab adds, no conv), so the variation
   costs a few memory passes instead of a depthwise ``conv2d``. Block maxima by ``max_pool2d`` on the
   (N, 1, H, W) maps.
3. Work: the COMPUTE pixels and the stride-2 lattice points that INTERPOLATE pixels need are gathered
   as im2col rows (``index_select`` of buffer rows; a block's halo comes along) into a reused
   (P, k*k*Cin) buffer and multiplied by the weight matrix (Cout, k*k*Cin) in one ``addmm``.
4. Outputs: ``y`` is a contiguous copy of ``y0`` with the computed columns scattered in
   (``index_copy_``); ``x0_new`` a copy of ``x0`` with the owned tiles of non-REUSE blocks copied from
   ``x``. No full-size temporaries besides those two outputs.

Above ``dense_above`` (active cost as a fraction of the dense conv) the work is done densely with
``conv2d`` and selected: the break-even fallback measured by ``python -m edgevis.bench.sparse_conv``.

FLOPs are counted per decision in :class:`SparseConvStats` (multiply-add = 2 FLOPs).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from edgevis.plugins.sparse_conv.reference import (
    COMPUTE,
    INTERPOLATE,
    REUSE,
    block_pool,
    check_config,
    check_inputs,
    expand_blocks,
    fill_from_lattice,
    lattice_index,
    out_size,
    threshold_decisions,
    valid_count,
)

# Active cost fraction above which the dense conv2d + select is cheaper on CPU: the break-even measured
# by `python -m edgevis.bench.sparse_conv` (whole call incl. gate; 2-core Xeon shared with other jobs: ~50% at
# 1 thread, see reports/bench/sparse_conv.jsonl; re-measure on a quiet machine).
DENSE_ABOVE = 0.5


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


# ---- per-shape index tables and per-thread scratch buffers -------------------------------------------
_MAX_CACHED = 64  # shapes per thread; cleared when exceeded
_tls = threading.local()


def _store() -> dict:
    st = getattr(_tls, "store", None)
    if st is None:
        st = _tls.store = {}
    return st


def clear_buffers() -> None:
    """Free this thread's cached index tables, scratch buffers and weight matrices."""
    _store().clear()


def _cached(key: tuple, make):  # noqa: ANN001, ANN202
    st = _store()
    val = st.get(key)
    if val is None:
        if len(st) >= _MAX_CACHED:
            st.clear()
        val = st[key] = make()
    return val


class _Plan:
    """Index tables of one (N, H, W, k, s, p) geometry over the 1-padded channels-last buffer."""

    def __init__(self, n: int, h: int, w: int, k: int, s: int, p: int, device: torch.device) -> None:
        ho, wo = out_size(h, k, s, p), out_size(w, k, s, p)
        hp, wp = h + 2, w + 2
        off = 1 - p  # buffer coordinate of the conv's padded origin
        self.ho, self.wo, self.lh, self.lw = ho, wo, (ho + 1) // 2, (wo + 1) // 2
        ar = torch.arange(max(h, w, k, n) + 2, device=device)
        img = ar[:n, None, None] * (hp * wp)

        def origins(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:  # buffer row of each top-left tap
            return (img + (rows[:, None] * s + off) * wp + cols[None, :] * s + off).flatten()

        self.base = origins(ar[:ho], ar[:wo])  # (N*Ho*Wo,)
        self.lat_base = origins(ar[:ho:2], ar[:wo:2])  # (N*lh*lw,) lattice point (i, j) = output (2i, 2j)
        self.koff = (ar[:k, None] * wp + ar[None, :k]).flatten()  # (k*k,)
        self.inner = (img + (ar[:h, None] + 1) * wp + ar[None, :w] + 1).flatten()  # (N*H*W,) row of each pixel
        r0, r1 = lattice_index(ho, device)
        c0, c1 = lattice_index(wo, device)
        limg = ar[:n, None, None] * (self.lh * self.lw)
        self.corners = [(limg + a[:, None] * self.lw + b[None, :]).flatten()
                        for a, b in ((r0, c0), (r1, c0), (r0, c1), (r1, c1))]
        empty = torch.empty(0, device=device)
        self.count = (valid_count(h, empty)[:, None] * valid_count(w, empty)[None, :]).unsqueeze(-1)  # (H, W, 1)


class _Buffers:
    """Reused scratch of one (N, Cin, H, W, dtype) input: the padded channels-last copy of ``x`` (its
    border stays 0), the gate's full-size temporaries and the grow-only im2col buffer."""

    def __init__(self, n: int, c: int, h: int, w: int, dtype: torch.dtype, device: torch.device) -> None:
        # Normal tensors even when first made under torch.inference_mode (the torch backend): an
        # inference tensor could not be written in place by a later call outside it (onnxruntime's
        # Python op, training).
        with torch.inference_mode(False):
            self.x = torch.zeros((n, h + 2, w + 2, c), dtype=dtype, device=device)
            self.inner = self.x[:, 1:-1, 1:-1]  # (N, H, W, C) view
            self.rows = self.x.new_empty((n, h + 2, w, c))
            self.box = self.x.new_empty((n, h, w, c))  # also the residual's scratch
            self.flat = self.x.new_empty(0)
        self.ready = False  # whether ``x`` holds this call's input (reset by the caller)

    def ensure(self, x: torch.Tensor) -> None:
        if not self.ready:
            self.inner.copy_(x.permute(0, 2, 3, 1))
            self.ready = True

    def take(self, numel: int) -> torch.Tensor:
        if self.flat.numel() < numel:
            with torch.inference_mode(False):
                self.flat = self.flat.new_empty(numel)
        return self.flat[:numel]

    def residual(self, x0: torch.Tensor) -> torch.Tensor:
        """``mean_c |x - x0|`` (N, 1, H, W) from the filled buffer (x0 ideally channels-last)."""
        return torch.sub(self.inner, x0.permute(0, 2, 3, 1), out=self.box).abs_().mean(dim=3).unsqueeze(1)

    def variation(self, count: torch.Tensor) -> torch.Tensor:
        """``mean_c |x - mean3x3(x)|`` (N, 1, H, W) from the filled buffer: the box sums are the same
        element operations in the same order as :func:`reference.pixel_stats`; the rest is computed as
        ``sum_c |box - count * x| / (C * count)`` (one pass fewer; equal up to rounding)."""
        xp, rows, box = self.x, self.rows, self.box
        torch.add(xp[:, :, :-2], xp[:, :, 1:-1], out=rows).add_(xp[:, :, 2:])  # (N, H+2, W, C)
        torch.add(rows[:, :-2], rows[:, 1:-1], out=box).add_(rows[:, 2:])  # (N, H, W, C) 3x3 sums
        s = box.addcmul_(self.inner, count, value=-1.0).abs_().sum(dim=3)  # (N, H, W)
        return (s / (count[..., 0] * xp.shape[-1])).unsqueeze(1)


def _plan(n: int, h: int, w: int, k: int, s: int, p: int, device: torch.device) -> _Plan:
    return _cached(("plan", n, h, w, k, s, p, device), lambda: _Plan(n, h, w, k, s, p, device))


def _buffers(x: torch.Tensor) -> _Buffers:
    return _cached(("buf", *x.shape, x.dtype, x.device), lambda: _Buffers(*x.shape, x.dtype, x.device))


_WMATS: dict[int, tuple] = {}


def weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(k*k*Cin, Cout) weight matrix in the buffer's tap order, cached while the weight is unchanged
    (same object, storage and version counter)."""
    key = id(weight)
    hit = _WMATS.get(key)
    if hit is not None and hit[0]() is weight and hit[1] == (weight.data_ptr(), weight._version):
        return hit[2]
    wmat = weight.detach().permute(2, 3, 1, 0).reshape(-1, weight.shape[0]).contiguous()
    if len(_WMATS) >= 4 * _MAX_CACHED:
        _WMATS.clear()
    try:
        _WMATS[key] = (weakref.ref(weight), (weight.data_ptr(), weight._version), wmat)
    except TypeError:  # not weak-referenceable: no caching
        pass
    return wmat


def _channels_last_copy(t: torch.Tensor) -> torch.Tensor:
    """A new (N, H, W, C) contiguous copy of an NCHW tensor (a memcpy when ``t`` is channels-last)."""
    out = t.new_empty((t.shape[0], t.shape[2], t.shape[3], t.shape[1]))
    return out.copy_(t.permute(0, 2, 3, 1))


def _own_update(x: torch.Tensor, x0: torch.Tensor, decision: torch.Tensor, block: int, stride: int,
                bufs: _Buffers, plan: _Plan) -> torch.Tensor:
    """x0_new (channels-last): ``x`` on the input tiles owned by non-REUSE blocks, ``x0`` elsewhere."""
    n, c, h, w = x.shape
    own = expand_blocks(decision != REUSE, block, h, w, unit=stride)  # (N, H, W) bool
    idx = own.flatten().nonzero().squeeze(1)
    if idx.numel() == n * h * w:
        return x.clone(memory_format=torch.channels_last)
    x0_new = _channels_last_copy(x0)  # (N, H, W, C)
    if idx.numel():
        bufs.ensure(x)
        x0_new.view(-1, c).index_copy_(0, idx, bufs.x.view(-1, c).index_select(0, plan.inner.index_select(0, idx)))
    return x0_new.permute(0, 3, 1, 2)


def _conv_at(bufs: _Buffers, plan: _Plan, origins: torch.Tensor, wmat: torch.Tensor,
             bias: torch.Tensor | None) -> torch.Tensor:
    """Exact conv at the output points whose top-left tap rows are ``origins``: (P, Cout)."""
    p = origins.numel()
    kk, cin = plan.koff.numel(), bufs.x.shape[-1]
    taps = (origins[:, None] + plan.koff[None, :]).flatten()  # (P*k*k,)
    cols = torch.index_select(bufs.x.view(-1, cin), 0, taps, out=bufs.take(p * kk * cin).view(p * kk, cin))
    cols = cols.view(p, kk * cin)
    return torch.addmm(bias, cols, wmat) if bias is not None else cols @ wmat


def apply_decisions_fast(x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None, decision: torch.Tensor, stride: int, padding: int, block: int,
                         dense_above: float = DENSE_ABOVE, stats: SparseConvStats | None = None,
                         _bufs: _Buffers | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs for a given decision map: (y, x0_new), only active pixels computed. Both outputs are
    channels-last (valid NCHW tensors); feeding them back as caches keeps every copy a memcpy."""
    n, cin, h, w = x.shape
    cout, _, k, _ = weight.shape
    plan = _plan(n, h, w, k, stride, padding, x.device)
    bufs = _bufs
    if bufs is None:
        bufs = _buffers(x)
        bufs.ready = False
    ho, wo = plan.ho, plan.wo
    dpix = expand_blocks(decision, block, ho, wo)  # (N, Ho, Wo)
    comp_idx = (dpix == COMPUTE).flatten().nonzero().squeeze(1)
    n_comp = comp_idx.numel()
    interp = dpix == INTERPOLATE
    n_int = int(interp.sum())
    lat_idx = pix_idx = None
    n_lat = 0
    if n_int:
        # lattice point (i, j) is needed by interp pixels in rows 2i-1..2i+1 and cols 2j-1..2j+1
        need = F.max_pool2d(interp.unsqueeze(1).to(x.dtype), 3, stride=2, padding=1)[:, 0] > 0  # (N, lh, lw)
        lat_idx = need.flatten().nonzero().squeeze(1)
        pix_idx = interp.flatten().nonzero().squeeze(1)
        n_lat = lat_idx.numel()
    use_dense = (n_comp + n_lat) > dense_above * n * ho * wo
    if stats is not None:
        account(stats, (n_comp, n_int, n_lat), tuple(x.shape), tuple(weight.shape), (ho, wo), use_dense)
    x0_new = _own_update(x, x0, decision, block, stride, bufs, plan)

    if use_dense:
        y_full = F.conv2d(x, weight, bias, stride=stride, padding=padding)  # (N, Cout, Ho, Wo)
        if n_comp == n * ho * wo:
            return y_full, x0_new
        y_int = fill_from_lattice(y_full[:, :, ::2, ::2], ho, wo) if n_int else y_full
        d1 = dpix.unsqueeze(1)
        return torch.where(d1 == REUSE, y0, torch.where(d1 == INTERPOLATE, y_int, y_full)), x0_new

    y = _channels_last_copy(y0)  # (N, Ho, Wo, Cout)
    if n_comp or n_lat:
        bufs.ensure(x)
        origins = plan.base.index_select(0, comp_idx)
        if n_lat:
            assert lat_idx is not None
            origins = torch.cat([origins, plan.lat_base.index_select(0, lat_idx)])
        out = _conv_at(bufs, plan, origins, weight_matrix(weight), bias)  # (n_comp + n_lat, Cout)
        yrows = y.view(-1, cout)
        if n_comp:
            yrows.index_copy_(0, comp_idx, out[:n_comp] if n_lat else out)
        if n_lat:
            assert lat_idx is not None and pix_idx is not None
            lat = out.new_zeros((n * plan.lh * plan.lw, cout))
            lat.index_copy_(0, lat_idx, out[n_comp:])
            a, b, c, d = (lat.index_select(0, t.index_select(0, pix_idx)) for t in plan.corners)
            yrows.index_copy_(0, pix_idx, 0.5 * ((a + b) * 0.5 + (c + d) * 0.5))  # order of fill_from_lattice
    return y.permute(0, 3, 1, 2), x0_new


def gate_fast(x: torch.Tensor, x0: torch.Tensor, k: int, stride: int, padding: int, block: int, tau_t: float,
              tau_s: float, bufs: _Buffers | None = None) -> torch.Tensor:
    """The threshold gate of reference.gate, computed on the channels-last buffer (filled here unless
    ``bufs.ready``); the variation is skipped when every block is REUSE anyway."""
    if bufs is None:
        bufs = _buffers(x)
        bufs.ready = False
    bufs.ensure(x)
    rb = block_pool(bufs.residual(x0), k, stride, padding, block)
    vb = rb  # tau_s == 0: nothing can INTERPOLATE; every block REUSE: V is not read
    if tau_s > 0 and bool((rb >= tau_t).any()):
        plan = _plan(x.shape[0], x.shape[2], x.shape[3], k, stride, padding, x.device)
        vb = block_pool(bufs.variation(plan.count), k, stride, padding, block)
    return threshold_decisions(rb, vb, tau_t, tau_s)


def triple_sparse_conv_fast(
    x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
    stride: int = 1, padding: int = 1, block: int = 8, tau_t: float = 0.05, tau_s: float = 0.0,
    force_dense: bool = False, dense_above: float = DENSE_ABOVE, stats: SparseConvStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Functional core, fast path: (y, x0_new, y0_new, decision); ``y0_new`` is ``y``.

    ``y`` and ``x0_new`` are channels-last in memory (valid NCHW tensors), except on a dense frame."""
    k = weight.shape[-1]
    check_config(k, stride, padding, block, tau_t, tau_s)
    check_inputs(x, x0, y0, weight, stride, padding)
    n, cin, h, w = x.shape
    ho, wo = out_size(h, k, stride, padding), out_size(w, k, stride, padding)
    if force_dense:
        d = torch.full((n, -(-ho // block), -(-wo // block)), COMPUTE, dtype=torch.int32, device=x.device)
        if dense_above < 1.0:  # the whole frame is COMPUTE: plain conv
            if stats is not None:
                account(stats, (n * ho * wo, 0, 0), tuple(x.shape), tuple(weight.shape), (ho, wo), True)
            y = F.conv2d(x, weight, bias, stride=stride, padding=padding)
            return y, x.clone(memory_format=torch.channels_last), y, d
        bufs = None
    else:
        bufs = _buffers(x)
        bufs.ready = False
        d = gate_fast(x, x0, k, stride, padding, block, tau_t, tau_s, bufs)
    y, x0_new = apply_decisions_fast(x, x0, y0, weight, bias, d, stride, padding, block, dense_above, stats, bufs)
    return y, x0_new, y, d
