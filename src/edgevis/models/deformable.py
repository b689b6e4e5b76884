"""Deformable-DETR building blocks on ``edgevis.plugins.ms_deform_attn`` (SeqFormer, OOKD student).

Attribute names follow SeqFormer / Deformable DETR so published checkpoints load unchanged:
``MSDeformAttn.{sampling_offsets, attention_weights, value_proj, output_proj[, output_proj_box]}``,
encoder layers ``{self_attn, norm1, linear1, linear2, norm2}``, SeqFormer decoder layers
``{cross_attn, self_attn, self_attn_box, norm1..3, norm1_box..norm3_box, linear1, linear2,
linear1_box, linear2_box, time_attention_weights}``; :class:`MultiheadAttention` keeps
``nn.MultiheadAttention``'s ``in_proj_weight / in_proj_bias / out_proj`` names but is written with
plain matmuls (batch-first) so it exports the same in every flavor.

Deployment simplification (documented): frames are letterboxed into a fixed input with no padding
mask, so every valid ratio is 1 and level shapes are static Python ints, passed to the plugin as
``shapes`` so the portable ONNX form slices levels statically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgevis.plugins.ms_deform_attn import ms_deform_attn

Shapes = tuple[tuple[int, int], ...]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def refine_reference(reference: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Iterative box refinement: the box head's ``delta`` (..., 4) applied to a reference in inverse-sigmoid
    space. A 2-d reference (points) becomes a box: its centre is refined, the size is the delta's."""
    if reference.shape[-1] == 2:
        return torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1).sigmoid()
    return (delta + inverse_sigmoid(reference)).sigmoid()


