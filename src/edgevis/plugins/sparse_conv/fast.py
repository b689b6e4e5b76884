"""Fast CPU path of the triple-gated sparse convolution (same definition as reference.py).

Layout of one call (all index tables and scratch buffers are cached per shape and per thread):

1. ``x`` is copied once into a zero-bordered channels-last buffer (N, H+2, W+2, Cin), reused across calls.
2. Gate: residual ``mean_c |x - x0|`` as in the reference; when ``tau_s > 0`` (and some block changed)
   the 3x3 local sums come from one channels-last ``avg_pool2d`` pass over that buffer (sum mode, its
   zero border standing in for the padding), so the variation costs a few memory passes instead of a
   depthwise ``conv2d``. Block maxima by one ``max_pool2d`` on the (N, 1, H, W) maps.
3. Work: for a 3x3 stride-1 conv, the COMPUTE pixels are covered by m x m output cells (blocks are
   multiples of 4 and aligned) and computed with Winograd F(m x m, 3x3) (Lavin & Gray, 2016): each
   cell's (m+2)^2 input tile is gathered (``index_select`` of buffer rows), transformed by one matmul,
   multiplied by the pre-transformed weights in (m+2)^2 batched GEMMs (``bmm``) and transformed back by
   one matmul. F(4x4) (wide layers) does 2.25 multiplies per output, F(2x2) 4, a direct conv 9. The
   lattice points that INTERPOLATE pixels need, COMPUTE pixels outside whole cells (an odd last row or column) and the other
   convs (1x1, stride 2) are gathered as im2col rows into a reused (P, k*k*Cin) buffer and multiplied by
   the weight matrix (Cout, k*k*Cin) in one ``addmm``. Both give the conv up to float rounding.
4. Outputs: ``y`` is a contiguous copy of ``y0`` with the computed columns scattered in
   (``index_copy_``); ``x0_new`` a copy of ``x0`` with the owned tiles of non-REUSE blocks copied from
   ``x``. No full-size temporaries besides those two outputs, which come from a per-thread pool and
   are reused once the caller has dropped them (fresh large allocations page-fault every frame).

Small maps (under ``SMALL_MACS`` multiply-adds for the whole map) skip all of that: there the tensor
ops of the gather path cost more than the conv, so the call runs the reference gate and then no conv
at all when every block is REUSE, or one dense ``conv2d`` and a select otherwise.

Above ``dense_above`` (active cost as a fraction of the dense conv; by default the break-even of the
path, :func:`default_dense_above`) the work is done densely with ``conv2d`` and selected: the fallback
measured by ``python -m edgevis.bench.sparse_conv``.

FLOPs are counted per decision in :class:`SparseConvStats` (multiply-add = 2 FLOPs) as for a direct
conv, so that they compare with the dense conv and the paper; the Winograd cells do fewer.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from edgevis.plugins.sparse_conv.reference import (
    COMPUTE,
    INTERPOLATE,
    REUSE,
    block_index,
    block_pool,
    check_config,
    check_inputs,
    expand_blocks,
    fill_from_lattice,
    lattice_index,
    out_size,
    residual,
    threshold_decisions,
    valid_count,
    variation,
)

# Active cost fraction above which the dense conv2d + select is cheaper on CPU: the break-even measured
# by `python -m edgevis.bench.sparse_conv` (whole call incl. gate, 256 -> 256 at 60x108, 2 threads; see
# reports/bench/sparse_conv.jsonl). Wide 3x3 stride-1 convs (F(4x4) cells) stay faster than conv2d even
# with every block active (1.24x at 90%), so they never fall back; narrow ones (F(2x2) cells) break even
# at about 85% active, the im2col path (1x1, stride 2) at about 50%. Rounded down: the fallback errs dense.
DENSE_ABOVE_WINOGRAD = 0.8
DENSE_ABOVE = 0.5
NEVER = 2.0  # a fraction no decision map reaches


def default_dense_above(k: int, stride: int, cin: int, cout: int) -> float:
    if (k, stride) != (3, 1):
        return DENSE_ABOVE
    return NEVER if 4 in winograd_sizes(cin, cout) else DENSE_ABOVE_WINOGRAD


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
        self._n, self._wp, self._origins, self._device = n, wp, origins, device
        self._cells: dict[int, _CellTables] = {}

    def cells(self, m: int) -> _CellTables:
        """Winograd tables for m x m output cells: cell (i, j) = output pixels (m*i.., m*j..), its
        (m+2) x (m+2) input tile starts at the top-left tap of output (m*i, m*j)."""
        t = self._cells.get(m)
        if t is None:
            ar = torch.arange(max(self.ho, self.wo, self._n, m + 2), device=self._device)
            th, tw = self.ho // m, self.wo // m
            a, wp = ar[:m + 2], self._wp
            t = self._cells[m] = _CellTables(
                org=self._origins(ar[:m * th:m], ar[:m * tw:m]),  # (N*th*tw,) buffer row
                pix=((ar[:self._n, None, None] * self.ho + ar[:m * th:m][:, None]) * self.wo
                     + ar[:m * tw:m][None, :]).flatten(),  # (N*th*tw,) output pixel of the cell's corner
                tile_off=(a[:, None] * wp + a[None, :]).flatten(),  # ((m+2)^2,) tap-major
                cell_off=(ar[:m, None] * self.wo + ar[None, :m]).flatten(),  # (m*m,) order of A^T x A^T
            )
        return t


@dataclass(frozen=True)
class _CellTables:
    org: torch.Tensor
    pix: torch.Tensor
    tile_off: torch.Tensor
    cell_off: torch.Tensor


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
            self.box = self.x.new_empty((n, h, w, c))  # the residual's and the box sums' scratch
            self.flat: dict[str, torch.Tensor] = {}
        self.ready = False  # whether ``x`` holds this call's input (reset by the caller)

    def ensure(self, x: torch.Tensor) -> None:
        if not self.ready:
            self.inner.copy_(x.permute(0, 2, 3, 1))
            self.ready = True

    def take(self, numel: int, slot: str = "cols") -> torch.Tensor:
        """A reused flat scratch of ``numel`` elements (grow-only per slot: sizes change with the
        decisions every frame, and fresh large allocations would page-fault on every call)."""
        buf = self.flat.get(slot)
        if buf is None or buf.numel() < numel:
            with torch.inference_mode(False):
                buf = self.flat[slot] = self.x.new_empty(max(numel, 2 * (buf.numel() if buf is not None else 0)))
        return buf[:numel]

    def residual(self, x0: torch.Tensor) -> torch.Tensor:
        """``mean_c |x - x0|`` (N, 1, H, W) from the filled buffer (x0 ideally channels-last)."""
        return torch.sub(self.inner, x0.permute(0, 2, 3, 1), out=self.box).abs_().mean(dim=3).unsqueeze(1)

    def variation(self, count: torch.Tensor) -> torch.Tensor:
        """``mean_c |x - mean3x3(x)|`` (N, 1, H, W) from the filled buffer: the 3x3 sums are one
        channels-last pooling pass in sum mode (``divisor_override=1``) over the zero-bordered buffer, the
        rest is computed as ``sum_c |box - count * x| / (C * count)``. Equal to
        :func:`reference.variation` up to float rounding (the nine terms are added in another order)."""
        box = self.box
        torch._C._nn.avg_pool2d(self.x.permute(0, 3, 1, 2), (3, 3), (1, 1), (0, 0), False, True, 1,
                                out=box.permute(0, 3, 1, 2))  # (N, H, W, C) 3x3 sums
        s = box.addcmul_(self.inner, count, value=-1.0).abs_().sum(dim=3)  # (N, H, W)
        return (s / (count[..., 0] * self.x.shape[-1])).unsqueeze(1)


def _plan(n: int, h: int, w: int, k: int, s: int, p: int, device: torch.device) -> _Plan:
    return _cached(("plan", n, h, w, k, s, p, device), lambda: _Plan(n, h, w, k, s, p, device))


def _buffers(x: torch.Tensor) -> _Buffers:
    return _cached(("buf", *x.shape, x.dtype, x.device), lambda: _Buffers(*x.shape, x.dtype, x.device))


_WCACHE: dict[tuple[int, str], tuple] = {}


def _weight_cached(weight: torch.Tensor, kind: str, make) -> torch.Tensor:  # noqa: ANN001
    """``make(weight)`` cached while the weight is unchanged (same object, storage and version counter)."""
    key = (id(weight), kind)
    hit = _WCACHE.get(key)
    if hit is not None and hit[0]() is weight and hit[1] == (weight.data_ptr(), weight._version):
        return hit[2]
    val = make(weight.detach())
    if len(_WCACHE) >= 4 * _MAX_CACHED:
        _WCACHE.clear()
    try:
        _WCACHE[key] = (weakref.ref(weight), (weight.data_ptr(), weight._version), val)
    except TypeError:  # not weak-referenceable: no caching
        pass
    return val


def weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(k*k*Cin, Cout) weight matrix in the buffer's tap order, cached while the weight is unchanged."""
    return _weight_cached(weight, "im2col", lambda w: w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]).contiguous())


