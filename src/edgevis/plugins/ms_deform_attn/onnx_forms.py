"""The two ONNX forms of multi-scale deformable attention.

- :func:`msda_portable`: standard ops only, no ``GridSample`` (TensorRT 10.14 and 11.1 can miscompile
  it), so the graph runs on any onnxruntime, ARM included, and in TensorRT. Bilinear sampling of all
  levels, points and corners is ONE ``Gather`` followed by one batched ``MatMul`` with the combined
  bilinear x attention weights. The level shapes are static Python ints, so every per-level
  constant is folded at export. Two gather layouts, picked from the static sizes (``gather="auto"``):

  * ``"corners"``: gather D-wide rows of ``value`` viewed as (B*S*M, D), 4 per sample point
    (cheapest when there are few samples per value row, e.g. the decoder's 300 queries);
  * ``"cells"``: first lay ``value`` out as a table of bilinear cells (one row = a cell's 4 corners
    x D, with a ring of zeros), then gather one 4D-wide row per sample point: 4x fewer indices and
    per-sample (not per-corner) index math, worth the table's cost when Q*L*P >> S (the encoder).

- :func:`msda_trt_node`: one ``edgevis::MSDeformAttn`` node for ``libedgevis_plugins.so``.
- :func:`msda_builtin_trt_node`: TensorRT's own ``MultiscaleDeformableAttnPlugin_TRT`` (no custom
  library needed); int32 shape inputs, output [B, Q, M, D] reshaped to [B, Q, M*D].
"""

from __future__ import annotations

from typing import Literal

import torch

from edgevis.errors import EdgevisError
from edgevis.plugins.flavor import plugin_attrs
from edgevis.plugins.ms_deform_attn.reference import Shapes, level_starts

PLUGIN_NAME = "MSDeformAttn"
BUILTIN_PLUGIN_NAME = "MultiscaleDeformableAttnPlugin_TRT"
BUILTIN_PLUGIN_VERSION = "1"  # v1 exists in every TensorRT 10.x (v2, IPluginV3, from 10.11)
GATHERS = ("auto", "corners", "cells")


def _cell_table(value: torch.Tensor, shapes: Shapes) -> torch.Tensor:
    """Each bilinear cell's 4 corners side by side: (B, C, M, 4*D), C = sum((H+1)*(W+1)).

    Level maps get a ring of zeros (the zero padding), so a cell whose corners straddle the border
    reads zeros there. Cell (cy, cx) of a level holds padded pixels (cy, cx), (cy, cx+1),
    (cy+1, cx), (cy+1, cx+1): corners top-left, top-right, bottom-left, bottom-right.
    """
    B, S, M, D = value.shape
    cells = []
    for (h, w), s0 in zip(shapes, level_starts(shapes)):
        v = value[:, s0 : s0 + h * w].reshape(B, h, w, M, D)  # (B, H, W, M, D)
        vp = torch.nn.functional.pad(v, (0, 0, 0, 0, 1, 1, 1, 1))  # (B, H+2, W+2, M, D)
        quad = torch.cat(
            [vp[:, :-1, :-1], vp[:, :-1, 1:], vp[:, 1:, :-1], vp[:, 1:, 1:]], dim=-1
        )  # (B, H+1, W+1, M, 4D)
        cells.append(quad.reshape(B, (h + 1) * (w + 1), M, 4 * D))
    return torch.cat(cells, dim=1) if len(cells) > 1 else cells[0]


def pick_gather(shapes: Shapes, num_queries: int, num_points: int) -> Literal["corners", "cells"]:
    """``"cells"`` when sample points outnumber value rows enough to pay for the cell table."""
    S = sum(h * w for h, w in shapes)
    return "cells" if num_queries * len(shapes) * num_points >= 4 * S else "corners"


