"""Multi-scale deformable attention: input checks and the PyTorch reference (the ground truth).

Semantics follow Deformable DETR:

- ``value`` (B, S, M, D): the L levels' feature maps flattened and concatenated, ``S = sum(H_l*W_l)``;
- ``spatial_shapes`` (L, 2) int64: ``(H_l, W_l)`` per level;
- ``level_start_index`` (L,) int64: where each level starts along S;
- ``sampling_locations`` (B, Q, M, L, P, 2): normalised ``(x, y)`` in [0, 1];
- ``attention_weights`` (B, Q, M, L, P);
- output (B, Q, M*D): for each query and head, the attention-weighted sum of the bilinear samples,
  with zero padding outside the map and ``align_corners=False`` (pixel centres at ``(i + 0.5) / size``).

The reference uses ``grid_sample`` once per level and accumulates in FP32 whatever the input dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from edgevis.errors import SpecError

Shapes = tuple[tuple[int, int], ...]

_LAYOUT = {
    "value": "[B, S, M, D]",
    "spatial_shapes": "[L, 2]",
    "level_start_index": "[L]",
    "sampling_locations": "[B, Q, M, L, P, 2]",
    "attention_weights": "[B, Q, M, L, P]",
}
_INT_DTYPES = (torch.int64, torch.int32)


def _fail(name: str, received: str, fix: str = "") -> None:
    msg = f"ms_deform_attn: '{name}' must be {_LAYOUT[name]}; received {received}"
    raise SpecError(msg + (f"; {fix}" if fix else ""))


def _desc(t: torch.Tensor) -> str:
    return f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}"


def normalize_shapes(shapes: Sequence[Sequence[int]]) -> Shapes:
    """``shapes`` as a tuple of ``(H, W)`` Python ints (raises SpecError if it is not one)."""
    try:
        out = tuple((int(h), int(w)) for h, w in shapes)
    except (TypeError, ValueError):
        raise SpecError(
            f"ms_deform_attn: shapes must be a sequence of (H, W) int pairs, one per level; received {shapes!r}"
        ) from None
    if not out or any(h <= 0 or w <= 0 for h, w in out):
        raise SpecError(f"ms_deform_attn: shapes must hold at least one (H, W) with H, W > 0; received {out}")
    return out


def level_starts(shapes: Shapes) -> tuple[int, ...]:
    """Start offset of each level along S: ``(0, H0*W0, H0*W0 + H1*W1, ...)``."""
    starts, acc = [], 0
    for h, w in shapes:
        starts.append(acc)
        acc += h * w
    return tuple(starts)


def check_inputs(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor | None,
    level_start_index: torch.Tensor | None,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    shapes: Shapes | None = None,
) -> None:
    """Validate ranks, dtypes and sizes at the op boundary; raise SpecError naming the tensor.

    Level sizes are checked against ``S`` when they are known: from ``shapes`` or from concrete
    (non-fake) ``spatial_shapes``/``level_start_index`` tensors.
    """
    for name, t, rank in (
        ("value", value, 4),
        ("sampling_locations", sampling_locations, 6),
        ("attention_weights", attention_weights, 5),
    ):
        if not isinstance(t, torch.Tensor):
            _fail(name, type(t).__name__, "pass a torch.Tensor")
        if t.dim() != rank:
            _fail(name, f"{_desc(t)} (rank {t.dim()})", f"expected rank {rank}")
        if not t.dtype.is_floating_point:
            _fail(name, _desc(t), "expected a float dtype (float32 or float16); convert with .float()")
    if sampling_locations.dtype != value.dtype or attention_weights.dtype != value.dtype:
        raise SpecError(
            f"ms_deform_attn: value, sampling_locations and attention_weights must share one float dtype; "
            f"received {value.dtype}, {sampling_locations.dtype}, {attention_weights.dtype}; convert them with .to(value.dtype)"
        )
    B, S, M, D = value.shape
    _, Q, _, L, P, two = sampling_locations.shape
    if sampling_locations.shape[0] != B or sampling_locations.shape[2] != M or two != 2:
        _fail(
            "sampling_locations",
            _desc(sampling_locations),
            f"expected [B={B}, Q, M={M}, L, P, 2] to match value {_desc(value)}",
        )
    if tuple(attention_weights.shape) != (B, Q, M, L, P):
        _fail("attention_weights", _desc(attention_weights), f"expected {[B, Q, M, L, P]} to match sampling_locations")
    if spatial_shapes is not None:
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2 or spatial_shapes.dtype not in _INT_DTYPES:
            _fail("spatial_shapes", _desc(spatial_shapes), "expected an int64 tensor of (H, W) rows, one per level")
        if spatial_shapes.shape[0] != L:
            _fail("spatial_shapes", _desc(spatial_shapes), f"sampling_locations has L={L} levels, so expected [{L}, 2]")
    if level_start_index is not None:
        if level_start_index.dim() != 1 or level_start_index.dtype not in _INT_DTYPES:
            _fail("level_start_index", _desc(level_start_index), "expected an int64 vector, one start per level")
        if level_start_index.shape[0] != L:
            n_ss = "" if spatial_shapes is None else f" and spatial_shapes has {spatial_shapes.shape[0]}"
            _fail(
                "level_start_index",
                _desc(level_start_index),
                f"sampling_locations has L={L} levels{n_ss}, so expected [{L}]",
            )
    if shapes is None and spatial_shapes is not None and _is_concrete(spatial_shapes):
        shapes = tuple((int(h), int(w)) for h, w in spatial_shapes.tolist())
    if shapes is None:
        return
    if len(shapes) != L:
        raise SpecError(
            f"ms_deform_attn: shapes has {len(shapes)} levels but sampling_locations has L={L}; pass one (H, W) per level"
        )
    total = sum(h * w for h, w in shapes)
    if total != S:
        _fail("value", _desc(value), f"S={S} must equal the sum of H*W over levels {list(shapes)} = {total}")
    if level_start_index is not None and _is_concrete(level_start_index):
        got = [int(s) for s in level_start_index.tolist()]
        want = list(level_starts(shapes))
        if got != want:
            _fail(
                "level_start_index",
                f"{got}",
                f"expected {want}, the cumulative sums of H*W for spatial_shapes {list(shapes)}",
            )


def _is_concrete(t: torch.Tensor) -> bool:
    """True when ``t`` holds real data (not a fake/meta tensor traced by torch.export)."""
    from torch._subclasses.fake_tensor import FakeTensor

    return not isinstance(t, FakeTensor) and t.device.type != "meta"


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The grid_sample formulation; returns (B, Q, M*D) in ``value``'s dtype (FP32 math inside)."""
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    starts = [int(s) for s in level_start_index.tolist()]
    v32 = value.float()
    grids = 2.0 * sampling_locations.float() - 1.0  # (B, Q, M, L, P, 2)
    w32 = attention_weights.float()
    out = value.new_zeros((B * M, D, Q), dtype=torch.float32)  # (B*M, D, Q)
    for lvl, (h, w) in enumerate(shapes):
        s0 = starts[lvl]
        v = v32[:, s0 : s0 + h * w].reshape(B, h, w, M, D).permute(0, 3, 4, 1, 2).reshape(B * M, D, h, w)
        g = grids[:, :, :, lvl].permute(0, 2, 1, 3, 4).reshape(B * M, Q, P, 2)  # (B*M, Q, P, 2)
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B*M, D, Q, P)
        a = w32[:, :, :, lvl].permute(0, 2, 1, 3).reshape(B * M, 1, Q, P)
        out += (sampled * a).sum(-1)
    return out.reshape(B, M, D, Q).permute(0, 3, 1, 2).reshape(B, Q, M * D).to(value.dtype)
