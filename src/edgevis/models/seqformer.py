"""SeqFormer (Wu et al., 2021): the teacher video instance segmenter, cut into two deployable stages.

Faithful to SEEDS.md section 1 (and to the published model, so its checkpoints load unchanged):
ResNet-50 with frozen BN -> C3/C4/C5 projected to d_model by 1x1 conv + GroupNorm(32), a 4th level
by a 3x3 stride-2 conv on C5; sine position embedding + learned ``level_embed``; a 6-layer
deformable encoder (each frame attends to itself); a 6-layer decoder with 300 queries
(``query_embed`` [300, 2*d] split into position and target halves), an instance query shared by the
clip plus one box query per frame, per-frame deformable cross-attention, time-attention pooling and
per-layer box refinement; ``class_embed`` Linear(d -> 42) with sigmoid; the mask head fusing the
stride 8/16/32 encoder levels top-down (lay3, lay4, dcn, lay1, lay2) into d/32-channel features at
stride 8, a ``controller`` MLP producing the 169-parameter 3-layer dynamic 1x1 head over
[relative coords in pixels (x, y), features], and masks upsampled to stride 4 (aligned bilinear).

Deployment cut [our design]:
- stage ``frame``: image (B, H, W, 3) uint8 -> ``memory`` (B, S, d) (the frame's flattened encoder
  output, S = sum of level sizes) and ``mask_feats`` (B, d/32, H/8, W/8). The mask-feature FPN
  depends on one frame only, so it runs here once per frame instead of once per window.
- stage ``clip``: a window of T per-frame outputs (T axis) -> top-K (query x class) ``logits``,
  ``scores`` (sigmoid), ``labels``, ``queries`` (which decoder query), instance query ``embed``, per-frame ``boxes`` and mask logits,
  with TopK in the graph and the dynamic head computed only for the K winners, as batched matmuls
  (TensorRT cannot take conv weights as a graph input).
- no padding mask (letterboxed fixed input, valid ratios 1); dropout removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgevis.models.base import Deployable
from edgevis.models.blocks import ImageNormalize
from edgevis.models.deformable import (
    MLP,
    DeformableEncoder,
    SeqFormerDecoder,
    Shapes,
    flatten_levels,
    input_projection,
    project_levels,
    register_position_buffers,
    split_levels,
)
from edgevis.models.resnet import Backbone, ResNetConfig, level_shapes
from edgevis.spec import IOSpec, Preprocess, StateSpec, TensorSpec

PREPROCESS = Preprocess(size_multiple=8)
DYNAMIC_CHANNELS = 8  # hidden width of the dynamic mask head


def dynamic_head_split(mask_channels: int) -> list[int]:
    """Sizes of the dynamic 1x1 mask head's parameters (w0, w1, w2, b0, b1, b2) in a controller's output:
    Cm mask channels + 2 relative coordinates -> 8 -> 8 -> 1 (CondInst's head, SeqFormer's and OOKD's)."""
    c, d = mask_channels, DYNAMIC_CHANNELS
    return [(c + 2) * d, d * d, d, d, d, 1]


@dataclass(frozen=True)
class SeqFormerConfig:
    height: int = 360
    width: int = 640
    d_model: int = 256
    d_ffn: int = 1024
    n_heads: int = 8
    n_points: int = 4
    enc_layers: int = 6
    dec_layers: int = 6
    num_queries: int = 300
    num_classes: int = 42
    window: int = 5  # T frames per clip call
    top_k: int = 10
    backbone: ResNetConfig = field(default_factory=ResNetConfig)
    n_levels: int = 4

    @property
    def shapes(self) -> Shapes:
        """(H, W) of the 4 levels at strides 8, 16, 32, 64."""
        return level_shapes(self.height, self.width)

    @property
    def tokens(self) -> int:
        return sum(h * w for h, w in self.shapes)

    @property
    def mask_channels(self) -> int:
        return self.d_model // 32

    @property
    def mask_hw(self) -> tuple[int, int]:
        h, w = self.shapes[0]
        return 2 * h, 2 * w  # stride 4

    @property
    def dynamic_params(self) -> int:
        return sum(dynamic_head_split(self.mask_channels))  # 169 for d_model 256


SEQFORMER_R50 = SeqFormerConfig()
SEQFORMER_TINY = SeqFormerConfig(
    height=128, width=224, d_model=64, d_ffn=128, n_heads=4, n_points=2, enc_layers=2, dec_layers=2,
    num_queries=20, backbone=ResNetConfig(layers=(1, 1, 1, 1), width=8),
)


def nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """PyTorch 'nearest' source index for each output position, as a constant (exported as Gather)."""
    return torch.tensor([min(i * n_in // n_out, n_in - 1) for i in range(n_out)], dtype=torch.int64)


def upsample_nearest(x: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor) -> torch.Tensor:
    return x.index_select(-2, iy).index_select(-1, ix)


def aligned_bilinear_matrix(n: int, factor: int = 2) -> torch.Tensor:
    """(factor*n, n) matrix of CondInst's ``aligned_bilinear`` along one axis (it is separable and linear)."""
    eye = torch.eye(n)[:, None, :, None].expand(n, 1, n, 2)  # n unit signals along H
    t = F.pad(eye, (0, 1, 0, 1), mode="replicate")
    t = F.interpolate(t, size=(factor * n + 1, 2 * factor + 1), mode="bilinear", align_corners=True)
    t = F.pad(t, (factor // 2, 0, factor // 2, 0), mode="replicate")[:, :, : factor * n, :]
    return t[:, 0, :, 0].t().contiguous()  # (factor*n, n)


def register_dynamic_head_buffers(module: nn.Module, stride8: tuple[int, int], height: int, width: int) -> None:
    """The constants of a CondInst dynamic mask head on stride-8 mask features: ``locations`` (2, h8*w8)
    pixel (x, y) of each feature, ``input_wh`` (2,), and the aligned-bilinear x2 matrices ``up_y``
    (H/4, H/8) and ``up_x_t`` (W/8, W/4)."""
    h8, w8 = stride8
    ys, xs = torch.meshgrid(torch.arange(h8) * 8.0 + 4, torch.arange(w8) * 8.0 + 4, indexing="ij")
    module.register_buffer("locations", torch.stack([xs.reshape(-1), ys.reshape(-1)]), persistent=False)
    module.register_buffer("input_wh", torch.tensor([float(width), float(height)]), persistent=False)
    module.register_buffer("up_y", aligned_bilinear_matrix(h8), persistent=False)
    module.register_buffer("up_x_t", aligned_bilinear_matrix(w8).t().contiguous(), persistent=False)


class MaskHeadSmallConv(nn.Module):
    """SeqFormer's mask-feature FPN over the encoder levels at strides 8/16/32 (``fpns=None`` path)."""

    def __init__(self, dim: int, shapes: Shapes) -> None:
        super().__init__()
        self.lay1 = nn.Conv2d(dim, dim // 4, 3, padding=1)
        self.lay2 = nn.Conv2d(dim // 4, dim // 32, 3, padding=1)
        self.lay3 = nn.Conv2d(dim, dim, 3, padding=1)
        self.lay4 = nn.Conv2d(dim, dim, 3, padding=1)
        self.dcn = nn.Conv2d(dim, dim, 3, padding=1)  # a plain conv in the published model, despite the name
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)
        (h8, w8), (h16, w16), (h32, w32) = shapes[:3]
        self.register_buffer("up16_y", nearest_index(h32, h16), persistent=False)
        self.register_buffer("up16_x", nearest_index(w32, w16), persistent=False)
        self.register_buffer("up8_y", nearest_index(h16, h8), persistent=False)
        self.register_buffer("up8_x", nearest_index(w16, w8), persistent=False)

    def forward(self, x8: torch.Tensor, x16: torch.Tensor, x32: torch.Tensor) -> torch.Tensor:
        f = F.relu(self.lay3(x32))
        f = F.relu(self.lay4(x16 + upsample_nearest(f, self.up16_y, self.up16_x)))
        f = F.relu(self.dcn(x8 + upsample_nearest(f, self.up8_y, self.up8_x)))
        f = F.relu(self.lay1(f))
        return F.relu(self.lay2(f))  # (B, dim/32, H/8, W/8)


class Transformer(nn.Module):
    """``detr.transformer``: level_embed, reference_points, encoder, decoder (key names of SeqFormer)."""

    def __init__(self, cfg: SeqFormerConfig, encoder: nn.Module | None = None) -> None:
        super().__init__()
        d = cfg.d_model
        if encoder is None:  # the attention encoder (teacher) uses level_embed; a recurrent one does not
            self.level_embed = nn.Parameter(torch.randn(cfg.n_levels, d))
            encoder = DeformableEncoder(cfg.enc_layers, d, cfg.d_ffn, cfg.n_levels, cfg.n_heads, cfg.n_points, cfg.shapes)
        self.reference_points = nn.Linear(d, 2)
        nn.init.xavier_uniform_(self.reference_points.weight)
        nn.init.zeros_(self.reference_points.bias)
        self.encoder = encoder
        self.decoder = SeqFormerDecoder(cfg.dec_layers, d, cfg.d_ffn, cfg.n_levels, cfg.n_heads, cfg.n_points)


class DETR(nn.Module):
    """``detr.*``: backbone, input_proj, query_embed, class_embed, bbox_embed, transformer."""

    def __init__(self, cfg: SeqFormerConfig, encoder: nn.Module | None = None) -> None:
        super().__init__()
        d = cfg.d_model
        self.backbone = nn.ModuleList([Backbone(cfg.backbone)])
        self.input_proj = input_projection(self.backbone[0].num_channels, d, groups=32)
        self.query_embed = nn.Embedding(cfg.num_queries, 2 * d)
        self.class_embed = nn.ModuleList(nn.Linear(d, cfg.num_classes) for _ in range(cfg.dec_layers))
        self.bbox_embed = nn.ModuleList(MLP(d, d, 4, 3) for _ in range(cfg.dec_layers))
        prior = -torch.log(torch.tensor((1 - 0.01) / 0.01))
        for c in self.class_embed:
            nn.init.constant_(c.bias, float(prior))
        for b in self.bbox_embed:
            nn.init.zeros_(b.layers[-1].weight)
            nn.init.zeros_(b.layers[-1].bias)
        nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
        self.transformer = Transformer(cfg, encoder)


class SeqFormerNet(nn.Module):
    """Root module (all weights). Keys: ``detr.*``, ``controller.*``, ``mask_head.*`` as published."""

    def __init__(self, cfg: SeqFormerConfig, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.normalize = ImageNormalize(PREPROCESS)
        self.detr = DETR(cfg, encoder)
        self.controller = MLP(d, d, cfg.dynamic_params, 3)
        for layer in self.controller.layers:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.mask_head = MaskHeadSmallConv(d, cfg.shapes)
        register_position_buffers(self, cfg.shapes, d)
        register_dynamic_head_buffers(self, cfg.shapes[0], cfg.height, cfg.width)

    # ---- per frame ------------------------------------------------------------------------------
    def project(self, image: torch.Tensor) -> list[torch.Tensor]:
        """image (B, H, W, 3) uint8 BGR (or normalised float (B, 3, H, W)) -> 4 levels (B, d, H_l, W_l)."""
        return project_levels(self.detr.input_proj, *self.detr.backbone[0](self.normalize(image)))

    def split_levels(self, memory: torch.Tensor) -> list[torch.Tensor]:
        """(B, S, d) -> the 4 levels as maps (B, d, H_l, W_l)."""
        return split_levels(memory, self.cfg.shapes)

    def encode(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """The attention encoder: projected levels -> memory (B, S, d)."""
        tr = self.detr.transformer
        pos = self.pos + tr.level_embed[self.level_of_token][None]  # (1, S, d)
        return tr.encoder(flatten_levels(levels), pos)

    def mask_features(self, memory: torch.Tensor) -> torch.Tensor:
        x8, x16, x32, _ = self.split_levels(memory)
        return self.mask_head(x8, x16, x32)  # (B, d/32, H/8, W/8)

    def frame(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        memory = self.encode(self.project(image))
        return memory, self.mask_features(memory)

    # ---- per window -----------------------------------------------------------------------------
    def decode(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """memory (B, T, S, d) -> class logits (B, Q, NC), instance queries (B, Q, d),
        mask reference points (B, T, Q, 2) in [0, 1], boxes (B, T, Q, 4)."""
        b, t = memory.shape[:2]
        d = self.cfg.d_model
        detr = self.detr
        query_pos, tgt = detr.query_embed.weight.split(d, dim=1)  # (Q, d) each
        query_pos = query_pos[None].expand(b, -1, -1)
        tgt = tgt[None].expand(b, -1, -1)
        ref = detr.transformer.reference_points(query_pos).sigmoid()[:, None].expand(b, t, -1, -1)  # (B, T, Q, 2)
        hs, _, ref_in, boxes = detr.transformer.decoder(tgt, query_pos, ref, memory, self.cfg.shapes, detr.bbox_embed)
        logits = detr.class_embed[len(detr.class_embed) - 1](hs)
        return logits, hs, ref_in[..., :2], boxes

    def dynamic_masks(self, params: torch.Tensor, ref: torch.Tensor, mask_feats: torch.Tensor) -> torch.Tensor:
        """The 3-layer dynamic 1x1 head as batched matmuls.

        params (B, K, P); ref (B, T, K, 2) in [0, 1]; mask_feats (B, T, Cm, h, w) -> logits (B, K, T, 2h, 2w).
        """
        b, k, _ = params.shape
        t, cm, h, w = mask_feats.shape[1:]
        dc = DYNAMIC_CHANNELS
        w0, w1, w2, b0, b1, b2 = params.split(dynamic_head_split(cm), dim=-1)
        w0 = w0.reshape(b, 1, k, dc, cm + 2)
        feats = mask_feats.reshape(b, t, 1, cm, h * w)  # (B, T, 1, Cm, HW)
        rel = (ref * self.input_wh)[..., None] - self.locations  # (B, T, K, 2, HW), pixels (x, y)
        x = w0[..., :2] @ rel + w0[..., 2:] @ feats + b0.reshape(b, 1, k, dc, 1)  # (B, T, K, 8, HW)
        x = F.relu(x)
        x = F.relu(w1.reshape(b, 1, k, dc, dc) @ x + b1.reshape(b, 1, k, dc, 1))
        x = w2.reshape(b, 1, k, 1, dc) @ x + b2.reshape(b, 1, k, 1, 1)  # (B, T, K, 1, HW)
        x = self.up_y @ x.reshape(b, t, k, h, w) @ self.up_x_t  # (B, T, K, 2h, 2w) aligned bilinear x2
        return x.transpose(1, 2)  # (B, K, T, 2h, 2w)

    def clip(self, memory: torch.Tensor, mask_feats: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """memory (B, T, S, d), mask_feats (B, T, Cm, H/8, W/8) -> logits, scores (B, K), labels (B, K) int64,
        queries (B, K) int64 (the decoder query of each entry), embed (B, K, d), boxes (B, K, T, 4),
        masks (B, K, T, H/4, W/4) mask logits."""
        cfg = self.cfg
        logits, hs, ref, boxes = self.decode(memory)
        b, t, q = ref.shape[:3]
        top, idx = torch.topk(logits.flatten(1), cfg.top_k, dim=1)  # (B, K) over (query, class)
        query = torch.div(idx, cfg.num_classes, rounding_mode="floor")
        labels = idx - query * cfg.num_classes
        embed = torch.gather(hs, 1, query[..., None].expand(-1, -1, hs.shape[-1]))  # (B, K, d)
        qi = query[:, None, :, None]
        ref_k = torch.gather(ref, 2, qi.expand(-1, t, -1, 2))  # (B, T, K, 2)
        boxes_k = torch.gather(boxes, 2, qi.expand(-1, t, -1, 4)).transpose(1, 2)  # (B, K, T, 4)
        masks = self.dynamic_masks(self.controller(embed), ref_k, mask_feats)
        return top, top.sigmoid(), labels, query, embed, boxes_k, masks

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A whole clip (B, T, H, W, 3) in one pass, the way SeqFormer runs offline."""
        b, t = images.shape[:2]
        memory, feats = self.frame(images.flatten(0, 1))
        return self.clip(memory.unflatten(0, (b, t)), feats.unflatten(0, (b, t)))


class FrameStage(nn.Module):
    def __init__(self, net: SeqFormerNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.net.frame(image)


class ClipStage(nn.Module):
    def __init__(self, net: SeqFormerNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, memory: torch.Tensor, mask_feats: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.net.clip(memory, mask_feats)


class SeqFormer(Deployable):
    """SeqFormer as a two-stage deployable (``frame``, ``clip``); policy in runtime/policies/seqformer.py."""

    stages = ("frame", "clip")
    family = "seqformer"

    def __init__(self, name: str = "seqformer_r50", cfg: SeqFormerConfig = SEQFORMER_R50) -> None:
        self.name = name
        self.cfg = cfg
        self.net = self.build_net(cfg).eval()
        self._stages = {"frame": self.frame_stage(self.net).eval(), "clip": ClipStage(self.net).eval()}

    def build_net(self, cfg: SeqFormerConfig) -> SeqFormerNet:
        return SeqFormerNet(cfg)

    def frame_stage(self, net: SeqFormerNet) -> nn.Module:
        return FrameStage(net)

    def frame_states(self) -> list[StateSpec]:
        return []

    def iospec(self, name: str) -> IOSpec:
        self.check_stage(name)
        c = self.cfg
        d, s, cm = c.d_model, c.tokens, c.mask_channels
        h8, w8 = c.shapes[0]
        t, k = c.window, c.top_k
        if name == "frame":
            states = self.frame_states()
            return IOSpec(
                model=self.name, stage=name,
                inputs=[TensorSpec("image", "uint8", ("B", c.height, c.width, 3))],
                outputs=[TensorSpec("memory", "float32", ("B", s, d)), TensorSpec("mask_feats", "float32", ("B", cm, h8, w8))],
                states=states, preprocess=PREPROCESS, image_input="image", dims={"B": 1},
                tolerances={"memory": 2e-4, "mask_feats": 1e-3, **{st.name_out: 1e-4 for st in states}},
            )
        h4, w4 = c.mask_hw
        return IOSpec(
            model=self.name, stage=name,
            inputs=[TensorSpec("memory", "float32", ("B", t, s, d)), TensorSpec("mask_feats", "float32", ("B", t, cm, h8, w8))],
            outputs=[
                TensorSpec("logits", "float32", ("B", k)), TensorSpec("scores", "float32", ("B", k)),
                TensorSpec("labels", "int64", ("B", k)), TensorSpec("queries", "int64", ("B", k)),
                TensorSpec("embed", "float32", ("B", k, d)),
                TensorSpec("boxes", "float32", ("B", k, t, 4)), TensorSpec("masks", "float32", ("B", k, t, h4, w4)),
            ],
            dims={"B": 1},
            tolerances={"logits": 1e-4, "scores": 1e-4, "labels": 0.0, "queries": 0.0, "embed": 2e-4, "boxes": 1e-4, "masks": 2e-2},
        )

    def policy(self, **options: Any) -> Any:
        from edgevis.runtime.policies.seqformer import SeqFormerPolicy

        return SeqFormerPolicy(self, **options)

    def load_weights(self, path: str | Path) -> None:
        """An edgevis checkpoint or SeqFormer's published one (``{'model': state_dict}``), see checkpoints.py."""
        from edgevis.models.checkpoints import load_seqformer_weights

        load_seqformer_weights(self, path)


def seqformer(name: str, tiny: bool = False, **overrides: Any) -> SeqFormer:
    cfg = replace(SEQFORMER_TINY if tiny else SEQFORMER_R50, **overrides)
    with torch.random.fork_rng(devices=[]):  # untrained weights are reproducible (same ONNX fingerprint per build)
        torch.manual_seed(0)
        return SeqFormer(name, cfg)