def msda_portable(
    value: torch.Tensor,
    shapes: Shapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    gather: str = "auto",
) -> torch.Tensor:
    """Gather-based bilinear MSDA with static level shapes; (B, Q, M*D). Also runs eagerly."""
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    if gather not in GATHERS:
        raise EdgevisError(f"ms_deform_attn: gather={gather!r} is unknown; expected one of {GATHERS}")
    if gather == "auto":
        gather = pick_gather(shapes, Q, P)
    dev = value.device
    # Per-level constants, broadcast over (B, Q, M, L, P).
    size_wh = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32, device=dev).view(L, 1, 2)  # (L, 1, 2)
    width, height = size_wh[..., 0], size_wh[..., 1]  # (L, 1)
    one_zero = torch.tensor([1.0, 0.0], device=dev)
    sign = torch.tensor([-1.0, 1.0], device=dev)

    # Pixel coordinates, align_corners=False: centre of pixel i is at (i + 0.5) / size.
    pix = sampling_locations.float() * size_wh - 0.5  # (B, Q, M, L, P, 2)
    x, y = pix[..., 0], pix[..., 1]  # (B, Q, M, L, P)
    x0, y0 = torch.floor(x), torch.floor(y)
    wx = (x - x0).unsqueeze(-1) * sign + one_zero  # (B, Q, M, L, P, 2): (1 - fx, fx)
    wy = (y - y0).unsqueeze(-1) * sign + one_zero  # (B, Q, M, L, P, 2): (1 - fy, fy)
    attn = attention_weights.float()  # (B, Q, M, L, P)
    batch = torch.arange(B, device=dev).view(B, 1, 1, 1)  # (B, 1, 1, 1)
    head = torch.arange(M, device=dev).view(1, 1, M, 1)  # (1, 1, M, 1)

    if gather == "cells":
        table = _cell_table(value, shapes)  # (B, C, M, 4D)
        C = table.shape[1]
        cell_start = torch.tensor(
            level_starts(tuple((h + 1, w + 1) for h, w in shapes)), dtype=torch.float32, device=dev
        )
        # A point with -1 < x < W and -1 < y < H touches the map; farther points sample only zeros.
        inside = (x > -1.0) & (x < width) & (y > -1.0) & (y < height)
        attn = torch.where(inside, attn, 0.0)
        cx = torch.minimum((x0 + 1.0).clamp(min=0.0), width)  # (B, Q, M, L, P), padded cell coordinates
        cy = torch.minimum((y0 + 1.0).clamp(min=0.0), height)
        cell = cell_start.view(L, 1) + cy * (width + 1.0) + cx  # (B, Q, M, L, P)
        # Row of the table viewed as (B*C*M, 4D): (b*C + cell)*M + m = cell*M + (b*M*C + m).
        rows = cell.reshape(B, Q, M, L * P).to(torch.int64) * M + (batch * (C * M) + head)  # (B, Q, M, L*P)
        flat = table.reshape(B * C * M, 4 * D)
    else:
        start = torch.tensor(level_starts(shapes), dtype=torch.float32, device=dev).view(L, 1, 1, 1)  # (L, 1, 1, 1)
        xc = x0.unsqueeze(-1) + torch.tensor([0.0, 1.0], device=dev)  # (B, Q, M, L, P, 2)
        yc = y0.unsqueeze(-1) + torch.tensor([0.0, 1.0], device=dev)
        wx = torch.where((xc >= 0.0) & (xc <= width.unsqueeze(-1) - 1.0), wx, 0.0)  # zero padding
        wy = torch.where((yc >= 0.0) & (yc <= height.unsqueeze(-1) - 1.0), wy, 0.0)
        xc = torch.minimum(xc.clamp(min=0.0), width.unsqueeze(-1) - 1.0)
        yc = torch.minimum(yc.clamp(min=0.0), height.unsqueeze(-1) - 1.0)
        pos = start + yc.unsqueeze(-1) * width.view(L, 1, 1, 1) + xc.unsqueeze(-2)  # (B, Q, M, L, P, 2, 2)
        # Row of value viewed as (B*S*M, D): (b*S + pos)*M + m = pos*M + (b*M*S + m).
        rows = pos.reshape(B, Q, M, L * P * 4).to(torch.int64) * M + (batch * (S * M) + head)  # (B, Q, M, L*P*4)
        flat = value.reshape(B * S * M, D)

    weight = (wy * attn.unsqueeze(-1)).unsqueeze(-1) * wx.unsqueeze(-2)  # (B, Q, M, L, P, 2, 2): tl, tr, bl, br
    sampled = flat.index_select(0, rows.reshape(-1))  # one Gather: (B*Q*M*L*P*4, D) or (B*Q*M*L*P, 4D)
    sampled = sampled.reshape(B, Q, M, L * P * 4, D)  # (B, Q, M, K, D), K = L*P*4 corners
    w = weight.reshape(B, Q, M, 1, L * P * 4).to(value.dtype)  # (B, Q, M, 1, K)
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