def sine_position_embedding(h: int, w: int, d_model: int, temperature: float = 10000.0) -> torch.Tensor:
    """Deformable DETR's normalised sine embedding of an unpadded (h, w) map: (h*w, d_model), [y | x] halves."""
    npf = d_model // 2
    scale, eps = 2 * math.pi, 1e-6
    y = torch.arange(1, h + 1, dtype=torch.float32)
    x = torch.arange(1, w + 1, dtype=torch.float32)
    y = (y - 0.5) / (h + eps) * scale  # (h,)
    x = (x - 0.5) / (w + eps) * scale  # (w,)
    dim_t = temperature ** (2 * (torch.arange(npf, dtype=torch.float32) // 2) / npf)  # (npf,)

    def enc(v: torch.Tensor) -> torch.Tensor:
        p = v[:, None] / dim_t  # (n, npf)
        return torch.stack([p[:, 0::2].sin(), p[:, 1::2].cos()], dim=2).flatten(1)  # interleaved sin/cos

    py, px = enc(y), enc(x)  # (h, npf), (w, npf)
    pos = torch.cat([py[:, None, :].expand(h, w, npf), px[None, :, :].expand(h, w, npf)], dim=2)  # (h, w, C)
    return pos.reshape(h * w, d_model)


def encoder_reference_points(shapes: Shapes) -> torch.Tensor:
    """Pixel-centre reference of every token of every level, normalised to [0, 1]: (S, 2) as (x, y)."""
    refs = []
    for h, w in shapes:
        ys, xs = torch.meshgrid(
            (torch.arange(h, dtype=torch.float32) + 0.5) / h, (torch.arange(w, dtype=torch.float32) + 0.5) / w,
            indexing="ij",
        )
        refs.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
    return torch.cat(refs, 0)


def level_token_index(shapes: Shapes) -> torch.Tensor:
    """(S,) int64: the level of each flattened token."""
    return torch.cat([torch.full((h * w,), i, dtype=torch.int64) for i, (h, w) in enumerate(shapes)])


def input_projection(channels: Sequence[int], d_model: int, groups: int) -> nn.ModuleList:
    """Deformable DETR's ``input_proj``: a 1x1 conv + GroupNorm on each backbone level, then a 3x3
    stride-2 conv + GroupNorm on the last one for the extra level; convs Xavier-initialised."""
    proj = [nn.Sequential(nn.Conv2d(c, d_model, 1), nn.GroupNorm(groups, d_model)) for c in channels]
    proj.append(nn.Sequential(nn.Conv2d(channels[-1], d_model, 3, stride=2, padding=1), nn.GroupNorm(groups, d_model)))
    for p in proj:
        nn.init.xavier_uniform_(p[0].weight)
        nn.init.zeros_(p[0].bias)
    return nn.ModuleList(proj)


def project_levels(input_proj: nn.ModuleList, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor) -> list[torch.Tensor]:
    """Backbone C3..C5 -> the 4 encoder levels (B, d, H_l, W_l) at strides 8, 16, 32, 64."""
    return [input_proj[0](c3), input_proj[1](c4), input_proj[2](c5), input_proj[3](c5)]


def flatten_levels(levels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Level maps (B, d, H_l, W_l) -> tokens (B, S, d), level by level, row-major."""
    return torch.cat([x.flatten(2).transpose(1, 2) for x in levels], 1)  # (B, S, d)


def split_levels(memory: torch.Tensor, shapes: Shapes) -> list[torch.Tensor]:
    """Tokens (B, S', d) -> maps (B, d, H_l, W_l) of the first ``len(shapes)`` levels (the inverse of
    :func:`flatten_levels`; S' may hold more levels than asked for)."""
    out, start = [], 0
    for h, w in shapes:
        out.append(memory[:, start : start + h * w].transpose(1, 2).reshape(memory.shape[0], -1, h, w))
        start += h * w
    return out


def register_position_buffers(module: nn.Module, shapes: Shapes, d_model: int) -> None:
    """``pos`` (1, S, d): the sine position embedding of every token, and ``level_of_token`` (S,)."""
    pos = torch.cat([sine_position_embedding(h, w, d_model) for h, w in shapes])[None]
    module.register_buffer("pos", pos, persistent=False)
    module.register_buffer("level_of_token", level_token_index(shapes), persistent=False)


class MLP(nn.Module):
    """``layers.{0..n-1}`` Linear layers with ReLU between (DETR's MLP)."""

    def __init__(self, cin: int, hidden: int, cout: int, num_layers: int) -> None:
        super().__init__()
        dims = [cin] + [hidden] * (num_layers - 1) + [cout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention with ``nn.MultiheadAttention``'s parameter names (no dropout)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.d_model, self.n_heads = d_model, n_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: (N, L, C) -> (N, L, C)."""
        n, lq, c = q.shape
        wq, wk, wv = self.in_proj_weight.chunk(3, 0)
        bq, bk, bv = self.in_proj_bias.chunk(3, 0)
        hd = c // self.n_heads

        def heads(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return F.linear(x, w, b).reshape(n, -1, self.n_heads, hd).transpose(1, 2)  # (N, M, L, hd)

        qh, kh, vh = heads(q, wq, bq), heads(k, wk, bk), heads(v, wv, bv)
        attn = torch.softmax((qh * (hd**-0.5)) @ kh.transpose(-1, -2), dim=-1)  # (N, M, Lq, Lk)
        out = (attn @ vh).transpose(1, 2).reshape(n, lq, c)
        return self.out_proj(out)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (Deformable DETR), calling the edgevis plugin op."""

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int, with_box_proj: bool = False) -> None:
        super().__init__()
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.output_proj_box = nn.Linear(d_model, d_model) if with_box_proj else None
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1) * torch.arange(1, self.n_points + 1).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj, self.output_proj_box):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)

    def sample(self, query: torch.Tensor, reference: torch.Tensor, value: torch.Tensor, shapes: Shapes) -> torch.Tensor:
        """query (N, Q, C), reference (N, Q, L, 2) points or (N, Q, 1|L, 4) boxes in [0, 1], value (N, S, C)
        (already projected) -> (N, Q, C) before ``output_proj``."""
        n, q, _ = query.shape
        m, lv, p = self.n_heads, self.n_levels, self.n_points
        offsets = self.sampling_offsets(query).view(n, q, m, lv, p, 2)
        weights = torch.softmax(self.attention_weights(query).view(n, q, m, lv * p), -1).view(n, q, m, lv, p)
        if reference.shape[-1] == 2:
            norm = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)  # (L, 2) as (W, H)
            loc = reference[:, :, None, :, None, :] + offsets / norm[None, None, None, :, None, :]
        else:
            loc = reference[:, :, None, :, None, :2] + offsets / p * reference[:, :, None, :, None, 2:] * 0.5
        v = value.view(n, value.shape[1], m, self.d_model // m)  # (N, S, M, D)
        return ms_deform_attn(v, None, None, loc, weights, shapes=shapes)  # (N, Q, C)


class DeformableEncoderLayer(nn.Module):
    """Self deformable attention over one frame's tokens + FFN (post-norm), as in Deformable DETR."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor, shapes: Shapes) -> torch.Tensor:
        """src (N, S, C), pos (1|N, S, C), reference (N|1, S, L, 2) -> (N, S, C)."""
        attn = self.self_attn
        value = attn.value_proj(src)
        ref = reference.expand(src.shape[0], -1, -1, -1)
        out = attn.output_proj(attn.sample(src + pos, ref, value, shapes))
        src = self.norm1(src + out)
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DeformableEncoder(nn.Module):
    """``layers.{i}``: the 6-layer (SeqFormer) multi-scale deformable encoder, each frame attending to itself."""

    def __init__(self, num_layers: int, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int,
                 shapes: Shapes) -> None:
        super().__init__()
        self.shapes = tuple(shapes)
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(d_model, d_ffn, n_levels, n_heads, n_points) for _ in range(num_layers)
        )
        ref = encoder_reference_points(self.shapes)  # (S, 2)
        self.register_buffer("reference", ref[None, :, None, :].expand(1, -1, n_levels, 2).contiguous(), persistent=False)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """src (N, S, C) flattened levels, pos (1, S, C) position + level embedding -> memory (N, S, C)."""
        for layer in self.layers:
            src = layer(src, pos, self.reference, self.shapes)
        return src


class SeqFormerDecoderLayer(nn.Module):
    """One SeqFormer decoder layer: an instance query shared by the clip plus one box query per frame.

    1. self-attention of the instance queries and (per frame) of the box queries;
    2. deformable cross-attention per frame, sampled around each frame's box, offsets from the box query;
    3. box query: residual + norm + FFN; instance query: the per-frame outputs pooled with a softmax over
       frames of ``time_attention_weights(box query)``, then residual + norm + FFN.
    """

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, with_box_proj=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm1_box = nn.LayerNorm(d_model)
        self.self_attn = MultiheadAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.self_attn_box = MultiheadAttention(d_model, n_heads)
        self.norm2_box = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.linear1_box = nn.Linear(d_model, d_ffn)
        self.linear2_box = nn.Linear(d_ffn, d_model)
        self.norm3_box = nn.LayerNorm(d_model)
        self.time_attention_weights = nn.Linear(d_model, 1)

    def forward(self, tgt: torch.Tensor, tgt_box: torch.Tensor, query_pos: torch.Tensor, reference: torch.Tensor,
                value: torch.Tensor, shapes: Shapes) -> tuple[torch.Tensor, torch.Tensor]:
        """tgt (B, Q, C), tgt_box (B, T, Q, C), query_pos (B, Q, C), reference (B, T, Q, 2|4),
        value (B*T, S, C) projected memory -> tgt (B, Q, C), tgt_box (B, T, Q, C)."""
        b, t, q, c = tgt_box.shape
        qk = tgt + query_pos
        tgt = self.norm2(tgt + self.self_attn(qk, qk, tgt))
        box = tgt_box.reshape(b * t, q, c)
        pos_bt = query_pos[:, None].expand(b, t, q, c).reshape(b * t, q, c)
        qk_box = box + pos_bt
        box = self.norm2_box(box + self.self_attn_box(qk_box, qk_box, box))  # (B*T, Q, C)
        ref = reference.reshape(b * t, q, 1, reference.shape[-1])
        if ref.shape[-1] == 2:
            ref = ref.expand(-1, -1, self.cross_attn.n_levels, -1)
        sampled = self.cross_attn.sample(box + pos_bt, ref, value, shapes)  # (B*T, Q, C)
        out = self.cross_attn.output_proj(sampled).view(b, t, q, c)
        out_box = self.cross_attn.output_proj_box(sampled).view(b, t, q, c)
        tgt_box = self.norm1_box(box.view(b, t, q, c) + out_box)
        tgt_box = self.norm3_box(tgt_box + self.linear2_box(F.relu(self.linear1_box(tgt_box))))
        w = torch.softmax(self.time_attention_weights(tgt_box), dim=1)  # (B, T, Q, 1) softmax over frames
        tgt = self.norm1(tgt + (out * w).sum(1))
        tgt = self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))
        return tgt, tgt_box


class SeqFormerDecoder(nn.Module):
    """``layers.{i}``; iterative per-frame box refinement with the (shared) ``bbox_embed`` heads."""

    def __init__(self, num_layers: int, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SeqFormerDecoderLayer(d_model, d_ffn, n_levels, n_heads, n_points) for _ in range(num_layers)
        )

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, reference: torch.Tensor, memory: torch.Tensor,
                shapes: Shapes, bbox_embed: Sequence[nn.Module]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """tgt, query_pos (B, Q, C); reference (B, T, Q, 2); memory (B, T, S, C).

        Returns the last layer's instance queries (B, Q, C), box queries (B, T, Q, C), the reference it
        read (B, T, Q, 2|4) and the refined boxes (B, T, Q, 4) (cx, cy, w, h in [0, 1]).
        """
        b, t, s, c = memory.shape
        flat = memory.reshape(b * t, s, c)
        tgt_box = tgt[:, None].expand(b, t, -1, -1)  # every frame's box query starts as the target half
        ref_in = reference
        for lid, layer in enumerate(self.layers):
            ref_in = reference
            value = layer.cross_attn.value_proj(flat)  # (B*T, S, C)
            tgt, tgt_box = layer(tgt, tgt_box, query_pos, reference, value, shapes)
            delta = bbox_embed[lid](tgt_box)  # (B, T, Q, 4)
            reference = refine_reference(reference, delta)
        return tgt, tgt_box, ref_in, reference
