"""OOKD online student (SEEDS.md section 3): an IDOL-style per-frame segmenter with association embeddings.

[our design] (the paper names neither student nor teacher). The student reuses SeqFormer's blocks,
sized down:

- ResNet with frozen BN (``models/resnet.py``) -> C3/C4/C5 projected to ``d_model`` (1x1 conv +
  GroupNorm) and a 4th level by a 3x3 stride-2 conv, sine position embedding + ``level_embed``;
- the multi-scale deformable encoder of ``models/deformable.py`` (``enc_layers``, each frame alone);
- a Deformable-DETR decoder (``decoder.layers.{i}``: ``self_attn, norm2, cross_attn, norm1, linear1,
  linear2, norm3``), written here: SeqFormer's decoder carries a time axis and a second (box) query
  stream an online model does not need. It is built from the same ``MSDeformAttn`` and
  ``MultiheadAttention`` blocks, with per-layer box refinement (``bbox_embed.{i}``);
- heads on the last layer's queries: ``class_embed`` (sigmoid, ``num_classes``), ``bbox_embed``,
  ``embed_head`` (the contrastive association embedding, raw, as IDOL), and ``controller`` producing
  a CondInst dynamic mask head (3 layers of 1x1, 8 channels, relative coordinates in pixels / 64)
  evaluated as batched matmuls over ``mask_feats`` (a small top-down FPN over the stride 8/16/32
  encoder levels, ``mask_channels`` at stride 8), upsampled to stride 4 by the aligned-bilinear matrix.

Stage ``frame`` (stateless): image (B, H, W, 3) uint8 -> ``logits``, ``scores``, ``labels`` (B, K):
the top-K queries by their best class (TopK with a static K in the graph), ``boxes`` (B, K, 4)
(cx, cy, w, h in [0, 1]), ``embeds`` (B, K, E), ``masks`` (B, K, H/4, W/4) mask logits. The tracker
(runtime/tracker.py) lives in the runner policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgevis.models.base import Deployable
from edgevis.models.blocks import ImageNormalize
from edgevis.models.deformable import (
    MLP,
    DeformableEncoder,
    MSDeformAttn,
    MultiheadAttention,
    Shapes,
    flatten_levels,
    input_projection,
    project_levels,
    refine_reference,
    register_position_buffers,
    split_levels,
)
from edgevis.models.resnet import Backbone, ResNetConfig, level_shapes
from edgevis.models.seqformer import (
    DYNAMIC_CHANNELS,
    dynamic_head_split,
    nearest_index,
    register_dynamic_head_buffers,
    upsample_nearest,
)
from edgevis.spec import IOSpec, Preprocess, TensorSpec

PREPROCESS = Preprocess(size_multiple=8)
COORD_SCALE = 64.0  # relative coordinates of the dynamic head: pixels / 64 (CondInst's size of interest)


@dataclass(frozen=True)
class OokdConfig:
    height: int = 360
    width: int = 640
    d_model: int = 256
    d_ffn: int = 1024
    n_heads: int = 8
    n_points: int = 4
    enc_layers: int = 3
    dec_layers: int = 3
    num_queries: int = 100
    num_classes: int = 42  # as SeqFormer (the QFA teacher), so the class distributions of pairs compare
    top_k: int = 10
    embed_dim: int = 256
    mask_channels: int = 8
    backbone: ResNetConfig = field(default_factory=ResNetConfig)
    n_levels: int = 4

    @property
    def shapes(self) -> Shapes:
        """(H, W) of the 4 levels at strides 8, 16, 32, 64."""
        return level_shapes(self.height, self.width)

    @property
    def mask_hw(self) -> tuple[int, int]:
        h, w = self.shapes[0]
        return 2 * h, 2 * w

    @property
    def dynamic_params(self) -> int:
        return sum(dynamic_head_split(self.mask_channels))


OOKD_FULL = OokdConfig()
OOKD_TINY = OokdConfig(
    height=128, width=224, d_model=32, d_ffn=64, n_heads=4, n_points=2, enc_layers=1, dec_layers=2,
    num_queries=20, top_k=10, embed_dim=32, backbone=ResNetConfig(layers=(1, 1, 1, 1), width=8),
)


def _groups(d: int) -> int:
    return math.gcd(32, d)


class DeformableDecoderLayer(nn.Module):
    """Deformable DETR decoder layer: query self-attention, deformable cross-attention, FFN (post-norm)."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, reference: torch.Tensor, value: torch.Tensor,
                shapes: Shapes) -> torch.Tensor:
        """tgt, query_pos (B, Q, C); reference (B, Q, 2|4); value (B, S, C) projected memory -> (B, Q, C)."""
        qk = tgt + query_pos
        tgt = self.norm2(tgt + self.self_attn(qk, qk, tgt))
        ref = reference[:, :, None, :]  # (B, Q, 1, 2|4)
        if ref.shape[-1] == 2:
            ref = ref.expand(-1, -1, self.cross_attn.n_levels, -1)
        out = self.cross_attn.output_proj(self.cross_attn.sample(tgt + query_pos, ref, value, shapes))
        tgt = self.norm1(tgt + out)
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class DeformableDecoder(nn.Module):
    def __init__(self, num_layers: int, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableDecoderLayer(d_model, d_ffn, n_levels, n_heads, n_points) for _ in range(num_layers))

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, reference: torch.Tensor, memory: torch.Tensor,
                shapes: Shapes, bbox_embed: nn.ModuleList) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer: queries (B, Q, C) and refined boxes (B, Q, 4)."""
        hs, boxes = [], []
        for lid, layer in enumerate(self.layers):
            tgt = layer(tgt, query_pos, reference, layer.cross_attn.value_proj(memory), shapes)
            delta = bbox_embed[lid](tgt)  # (B, Q, 4)
            reference = refine_reference(reference, delta)
            hs.append(tgt)
            boxes.append(reference)
            reference = reference.detach() if self.training else reference
        return hs, boxes


class MaskBranch(nn.Module):
    """Top-down fusion of the stride 8/16/32 encoder levels into ``mask_channels`` features at stride 8."""

    def __init__(self, d: int, cm: int, shapes: Shapes) -> None:
        super().__init__()
        self.lay32 = nn.Conv2d(d, d, 3, padding=1)
        self.lay16 = nn.Conv2d(d, d, 3, padding=1)
        self.lay8 = nn.Conv2d(d, d, 3, padding=1)
        self.out = nn.Conv2d(d, cm, 1)
        (h8, w8), (h16, w16), (h32, w32) = shapes[:3]
        self.register_buffer("up16_y", nearest_index(h32, h16), persistent=False)
        self.register_buffer("up16_x", nearest_index(w32, w16), persistent=False)
        self.register_buffer("up8_y", nearest_index(h16, h8), persistent=False)
        self.register_buffer("up8_x", nearest_index(w16, w8), persistent=False)

    def forward(self, x8: torch.Tensor, x16: torch.Tensor, x32: torch.Tensor) -> torch.Tensor:
        f = F.relu(self.lay32(x32))
        f = F.relu(self.lay16(x16 + upsample_nearest(f, self.up16_y, self.up16_x)))
        f = F.relu(self.lay8(x8 + upsample_nearest(f, self.up8_y, self.up8_x)))
        return self.out(f)  # (B, Cm, H/8, W/8)


class OokdNet(nn.Module):
    """Root module of the student (all weights); ``forward`` is the ``frame`` stage."""

    def __init__(self, cfg: OokdConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.normalize = ImageNormalize(PREPROCESS)
        self.backbone = Backbone(cfg.backbone)
        self.input_proj = input_projection(self.backbone.num_channels, d, groups=_groups(d))
        self.level_embed = nn.Parameter(torch.randn(cfg.n_levels, d))
        self.encoder = DeformableEncoder(cfg.enc_layers, d, cfg.d_ffn, cfg.n_levels, cfg.n_heads, cfg.n_points, cfg.shapes)
        self.query_embed = nn.Embedding(cfg.num_queries, 2 * d)
        self.reference_points = nn.Linear(d, 2)
        nn.init.xavier_uniform_(self.reference_points.weight)
        nn.init.zeros_(self.reference_points.bias)
        self.decoder = DeformableDecoder(cfg.dec_layers, d, cfg.d_ffn, cfg.n_levels, cfg.n_heads, cfg.n_points)
        self.class_embed = nn.Linear(d, cfg.num_classes)
        nn.init.constant_(self.class_embed.bias, -math.log((1 - 0.01) / 0.01))
        self.bbox_embed = nn.ModuleList(MLP(d, d, 4, 3) for _ in range(cfg.dec_layers))
        for b in self.bbox_embed:
            nn.init.zeros_(b.layers[-1].weight)
            nn.init.zeros_(b.layers[-1].bias)
        nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
        self.embed_head = MLP(d, d, cfg.embed_dim, 2)
        self.controller = MLP(d, d, cfg.dynamic_params, 3)
        self.mask_branch = MaskBranch(d, cfg.mask_channels, cfg.shapes)
        register_position_buffers(self, cfg.shapes, d)
        register_dynamic_head_buffers(self, cfg.shapes[0], cfg.height, cfg.width)

    # ---- pieces used by the stage and by training ------------------------------------------------
    def features(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, H, W, 3) uint8 (or normalised float (B, 3, H, W)) -> memory (B, S, d), mask_feats (B, Cm, h8, w8)."""
        levels = project_levels(self.input_proj, *self.backbone(self.normalize(image)))  # (B, d, H_l, W_l)
        memory = self.encoder(flatten_levels(levels), self.pos + self.level_embed[self.level_of_token][None])
        return memory, self.mask_branch(*split_levels(memory, self.cfg.shapes[:3]))

    def decode(self, memory: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """memory (B, S, d) -> per decoder layer: queries (B, Q, d), boxes (B, Q, 4)."""
        b, d = memory.shape[0], self.cfg.d_model
        query_pos, tgt = self.query_embed.weight.split(d, dim=1)  # (Q, d) each
        query_pos, tgt = query_pos[None].expand(b, -1, -1), tgt[None].expand(b, -1, -1)
        ref = self.reference_points(query_pos).sigmoid()  # (B, Q, 2)
        return self.decoder(tgt, query_pos, ref, memory, self.cfg.shapes, self.bbox_embed)

    def dynamic_masks(self, params: torch.Tensor, centers: torch.Tensor, mask_feats: torch.Tensor) -> torch.Tensor:
        """params (B, K, P); centers (B, K, 2) in [0, 1]; mask_feats (B, Cm, h, w) -> logits (B, K, 2h, 2w)."""
        b, k, _ = params.shape
        cm, h, w = mask_feats.shape[1:]
        dc = DYNAMIC_CHANNELS
        w0, w1, w2, b0, b1, b2 = params.split(dynamic_head_split(cm), dim=-1)
        w0 = w0.reshape(b, k, dc, cm + 2)
        feats = mask_feats.reshape(b, 1, cm, h * w)  # (B, 1, Cm, HW)
        rel = ((centers * self.input_wh)[..., None] - self.locations) / COORD_SCALE  # (B, K, 2, HW)
        x = F.relu(w0[..., :2] @ rel + w0[..., 2:] @ feats + b0.reshape(b, k, dc, 1))  # (B, K, 8, HW)
        x = F.relu(w1.reshape(b, k, dc, dc) @ x + b1.reshape(b, k, dc, 1))
        x = w2.reshape(b, k, 1, dc) @ x + b2.reshape(b, k, 1, 1)  # (B, K, 1, HW)
        return self.up_y @ x.reshape(b, k, h, w) @ self.up_x_t  # (B, K, 2h, 2w) aligned bilinear x2

    def all_queries(self, image: torch.Tensor) -> dict[str, Any]:
        """Training view: every query's outputs. logits (B, Q, NC), boxes (B, Q, 4), embeds (B, Q, E),
        queries (B, Q, d), masks (B, Q, H/4, W/4), aux_logits / aux_boxes of the earlier layers."""
        memory, feats = self.features(image)
        hs, boxes = self.decode(memory)
        q = hs[-1]
        return {
            "logits": self.class_embed(q), "boxes": boxes[-1], "embeds": self.embed_head(q), "queries": q,
            "masks": self.dynamic_masks(self.controller(q), boxes[-1][..., :2], feats),
            "aux_logits": [self.class_embed(x) for x in hs[:-1]], "aux_boxes": boxes[:-1],
        }

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The ``frame`` stage: image -> logits, scores, labels (B, K), boxes (B, K, 4), embeds (B, K, E),
        masks (B, K, H/4, W/4)."""
        memory, feats = self.features(image)
        hs, boxes = self.decode(memory)
        q, box = hs[-1], boxes[-1]  # (B, Q, d), (B, Q, 4)
        best, labels = self.class_embed(q).max(-1)  # (B, Q) best class per query
        top, idx = torch.topk(best, self.cfg.top_k, dim=1)  # (B, K)
        labels = torch.gather(labels, 1, idx)
        q_k = torch.gather(q, 1, idx[..., None].expand(-1, -1, q.shape[-1]))  # (B, K, d)
        box_k = torch.gather(box, 1, idx[..., None].expand(-1, -1, 4))  # (B, K, 4)
        masks = self.dynamic_masks(self.controller(q_k), box_k[..., :2], feats)
        return top, top.sigmoid(), labels, box_k, self.embed_head(q_k), masks


class Ookd(Deployable):
    """The OOKD online student as a one-stage deployable; policy in runtime/policies/ookd.py."""

    stages = ("frame",)
    family = "ookd"

    def __init__(self, name: str = "ookd", cfg: OokdConfig = OOKD_FULL) -> None:
        self.name = name
        self.cfg = cfg
        self.net = OokdNet(cfg).eval()

    def iospec(self, name: str) -> IOSpec:
        self.check_stage(name)
        c = self.cfg
        k = c.top_k
        h4, w4 = c.mask_hw
        return IOSpec(
            model=self.name, stage=name,
            inputs=[TensorSpec("image", "uint8", ("B", c.height, c.width, 3))],
            outputs=[
                TensorSpec("logits", "float32", ("B", k)), TensorSpec("scores", "float32", ("B", k)),
                TensorSpec("labels", "int64", ("B", k)), TensorSpec("boxes", "float32", ("B", k, 4)),
                TensorSpec("embeds", "float32", ("B", k, c.embed_dim)),
                TensorSpec("masks", "float32", ("B", k, h4, w4)),
            ],
            preprocess=PREPROCESS, image_input="image", dims={"B": 1},
            tolerances={"logits": 1e-4, "scores": 1e-4, "labels": 0.0, "boxes": 1e-4, "embeds": 2e-4, "masks": 1e-3},
        )

    def policy(self, **options: Any) -> Any:
        from edgevis.runtime.policies.ookd import OokdPolicy

        return OokdPolicy(self, **options)


def ookd(name: str, tiny: bool = False, **overrides: Any) -> Ookd:
    """The full-size student (``ookd``, 360x640) or ``ookd_tiny`` (128x224), with config overrides."""
    cfg = replace(OOKD_TINY if tiny else OOKD_FULL, **overrides)
    return Ookd(name, cfg)
