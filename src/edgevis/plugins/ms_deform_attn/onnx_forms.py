"""The two ONNX forms of multi-scale deformable attention.

- :func:`msda_portable`: standard ops only, no ``GridSample`` (TensorRT 10.14 and 11.1 can miscompile
  it), so the graph runs on any onnxruntime, ARM included, and in TensorRT. Bilinear sampling of all
  levels, points and corners is ONE ``Gather`` of D-wide rows of ``value`` viewed as (B*S*M, D),
  followed by one batched ``MatMul`` with the combined bilinear x attention weights. The level
  shapes are static Python ints, so every per-level constant is folded at export.

  Layout matters on CPU: onnxruntime's elementwise broadcasting is per contiguous run of the
  output, so a broadcast whose innermost run is 2 (an ``(..., 2)`` corner pair) costs about 7x one
  over a long run. The per-sample index and weight math therefore keeps ``(L, P)`` innermost (runs
  of ``L*P``), puts the corner pair axes in front of it, and every per-level constant is a full
  ``(L, P)`` table; the gathered corners are ordered ``(cy, cx, l, p)`` per (b, q, m), which the
  final ``MatMul`` does not care about. Out-of-map corners get weight 0 and a clamped (valid) row,
  so ``value`` is never copied or padded.

- :func:`msda_trt_node`: one ``edgevis::MSDeformAttn`` node for ``libedgevis_plugins.so``.
- :func:`msda_builtin_trt_node`: TensorRT's own ``MultiscaleDeformableAttnPlugin_TRT`` (no custom
  library needed); int32 shape inputs, output [B, Q, M, D] reshaped to [B, Q, M*D].
"""

from __future__ import annotations

import torch

from edgevis.errors import SpecError
from edgevis.plugins.flavor import plugin_attrs
from edgevis.plugins.ms_deform_attn.reference import Shapes, level_starts

PLUGIN_NAME = "MSDeformAttn"
BUILTIN_PLUGIN_NAME = "MultiscaleDeformableAttnPlugin_TRT"
BUILTIN_PLUGIN_VERSION = "1"  # v1 exists in every TensorRT 10.x (v2, IPluginV3, from 10.11)
_FLOAT_EXACT = 2**24  # level-local row offsets (< S*M) are computed in float32, exact below this