# Winograd F(m x m, 3x3) (Lavin & Gray, 2016): Y = A^T [(G g G^T) . (B^T d B)] A for an (m+2)^2 input
# tile d and a 3x3 filter g. F(2x2): 16 multiplies per 4 outputs; F(4x4): 36 per 16 (direct: 9 per output),
# with larger transform constants, so more rounding: about 1e-5 relative at 256 channels vs 1e-6 for F(2x2).
_WINOGRAD = {
    2: (((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
        ((1, 0, 0), (1 / 2, 1 / 2, 1 / 2), (1 / 2, -1 / 2, 1 / 2), (0, 0, 1)),
        ((1, 1, 1, 0), (0, 1, -1, -1))),
    4: (((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0),
         (0, 4, 0, -5, 0, 1)),
        ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
         (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
        ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))),
}
WIDE = 64 * 64  # Cin * Cout from which F(4x4) cells are used (wide layers, where the GEMM dominates)
# Direct-conv multiply-adds of the COMPUTE pixels below which cells are not worth their ~10 extra ops per
# call (a few hundred microseconds per network on small maps, e.g. spvos_tiny's 48-channel 12x20 layers).
WINOGRAD_MIN_MACS = 1 << 24


def winograd_sizes(cin: int, cout: int) -> tuple[int, ...]:
    """Cell sizes tried in order: F(4x4) then F(2x2) for wide layers, F(2x2) alone for narrow ones
    (where the time is overhead anyway and F(2x2) rounds closer to the direct conv)."""
    return (4, 2) if cin * cout >= WIDE else (2,)


def _winograd_consts(m: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """((m+2)^2, (m+2)^2) input and (m^2, (m+2)^2) output transforms acting on tap-major flattened tiles."""
    def make() -> tuple[torch.Tensor, torch.Tensor]:
        bt, _, at = (torch.tensor(c, dtype=torch.float64) for c in _WINOGRAD[m])
        return (torch.kron(bt, bt).to(dtype=dtype, device=device), torch.kron(at, at).to(dtype=dtype, device=device))
    return _cached(("winograd", m, dtype, device), make)


def winograd_weights(weight: torch.Tensor, m: int = 2) -> torch.Tensor:
    """((m+2)^2, Cin, Cout) transformed 3x3 filters ``G g G^T``, cached while the weight is unchanged."""
    def make(w: torch.Tensor) -> torch.Tensor:
        g = torch.tensor(_WINOGRAD[m][1], dtype=torch.float64, device=w.device)
        u = torch.einsum("ai,ocij,bj->abco", g, w.double(), g)  # (m+2, m+2, Cin, Cout)
        return u.reshape((m + 2) ** 2, w.shape[1], w.shape[0]).to(w.dtype).contiguous()
    return _weight_cached(weight, f"winograd{m}", make)


def _winograd_cells(bufs: _Buffers, plan: _Plan, m: int, cells: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """Conv (3x3, stride 1) at the m*m output pixels of each cell: (m*m * T, Cout) in the order of
    ``cell_off`` per cell block (all cells' pixel 0, then pixel 1, ...), in scratch."""
    t, cin, a2 = cells.numel(), bufs.x.shape[-1], (m + 2) ** 2
    bb, aa = _winograd_consts(m, bufs.x.dtype, bufs.x.device)
    tab = plan.cells(m)
    rows = (tab.tile_off[:, None] + tab.org.index_select(0, cells)[None, :]).flatten()  # ((m+2)^2 * T,)
    u = winograd_weights(weight, m)  # ((m+2)^2, Cin, Cout)
    cout = u.shape[-1]
    d = torch.index_select(bufs.x.view(-1, cin), 0, rows, out=bufs.take(a2 * t * cin).view(a2 * t, cin))
    v = torch.mm(bb, d.view(a2, t * cin), out=bufs.take(a2 * t * cin, "v").view(a2, t * cin))  # B^T d B
    mt = torch.bmm(v.view(a2, t, cin), u, out=bufs.take(a2 * t * cout, "m").view(a2, t, cout))  # (a2, T, Cout)
    y = torch.mm(aa, mt.view(a2, t * cout), out=bufs.take(m * m * t * cout, "y").view(m * m, t * cout))  # A^T . A
    y = y.view(m * m * t, cout)
    return y.add_(bias) if bias is not None else y


# Every call returns two full-size tensors (y, x0_new) while the caller still holds the previous frame's
# (its caches), and fresh large allocations are page-faulted in on first touch, frame after frame (about
# 1,400 faults, 1-2 ms, per call for a 64-channel 120x216 map on the development machine). So outputs come
# from a small per-thread pool: a pooled tensor is handed out again once nothing but the pool refers to
# its storage (every view the caller was given has been dropped).
_POOL_DEPTH = 4


def _recycled_empty(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised (shape) tensor of ``like``'s dtype and device, reused from the pool when free."""
    pool = _cached(("outputs", shape, like.dtype, like.device), list)
    use_count = getattr(torch._C, "_storage_Use_Count", None)  # torch-internal; without it: no recycling
    for t in pool if use_count is not None else ():
        # references to the storage: the pooled tensor and the temporary storage object of this call
        if use_count(t.untyped_storage()._cdata) <= 2:
            return t
    with torch.inference_mode(False):  # writable outside inference mode too (see _Buffers)
        t = torch.empty(shape, dtype=like.dtype, device=like.device)
    if len(pool) < _POOL_DEPTH:
        pool.append(t)
    return t


def _channels_last_copy(t: torch.Tensor) -> torch.Tensor:
    """An (N, H, W, C) contiguous copy of an NCHW tensor (a memcpy when ``t`` is channels-last), in a
    recycled output tensor: callers hand out only views of it."""
    out = _recycled_empty((t.shape[0], t.shape[2], t.shape[3], t.shape[1]), t)
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
    """Exact conv at the output points whose top-left tap rows are ``origins``: (P, Cout), in scratch."""
    p = origins.numel()
    kk, cin = plan.koff.numel(), bufs.x.shape[-1]
    taps = (origins[:, None] + plan.koff[None, :]).flatten()  # (P*k*k,)
    cols = torch.index_select(bufs.x.view(-1, cin), 0, taps, out=bufs.take(p * kk * cin).view(p * kk, cin))
    cols = cols.view(p, kk * cin)
    out = bufs.take(p * wmat.shape[1], "out").view(p, wmat.shape[1])  # scratch: the caller consumes it at once
    return torch.addmm(bias, cols, wmat, out=out) if bias is not None else torch.mm(cols, wmat, out=out)


def _dense_select(x: torch.Tensor, y0: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  dpix: torch.Tensor, all_compute: bool, any_interp: bool, stride: int, padding: int) -> torch.Tensor:
    """y by one dense conv2d and a select over the per-pixel decisions ``dpix`` (N, Ho, Wo); the
    INTERPOLATE lattice is the conv's even pixels (the stride-2 conv's values up to rounding)."""
    y_full = F.conv2d(x, weight, bias, stride=stride, padding=padding)  # (N, Cout, Ho, Wo)
    if all_compute:
        return y_full
    d1 = dpix.unsqueeze(1)
    if not any_interp:
        return torch.where(d1 == REUSE, y0, y_full)
    y_int = fill_from_lattice(y_full[:, :, ::2, ::2], *dpix.shape[-2:])
    return torch.where(d1 == REUSE, y0, torch.where(d1 == INTERPOLATE, y_int, y_full))


def apply_decisions_fast(x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None, decision: torch.Tensor, stride: int, padding: int, block: int,
                         dense_above: float | None = None, stats: SparseConvStats | None = None,
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
    if dense_above is None:  # by measured cost; a frame where every pixel is COMPUTE (the -inf first frame,
        # a refresh) is the exact conv2d, as the reference's dense frame
        dense_above = 0.0 if n_comp == n * ho * wo else default_dense_above(k, stride, cin, cout)
    use_dense = (n_comp + n_lat) > dense_above * n * ho * wo
    if stats is not None:
        account(stats, (n_comp, n_int, n_lat), tuple(x.shape), tuple(weight.shape), (ho, wo), use_dense)
    x0_new = _own_update(x, x0, decision, block, stride, bufs, plan)

    if use_dense:
        return _dense_select(x, y0, weight, bias, dpix, n_comp == n * ho * wo, n_int > 0, stride, padding), x0_new

    y = _channels_last_copy(y0)  # (N, Ho, Wo, Cout)
    yrows = y.view(-1, cout)
    if n_comp and k == 3 and stride == 1 and n_comp * 9 * cin * cout >= WINOGRAD_MIN_MACS:
        comp = dpix == COMPUTE  # (N, Ho, Wo); cleared where cells cover it
        for m in winograd_sizes(cin, cout):
            th, tw = ho // m, wo // m
            if not th or not tw:
                continue
            c = comp[:, :m * th, :m * tw].unflatten(2, (tw, m)).unflatten(1, (th, m))  # (N, th, m, tw, m) view
            whole = c.all(dim=4).all(dim=2)  # (N, th, tw): cells whose pixels are all COMPUTE
            cells = whole.flatten().nonzero().squeeze(1)
            if cells.numel():
                bufs.ensure(x)
                tab = plan.cells(m)
                pix = (tab.cell_off[:, None] + tab.pix.index_select(0, cells)[None, :]).flatten()  # (m*m*T,)
                yrows.index_copy_(0, pix, _winograd_cells(bufs, plan, m, cells, weight, bias))
                c &= ~whole[:, :, None, :, None]  # what the cells covered is done
        comp_idx = comp.flatten().nonzero().squeeze(1)
        n_comp = comp_idx.numel()
    if n_comp or n_lat:
        bufs.ensure(x)
        origins = plan.base.index_select(0, comp_idx)
        if n_lat:
            assert lat_idx is not None
            origins = torch.cat([origins, plan.lat_base.index_select(0, lat_idx)])
        out = _conv_at(bufs, plan, origins, weight_matrix(weight), bias)  # (n_comp + n_lat, Cout)
        if n_comp:
            yrows.index_copy_(0, comp_idx, out[:n_comp] if n_lat else out)
        if n_lat:
            assert lat_idx is not None and pix_idx is not None
            lat = out.new_zeros((n * plan.lh * plan.lw, cout))
            lat.index_copy_(0, lat_idx, out[n_comp:])
            a, b, c, d = (lat.index_select(0, t.index_select(0, pix_idx)) for t in plan.corners)
            yrows.index_copy_(0, pix_idx, 0.5 * ((a + b) * 0.5 + (c + d) * 0.5))  # order of fill_from_lattice
    return y.permute(0, 3, 1, 2), x0_new


def _block_pool(m: torch.Tensor, k: int, stride: int, padding: int, block: int) -> torch.Tensor:
    """:func:`reference.block_pool` (same values: max is exact) in one ``max_pool2d`` for 'same'-padded
    convs (odd k, padding k // 2, stride <= k so receptive fields leave no gaps): block i's receptive field is input rows
    ``i*b*s - p .. (i*b + b - 1)*s - p + k - 1``, a ((b-1)*s + k)-wide window at stride b*s with p rows of
    padding; ``ceil_mode`` keeps the partial last block (its window, clipped to the input, reads what
    its outputs read, since 'same' outputs read to the last row), and a window past the last block
    (stride 2, even sizes) is cut off."""
    if k % 2 == 0 or padding != k // 2 or stride > k:
        return block_pool(m, k, stride, padding, block)
    ho, wo = out_size(m.shape[-2], k, stride, padding), out_size(m.shape[-1], k, stride, padding)
    nbh, nbw = -(-ho // block), -(-wo // block)
    pooled = F.max_pool2d(m, (block - 1) * stride + k, stride=block * stride, padding=padding, ceil_mode=True)
    return pooled[..., :nbh, :nbw]  # (N, 1, nbh, nbw)


def _threshold_gate(residual_map: torch.Tensor, variation_map: Callable[[], torch.Tensor], k: int, stride: int,
                    padding: int, block: int, tau_t: float, tau_s: float) -> torch.Tensor:
    """reference.gate's decisions from a per-pixel residual (N, 1, H, W) and a deferred variation map: the
    variation is computed only when something can INTERPOLATE (tau_s > 0 and some block is not REUSE)."""
    rb = _block_pool(residual_map, k, stride, padding, block)
    vb = rb  # tau_s == 0: nothing can INTERPOLATE; every block REUSE: V is not read
    if tau_s > 0 and bool((rb >= tau_t).any()):
        vb = _block_pool(variation_map(), k, stride, padding, block)
    return threshold_decisions(rb, vb, tau_t, tau_s)


def gate_fast(x: torch.Tensor, x0: torch.Tensor, k: int, stride: int, padding: int, block: int, tau_t: float,
              tau_s: float, bufs: _Buffers) -> torch.Tensor:
    """The threshold gate of reference.gate, computed on the channels-last buffer (filled here unless
    ``bufs.ready``)."""
    bufs.ensure(x)

    def variation_map() -> torch.Tensor:
        return bufs.variation(_plan(x.shape[0], x.shape[2], x.shape[3], k, stride, padding, x.device).count)

    return _threshold_gate(bufs.residual(x0), variation_map, k, stride, padding, block, tau_t, tau_s)


# Direct-conv multiply-adds of a whole map below which a call takes the small-map path: there the ~200
# tensor ops of the gather path cost more than the conv they skip (a 16-channel 48x80 map: 316 us for an
# all-REUSE call vs 145 us for conv2d), so a call computes nothing when every block is REUSE and one
# dense conv2d + select otherwise. 2^26 is about 0.3 ms of conv on the 2-core development machine.
SMALL_MACS = 1 << 26


def _small_map(x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               stride: int, padding: int, block: int, tau_t: float, tau_s: float,
               stats: SparseConvStats | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The small-map path: the reference gate on the tensors as given, then no conv (all REUSE) or a
    dense conv2d with the reference's select. Same decisions and outputs as the reference."""
    k = weight.shape[-1]
    ho, wo = y0.shape[-2:]
    d = _threshold_gate(residual(x, x0), lambda: variation(x), k, stride, padding, block, tau_t, tau_s)  # (N, nbh, nbw)
    if not bool(d.any()):  # every block REUSE: the caches are the outputs (copies: outputs never alias inputs)
        if stats is not None:
            account(stats, (0, 0, 0), tuple(x.shape), tuple(weight.shape), (ho, wo))
        y = y0.clone()
        return y, x0.clone(), y, d
    if stats is not None:
        account(stats, count_decisions(d, block, ho, wo), tuple(x.shape), tuple(weight.shape), (ho, wo), dense=True)
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    rows, cols, xrows, xcols = _cached(("blockpix", n, h, w, ho, wo, block, stride, x.device),
                                       lambda: _block_pixels(h, w, ho, wo, block, stride, x.device))
    dpix = d.index_select(1, rows).index_select(2, cols)  # (N, Ho, Wo), as expand_blocks
    any_interp = tau_s > 0 and bool((d == INTERPOLATE).any())
    y = _dense_select(x, y0, weight, bias, dpix, bool((d == COMPUTE).all()), any_interp, stride, padding)
    own = (d != REUSE).index_select(1, xrows).index_select(2, xcols).unsqueeze(1)  # (N, 1, H, W) owned tiles
    return y, torch.where(own, x, x0), y, d


def _block_pixels(h: int, w: int, ho: int, wo: int, block: int, stride: int, device: torch.device) -> tuple:
    """Block row/column of every output row/column and of every input row/column (ownership), the
    index tables of :func:`reference.expand_blocks`."""
    nbh, nbw = -(-ho // block), -(-wo // block)
    return (block_index(ho, block, nbh, 1, device), block_index(wo, block, nbw, 1, device),
            block_index(h, block, nbh, stride, device), block_index(w, block, nbw, stride, device))


def triple_sparse_conv_fast(
    x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
    stride: int = 1, padding: int = 1, block: int = 8, tau_t: float = 0.05, tau_s: float = 0.0,
    force_dense: bool = False, dense_above: float | None = None, stats: SparseConvStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Functional core, fast path: (y, x0_new, y0_new, decision); ``y0_new`` is ``y``.

    ``y`` and ``x0_new`` are channels-last in memory (valid NCHW tensors), except on a dense frame and
    on small maps (the small-map path keeps the layout it is given). ``dense_above=None`` picks the
    path by measured cost (see the module docstring); a number forces the gather path below it."""
    k = weight.shape[-1]
    check_config(k, stride, padding, block, tau_t, tau_s)
    check_inputs(x, x0, y0, weight, stride, padding)
    n, cin, h, w = x.shape
    ho, wo = out_size(h, k, stride, padding), out_size(w, k, stride, padding)
    if not force_dense and dense_above is None and n * ho * wo * cin * weight.shape[0] * k * k < SMALL_MACS:
        return _small_map(x, x0, y0, weight, bias, stride, padding, block, tau_t, tau_s, stats)
    if force_dense:
        d = torch.full((n, -(-ho // block), -(-wo // block)), COMPUTE, dtype=torch.int32, device=x.device)
        if dense_above is None or dense_above < 1.0:  # a dense frame is the exact conv2d (tests pass 2.0)
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
