"""Reference triple-gated sparse convolution (SpVOS): the ground truth every other form matches.

Exact definition (all forms -- fast CPU path, portable ONNX, trt ONNX node, CUDA kernel -- follow it):

Shapes: ``x, x0`` (N, Cin, H, W); ``weight`` (Cout, Cin, k, k) with k in {1, 3}; ``y0`` (N, Cout, Ho, Wo)
with ``Ho = (H + 2p - k) // s + 1``. The output grid is cut into b x b blocks (the last row/column of
blocks may be partial): ``decision`` is (N, ceil(Ho/b), ceil(Wo/b)) int32.

Gate (per output block, computed from the input):
- residual ``r = mean_c |x - x0|`` (N, 1, H, W); ``R`` = max of ``r`` over the block's receptive field
  (max-pool k/s/p over pixels, then max over the block);
- variation ``v = mean_c |x - mean3x3(x)|`` (3x3 mean; border pixels average their valid neighbours);
  ``V`` = its max over the block's receptive field;
- ``REUSE (0)`` if ``R < tau_t``; else ``INTERPOLATE (1)`` if ``V < tau_s`` and ``R`` is finite;
  else ``COMPUTE (2)``; ``force_dense`` makes every block COMPUTE. Setting ``x0`` to -inf (the
  StateSpec "neg_inf" init) makes ``R = inf``, hence a dense frame: that is how a stateless graph gets its dense first frame
  and its periodic refresh.

Outputs:
- COMPUTE pixels: the exact conv ``conv2d(x, weight, bias, s, p)``;
- REUSE pixels: ``y0``;
- INTERPOLATE pixels: the conv evaluated on the stride-2 lattice ``E[i, j] = conv(x)[2i, 2j]`` and
  filled bilinearly: row ``u`` uses lattice rows ``i0 = u // 2`` and ``i1 = min(i0 + u % 2, nE - 1)``
  with weight 1/2 each (same for columns), so even pixels are exact and odd pixels are the mean of
  their two (four at odd/odd) lattice neighbours; the last odd row/column replicates. A b x b block
  needs (b/2 + 1)^2 lattice points, about 1/4 (b=16: 0.32, b=8: 0.39) of the dense cost.
- ``y0_new = y``. ``x0_new = x`` on the input pixels *owned* by a block that was not REUSEd and
  ``x0`` elsewhere. Input row ``r`` is owned by block row ``min(r // (b*s), nbh - 1)`` (columns
  alike), so the owned tiles partition the input. Slow drift therefore accumulates in ``x0`` until it
  crosses ``tau_t``; the dense first frame and the refresh every R frames bound what halos miss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgevis.errors import EdgevisError

REUSE, INTERPOLATE, COMPUTE = 0, 1, 2
BLOCK_SIZES = (1, 4, 8, 16)
KERNEL_SIZES = (1, 3)
STRIDES = (1, 2)


def check_config(kernel_size: int, stride: int, padding: int, block: int, tau_t: float, tau_s: float) -> None:
    """Raise EdgevisError naming the bad setting, what is supported and the fix."""
    if kernel_size not in KERNEL_SIZES:
        raise EdgevisError(f"TripleSparseConv: kernel size {kernel_size} is not supported; expected one of {KERNEL_SIZES}")
    if stride not in STRIDES:
        raise EdgevisError(f"TripleSparseConv: stride {stride} is not supported; expected one of {STRIDES}")
    if not 0 <= padding <= kernel_size // 2:
        raise EdgevisError(
            f"TripleSparseConv: padding {padding} with kernel {kernel_size} is not supported; "
            f"expected 0..{kernel_size // 2} (use padding={kernel_size // 2} for 'same')"
        )
    if block not in BLOCK_SIZES:
        raise EdgevisError(f"TripleSparseConv: block size {block!r} is not supported; expected one of {BLOCK_SIZES}")
    for name, tau in (("tau_t", tau_t), ("tau_s", tau_s)):
        if not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
            raise EdgevisError(
                f"TripleSparseConv: {name}={tau!r} is invalid; expected a finite number >= 0 "
                f"({name}=0 disables {'REUSE' if name == 'tau_t' else 'INTERPOLATE'})"
            )


def out_size(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def check_inputs(x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, weight: torch.Tensor, stride: int,
                 padding: int) -> None:
    """Shape checks at the op boundary (caches are validated here, reset by the module)."""
    if x.dim() != 4 or weight.dim() != 4:
        raise EdgevisError(f"TripleSparseConv: x must be (N, C, H, W) and weight (Cout, Cin, k, k); "
                           f"received x {list(x.shape)}, weight {list(weight.shape)}")
    n, c, h, w = x.shape
    cout, cin, k, k2 = weight.shape
    if cin != c or k != k2:
        raise EdgevisError(f"TripleSparseConv: weight {list(weight.shape)} does not fit x {list(x.shape)}; "
                           f"expected (Cout, {c}, k, k) with groups=1")
    want_y = [n, cout, out_size(h, k, stride, padding), out_size(w, k, stride, padding)]
    if list(x0.shape) != list(x.shape) or list(y0.shape) != want_y:
        raise EdgevisError(f"TripleSparseConv: caches do not match the input: x0 {list(x0.shape)} (expected "
                           f"{list(x.shape)}), y0 {list(y0.shape)} (expected {want_y}); reset the caches "
                           "(TripleSparseConv2d.reset) after a resolution change")


# ---- gate ------------------------------------------------------------------------------------------
def valid_count(size: int, like: torch.Tensor) -> torch.Tensor:
    """How many of (i-1, i, i+1) lie inside [0, size): 3 inside, 2 at a border (1 if size == 1)."""
    idx = torch.arange(size, device=like.device)
    return ((idx > 0).to(like.dtype) + 1 + (idx < size - 1).to(like.dtype))


def residual(x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Per-input-pixel residual ``mean_c |x - x0|``: (N, 1, H, W)."""
    return (x - x0).abs().mean(dim=1, keepdim=True)