def msda_portable(
    value: torch.Tensor,
    shapes: Shapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Gather-based bilinear MSDA with static level shapes; (B, Q, M*D). Also runs eagerly."""
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    if S * M >= _FLOAT_EXACT:
        raise SpecError(
            f"ms_deform_attn: the portable form needs S*M < 2**24; received value {list(value.shape)} "
            f"(S*M = {S * M}); use the trt flavor or fewer/smaller levels"
        )
    dev = value.device

    def table(rows: list[float]) -> torch.Tensor:  # one number per level -> full (L, P) constant
        return torch.tensor([[r] * P for r in rows], dtype=torch.float32, device=dev)

    width = table([float(w) for _, w in shapes])  # (L, P)
    height = table([float(h) for h, _ in shapes])
    start = table([float(s) for s in level_starts(shapes)])
    pair = torch.tensor([0.0, 1.0], device=dev).view(2, 1, 1)  # corner offset along x or y
    sign = torch.tensor([-1.0, 1.0], device=dev).view(2, 1, 1)

    # Pixel coordinates, align_corners=False: centre of pixel i is at (i + 0.5) / size.
    xy = sampling_locations.float().permute(5, 0, 1, 2, 3, 4)  # (2, B, Q, M, L, P)
    x = xy[0] * width - 0.5  # (B, Q, M, L, P)
    y = xy[1] * height - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    xc = x0.unsqueeze(-3) + pair  # (B, Q, M, 2, L, P): left, right column
    yc = y0.unsqueeze(-3) + pair  # (B, Q, M, 2, L, P): top, bottom row
    wx = (x - x0).unsqueeze(-3) * sign + (1.0 - pair)  # (B, Q, M, 2, L, P): 1 - fx, fx
    wy = ((y - y0).unsqueeze(-3) * sign + (1.0 - pair)) * attention_weights.float().unsqueeze(-3)  # x attention
    wx = torch.where((xc >= 0.0) & (xc <= width - 1.0), wx, 0.0)  # zero padding: off-map corners weigh 0
    wy = torch.where((yc >= 0.0) & (yc <= height - 1.0), wy, 0.0)
    xc = torch.minimum(xc.clamp(min=0.0), width - 1.0)  # ... and read a valid row
    yc = torch.minimum(yc.clamp(min=0.0), height - 1.0)

    # Row of value viewed as (B*S*M, D): (b*S + start + y*W + x)*M + m.
    row_y = ((yc * width + start) * M).to(torch.int64)  # (B, Q, M, 2, L, P), exact: < S*M
    row_x = (xc * M).to(torch.int64)
    bm = torch.arange(B, device=dev).view(B, 1, 1, 1, 1, 1) * (S * M) + torch.arange(M, device=dev).view(
        1, 1, M, 1, 1, 1
    )  # (B, 1, M, 1, 1, 1)
    rows = (row_y + bm).unsqueeze(-3) + row_x.unsqueeze(-4)  # (B, Q, M, 2, 2, L, P): (cy, cx, l, p)
    weight = wy.unsqueeze(-3) * wx.unsqueeze(-4)  # (B, Q, M, 2, 2, L, P)

    K = 4 * L * P  # corners per (b, q, m)
    sampled = value.reshape(B * S * M, D).index_select(0, rows.reshape(-1))  # one Gather: (B*Q*M*K, D)
    sampled = sampled.reshape(B, Q, M, K, D)
    w = weight.reshape(B, Q, M, 1, K).to(value.dtype)  # (B, Q, M, 1, K)
    out = torch.matmul(w, sampled)  # (B, Q, M, 1, D)
    return out.reshape(B, Q, M * D)


def _shape_consts(shapes: Shapes, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ss = torch.tensor(shapes, dtype=dtype, device=device)  # (L, 2)
    starts = torch.tensor(level_starts(shapes), dtype=dtype, device=device)  # (L,)
    return ss, starts


def msda_trt_node(
    value: torch.Tensor, shapes: Shapes, sampling_locations: torch.Tensor, attention_weights: torch.Tensor
) -> torch.Tensor:
    """One ``edgevis::MSDeformAttn`` node; spatial_shapes/level_start_index become int64 constants."""
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    ss, starts = _shape_consts(shapes, torch.int64, value.device)
    return torch.onnx.ops.symbolic(
        f"edgevis::{PLUGIN_NAME}",
        (value, ss, starts, sampling_locations, attention_weights),
        plugin_attrs(num_levels=L, num_points=P),
        dtype=value.dtype,
        shape=(B, Q, M * D),
        version=1,
    )


def msda_builtin_trt_node(
    value: torch.Tensor, shapes: Shapes, sampling_locations: torch.Tensor, attention_weights: torch.Tensor
) -> torch.Tensor:
    """TensorRT's ``MultiscaleDeformableAttnPlugin_TRT`` (int32 shape inputs, output [B, Q, M, D])."""
    B, S, M, D = value.shape
    Q = sampling_locations.shape[1]
    ss, starts = _shape_consts(shapes, torch.int32, value.device)
    out = torch.onnx.ops.symbolic(
        f"trt::{BUILTIN_PLUGIN_NAME}",
        (value, ss, starts, sampling_locations, attention_weights),
        {"plugin_namespace": "", "plugin_version": BUILTIN_PLUGIN_VERSION},
        dtype=value.dtype,
        shape=(B, Q, M, D),
        version=1,
    )
    return out.reshape(B, Q, M * D)