def variation(x: torch.Tensor) -> torch.Tensor:
    """Per-input-pixel local variation ``mean_c |x - mean3x3(x)|``: (N, 1, H, W).

    The 3x3 mean over valid neighbours is a separable box sum of the zero-padded input (rows, then
    columns, each ``(a + b) + c``) divided by the neighbour count: the same numbers as
    ``avg_pool2d(count_include_pad=False)`` up to rounding, without a depthwise conv (which runs in
    aten's slow_conv2d on CPU). The fast path (fast.py) gets the same sums from one channels-last pooling pass.
    """
    _, _, h, w = x.shape
    xp = F.pad(x, (1, 1, 1, 1))  # (N, C, H+2, W+2)
    rows = xp[..., :-2] + xp[..., 1:-1] + xp[..., 2:]  # (N, C, H+2, W)
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]  # (N, C, H, W) 3x3 sums
    count = valid_count(h, x)[:, None] * valid_count(w, x)[None, :]  # (H, W) valid neighbours
    return (x - box / count).abs().mean(dim=1, keepdim=True)  # (N, 1, H, W)


def pixel_stats(x: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-input-pixel :func:`residual` and :func:`variation`, both (N, 1, H, W)."""
    return residual(x, x0), variation(x)


def block_pool(m: torch.Tensor, k: int, s: int, p: int, block: int) -> torch.Tensor:
    """Max of a pixel map over each output block's receptive field: (N, 1, H, W) -> (N, 1, nbh, nbw)."""
    rf = F.max_pool2d(m, k, stride=s, padding=p) if k > 1 or s > 1 else m  # (N, 1, Ho, Wo)
    return F.max_pool2d(rf, block, stride=block, ceil_mode=True) if block > 1 else rf


def threshold_decisions(rb: torch.Tensor, vb: torch.Tensor, tau_t: float, tau_s: float) -> torch.Tensor:
    """Block stats (N, 1, nbh, nbw) -> decision (N, nbh, nbw) int32."""
    d = torch.where(rb < tau_t, REUSE, torch.where((vb < tau_s) & (rb < float("inf")), INTERPOLATE, COMPUTE))
    return d[:, 0].to(torch.int32)


def gate(x: torch.Tensor, x0: torch.Tensor, k: int, stride: int, padding: int, block: int, tau_t: float,
         tau_s: float, force_dense: bool) -> torch.Tensor:
    """The threshold gate: decision (N, nbh, nbw) int32. With ``tau_s == 0`` nothing can INTERPOLATE,
    so the variation pass is skipped (same decisions, less work)."""
    vb = block_pool(variation(x), k, stride, padding, block) if tau_s > 0 else None
    rb = block_pool(residual(x, x0), k, stride, padding, block)
    d = threshold_decisions(rb, rb if vb is None else vb, tau_t, tau_s)
    return torch.full_like(d, COMPUTE) if force_dense else d


# ---- outputs ---------------------------------------------------------------------------------------
def lattice_index(size: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of ``size`` output rows, its two lattice rows (i0, i1) on the stride-2 lattice."""
    u = torch.arange(size, device=device)
    n_lat = (size + 1) // 2
    i0 = u // 2
    return i0, torch.clamp(i0 + u % 2, max=n_lat - 1)


def fill_from_lattice(e: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
    """Bilinear fill (N, C, ceil(Ho/2), ceil(Wo/2)) -> (N, C, Ho, Wo), the definition in the docstring."""
    r0, r1 = lattice_index(ho, e.device)
    c0, c1 = lattice_index(wo, e.device)
    rows = 0.5 * (e.index_select(2, r0) + e.index_select(2, r1))
    return 0.5 * (rows.index_select(3, c0) + rows.index_select(3, c1))


def expand_blocks(d: torch.Tensor, block: int, h: int, w: int, unit: int = 1) -> torch.Tensor:
    """Per-block map (..., nbh, nbw) -> per-pixel map (..., h, w): pixel (r, c) takes block
    (min(r // (block*unit), nbh-1), min(c // (block*unit), nbw-1))."""
    nbh, nbw = d.shape[-2:]
    ri, ci = block_index(h, block, nbh, unit, d.device), block_index(w, block, nbw, unit, d.device)
    return d.index_select(d.dim() - 2, ri).index_select(d.dim() - 1, ci)


def block_index(size: int, block: int, nb: int, unit: int = 1, device: torch.device | None = None) -> torch.Tensor:
    """The block of each of ``size`` rows (or columns): ``min(i // (block*unit), nb - 1)``."""
    return torch.clamp(torch.arange(size, device=device) // (block * unit), max=nb - 1)


def apply_decisions(x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None, decision: torch.Tensor, stride: int, padding: int,
                    block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense compute + select for a given decision map: returns (y, x0_new). Correct, not faster."""
    ho, wo = y0.shape[-2:]
    y_full = F.conv2d(x, weight, bias, stride=stride, padding=padding)  # (N, Cout, Ho, Wo)
    e = F.conv2d(x, weight, bias, stride=2 * stride, padding=padding)  # (N, Cout, ceil(Ho/2), ceil(Wo/2))
    y_int = fill_from_lattice(e, ho, wo)
    dpix = expand_blocks(decision, block, ho, wo).unsqueeze(1)  # (N, 1, Ho, Wo)
    y = torch.where(dpix == REUSE, y0, torch.where(dpix == INTERPOLATE, y_int, y_full))
    own = expand_blocks(decision, block, x.shape[-2], x.shape[-1], unit=stride).unsqueeze(1)  # (N, 1, H, W)
    x0_new = torch.where(own != REUSE, x, x0)
    return y, x0_new


def triple_sparse_conv_reference(
    x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
    stride: int = 1, padding: int = 1, block: int = 8, tau_t: float = 0.05, tau_s: float = 0.0,
    force_dense: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference functional core: (y, x0_new, y0_new, decision). Made of ONNX-exportable ops only,
    so it is also the ``portable`` ONNX form."""
    k = weight.shape[-1]
    check_config(k, stride, padding, block, tau_t, tau_s)
    check_inputs(x, x0, y0, weight, stride, padding)
    d = gate(x, x0, k, stride, padding, block, tau_t, tau_s, force_dense)
    y, x0_new = apply_decisions(x, x0, y0, weight, bias, d, stride, padding, block)
    return y, x0_new, y, d


def triple_sparse_conv_blockwise(
    x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
    stride: int = 1, padding: int = 1, block: int = 8, tau_t: float = 0.05, tau_s: float = 0.0,
    force_dense: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same definition written block by block with Python loops (slow; tests only).

    Kept independent of the vectorised code above on purpose, so the forms are checked against a
    literal reading of the definition rather than against themselves.
    """
    k = weight.shape[-1]
    check_config(k, stride, padding, block, tau_t, tau_s)
    n, _, h, w = x.shape
    ho, wo = y0.shape[-2:]
    nbh, nbw = -(-ho // block), -(-wo // block)
    xp = F.pad(x, (padding,) * 4)
    r = F.pad(residual(x, x0)[:, 0], (padding,) * 4, value=float("-inf"))  # (N, H+2p, W+2p)
    v = F.pad(variation(x)[:, 0], (padding,) * 4, value=float("-inf"))

    def conv_at(i: int, oy: int, ox: int) -> torch.Tensor:  # exact conv at one output pixel, (Cout,)
        patch = xp[i, :, oy * stride: oy * stride + k, ox * stride: ox * stride + k]
        out = (weight * patch).sum(dim=(1, 2, 3))
        return out + bias if bias is not None else out

    y, x0_new = y0.clone(), x0.clone()
    dec = torch.zeros(n, nbh, nbw, dtype=torch.int32)
    n_lat_h, n_lat_w = (ho + 1) // 2, (wo + 1) // 2
    for i in range(n):
        for bi in range(nbh):
            for bj in range(nbw):
                rows, cols = range(bi * block, min(bi * block + block, ho)), range(bj * block, min(bj * block + block, wo))
                rf = (slice(rows[0] * stride, rows[-1] * stride + k), slice(cols[0] * stride, cols[-1] * stride + k))
                big_r, big_v = r[i][rf].max().item(), v[i][rf].max().item()
                d = COMPUTE if force_dense else REUSE if big_r < tau_t else \
                    INTERPOLATE if big_v < tau_s and math.isfinite(big_r) else COMPUTE
                dec[i, bi, bj] = d
                for oy in rows:
                    for ox in cols:
                        if d == COMPUTE:
                            y[i, :, oy, ox] = conv_at(i, oy, ox)
                        elif d == INTERPOLATE:
                            a0, a1 = oy // 2, min(oy // 2 + oy % 2, n_lat_h - 1)
                            b0, b1 = ox // 2, min(ox // 2 + ox % 2, n_lat_w - 1)
                            y[i, :, oy, ox] = 0.25 * (conv_at(i, 2 * a0, 2 * b0) + conv_at(i, 2 * a1, 2 * b0)
                                                      + conv_at(i, 2 * a0, 2 * b1) + conv_at(i, 2 * a1, 2 * b1))
                if d != REUSE:
                    r0, c0 = bi * block * stride, bj * block * stride
                    r1 = h if bi == nbh - 1 else r0 + block * stride
                    c1 = w if bj == nbw - 1 else c0 + block * stride
                    x0_new[i, :, r0:r1, c0:c1] = x[i, :, r0:r1, c0:c1]
    return y, x0_new, y.clone(), dec
