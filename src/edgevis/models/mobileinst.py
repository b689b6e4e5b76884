"""MobileInst: video instance segmentation for mobile CPUs (after Zhang et al., AAAI 2024), for edgevis.

- backbone: TopFormer (models/topformer.py) -> X3, X4, X5 (strides 8/16/32) and global tokens X6 (stride 64);
- semantic-enhanced mask decoder: X6 injected at stride 32 (``relu(bn(conv(x_l))) * relu(bn(conv(x_g))) +
  g-branch``), top-down then bottom-up fusion, coordinates, -> X_mask (mask_dim channels, stride 8);
- dual-transformer instance decoder: learned queries; stage 1 cross-attends to X6, stage 2 to X_mask
  max-pooled to stride 64; each stage: cross-attention, self-attention, FFN, LayerNorms;
- heads: class logits, objectness, mask kernel; masks = kernel @ X_mask (stride 8).

Stages (the runner policy runs ``key`` only on key frames and reuses kernels in between):
  ``frame``: image (B, H, W, 3) uint8 BGR -> x_mask (B, Dm, H/8, W/8), x6 (B, Dg, H/64, W/64)
  ``key``:   x_mask, x6 -> kernels (B, Q, Dm), logits (B, Q, C), objectness (B, Q)
  ``mask``:  kernels, x_mask -> masks (B, Q, H/8, W/8) mask logits
Class index c is category id c + 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgevis.errors import EdgevisError
from edgevis.models.base import Deployable
from edgevis.models.blocks import ImageNormalize
from edgevis.models.topformer import TOPFORMER_B, TOPFORMER_TINY, ConvBN, TopFormer, TopFormerConfig
from edgevis.spec import IOSpec, Preprocess, TensorSpec

PREPROCESS = Preprocess(size_multiple=64)
STAGES = ("frame", "key", "mask")


@dataclass(frozen=True)
class MobileInstConfig:
    backbone: TopFormerConfig
    height: int
    width: int
    num_classes: int
    queries: int = 100
    dim: int = 256  # query width
    heads: int = 8
    ffn: int = 512
    mask_dim: int = 128  # X_mask channels = kernel length
    decoder_width: int = 128  # mask decoder width

    def __post_init__(self) -> None:
        if self.height % 64 or self.width % 64:
            raise EdgevisError(
                f"MobileInst input size {self.height}x{self.width} is not a multiple of 64; expected H and W "
                f"divisible by 64 (fixed pools to stride 64), e.g. {64 * max(1, round(self.height / 64))}x"
                f"{64 * max(1, round(self.width / 64))}; frames of any size are letterboxed into it"
            )


CONFIGS: dict[str, MobileInstConfig] = {
    "mobileinst": MobileInstConfig(TOPFORMER_B, 384, 640, num_classes=40),
    "mobileinst_tiny": MobileInstConfig(TOPFORMER_TINY, 192, 320, num_classes=5, queries=50, dim=128, heads=4,
                                        ffn=256, mask_dim=64, decoder_width=64),
}


def sine_positions(h: int, w: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """(h*w, dim) 2-D sine/cosine position code of a row-major h x w grid (static sizes -> a constant)."""
    quarter = dim // 4
    freq = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter))  # (dim/4,)
    ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h * 2 * math.pi
    xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w * 2 * math.pi
    py = ys[:, None] * freq[None]  # (h, dim/4)
    px = xs[:, None] * freq[None]  # (w, dim/4)
    py = torch.cat([py.sin(), py.cos()], 1)[:, None, :].expand(h, w, 2 * quarter)
    px = torch.cat([px.sin(), px.cos()], 1)[None, :, :].expand(h, w, 2 * quarter)
    return torch.cat([py, px], -1).reshape(h * w, 4 * quarter)  # (h*w, dim)


def coord_maps(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """(1, 2, h, w) x and y in [-1, 1] at pixel centres."""
    ys = torch.linspace(-1.0, 1.0, h, device=device)
    xs = torch.linspace(-1.0, 1.0, w, device=device)
    return torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)])[None]


class SepConv(nn.Sequential):
    """Depthwise 3x3 (optionally strided) + pointwise, BN + ReLU after each."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(ConvBN(cin, cin, 3, stride, groups=cin, act=True), ConvBN(cin, cout, 1, act=True))


class SemanticEnhancer(nn.Module):
    """relu(bn(conv1x1(x_l))) * relu(bn(conv1x1(x_g))) + relu(bn(conv1x1(x_g))) (g-branch), x_g upsampled."""

    def __init__(self, local_dim: int, global_dim: int, out: int) -> None:
        super().__init__()
        self.local = ConvBN(local_dim, out, act=True)
        self.gate = ConvBN(global_dim, out, act=True)
        self.branch = ConvBN(global_dim, out, act=True)

    def forward(self, x_l: torch.Tensor, x_g: torch.Tensor) -> torch.Tensor:
        size = (int(x_l.shape[-2]), int(x_l.shape[-1]))
        gate = F.interpolate(self.gate(x_g), size=size, mode="bilinear", align_corners=False)
        branch = F.interpolate(self.branch(x_g), size=size, mode="bilinear", align_corners=False)
        return self.local(x_l) * gate + branch


def _up(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=(int(ref.shape[-2]), int(ref.shape[-1])), mode="bilinear", align_corners=False)


class MaskDecoder(nn.Module):
    def __init__(self, inject_dim: int, global_dim: int, width: int, mask_dim: int) -> None:
        super().__init__()
        self.enhance = SemanticEnhancer(inject_dim, global_dim, width)
        self.lat4 = ConvBN(inject_dim, width)
        self.lat3 = ConvBN(inject_dim, width)
        self.td4, self.td3 = SepConv(width, width), SepConv(width, width)
        self.down3, self.down4 = SepConv(width, width, 2), SepConv(width, width, 2)
        self.bu4, self.bu5 = SepConv(width, width), SepConv(width, width)
        self.fuse = SepConv(width + 2, width)
        self.out = nn.Conv2d(width, mask_dim, 1)

    def forward(self, x3: torch.Tensor, x4: torch.Tensor, x5: torch.Tensor, x6: torch.Tensor) -> torch.Tensor:
        p5 = self.enhance(x5, x6)  # (B, W, H/32, W/32)
        p4 = self.td4(self.lat4(x4) + _up(p5, x4))  # (B, W, H/16, W/16)
        p3 = self.td3(self.lat3(x3) + _up(p4, x3))  # (B, W, H/8, W/8)
        n4 = self.bu4(p4 + self.down3(p3))
        n5 = self.bu5(p5 + self.down4(n4))
        f = p3 + _up(n4, p3) + _up(n5, p3)
        h, w = int(f.shape[-2]), int(f.shape[-1])
        coords = coord_maps(h, w, f.device).expand(f.shape[0], 2, h, w)
        return self.out(self.fuse(torch.cat([f, coords], 1)))  # (B, Dm, H/8, W/8)


class MHA(nn.Module):
    """Multi-head attention written with matmul/softmax (exports to plain ONNX ops)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, nq, d = q.shape
        nk = k.shape[1]
        qh = self.q(q).reshape(b, nq, self.heads, self.hd).transpose(1, 2)  # (B, h, Nq, hd)
        kh = self.k(k).reshape(b, nk, self.heads, self.hd).permute(0, 2, 3, 1)  # (B, h, hd, Nk)
        vh = self.v(v).reshape(b, nk, self.heads, self.hd).transpose(1, 2)  # (B, h, Nk, hd)
        attn = torch.softmax(torch.matmul(qh, kh) * (self.hd**-0.5), dim=-1)  # (B, h, Nq, Nk)
        return self.o(torch.matmul(attn, vh).transpose(1, 2).reshape(b, nq, d))


class DecoderStage(nn.Module):
    """Cross-attention to a feature map, self-attention among queries, FFN; post-LayerNorm after each."""

    def __init__(self, dim: int, mem_dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.mem = nn.Linear(mem_dim, dim)
        self.cross, self.norm1 = MHA(dim, heads), nn.LayerNorm(dim)
        self.self_attn, self.norm2 = MHA(dim, heads), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(inplace=True), nn.Linear(ffn, dim))
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, q: torch.Tensor, qpos: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        h, w = int(feat.shape[-2]), int(feat.shape[-1])
        mem = self.mem(feat.flatten(2).transpose(1, 2))  # (B, h*w, D)
        pos = sine_positions(h, w, mem.shape[-1], mem.device)[None]  # (1, h*w, D)
        q = self.norm1(q + self.cross(q + qpos, mem + pos, mem))
        qq = q + qpos
        q = self.norm2(q + self.self_attn(qq, qq, q))
        return self.norm3(q + self.ffn(q))


class InstanceDecoder(nn.Module):
    def __init__(self, cfg: MobileInstConfig) -> None:
        super().__init__()
        self.query = nn.Embedding(cfg.queries, cfg.dim)
        self.query_pos = nn.Embedding(cfg.queries, cfg.dim)
        self.global_stage = DecoderStage(cfg.dim, cfg.backbone.global_dim, cfg.heads, cfg.ffn)
        self.local_stage = DecoderStage(cfg.dim, cfg.mask_dim, cfg.heads, cfg.ffn)
        self.cls = nn.Linear(cfg.dim, cfg.num_classes)
        self.obj = nn.Linear(cfg.dim, 1)
        self.kernel = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.ReLU(inplace=True), nn.Linear(cfg.dim, cfg.mask_dim))
        prior = -math.log((1 - 0.01) / 0.01)  # focal-loss prior: sigmoid = 0.01 at init
        nn.init.constant_(self.cls.bias, prior)
        nn.init.constant_(self.obj.bias, prior)

    def forward(self, x_mask: torch.Tensor, x6: torch.Tensor, passed: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> kernels (B, Q, Dm), logits (B, Q, C), objectness (B, Q), stage-1 queries (B, Q, D).

        ``passed`` (training only, temporal query passing): stage-1 queries of another frame that feed
        stage 2 instead of this frame's own.
        """
        b = x6.shape[0]
        # repeat (a copy), not a view of the parameter: module hooks (FlopCounterMode) need a grad_fn on inputs
        q0 = self.query.weight.unsqueeze(0).repeat(b, 1, 1)  # (B, Q, D)
        qpos = self.query_pos.weight.unsqueeze(0).repeat(b, 1, 1)  # (B, Q, D)
        q1 = self.global_stage(q0, qpos, x6)  # stage 1 on X6
        pooled = F.max_pool2d(x_mask, 8, 8)  # (B, Dm, H/64, W/64)
        q2 = self.local_stage(q1 if passed is None else passed, qpos, pooled)  # stage 2 on max-pooled X_mask
        return self.kernel(q2), self.cls(q2), self.obj(q2).squeeze(-1), q1


def kernel_masks(kernels: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
    """kernels (B, Q, Dm) x X_mask (B, Dm, h, w) -> mask logits (B, Q, h, w)."""
    b, dm, h, w = x_mask.shape
    return torch.matmul(kernels, x_mask.reshape(b, dm, h * w)).reshape(b, kernels.shape[1], h, w)


class MobileInstNet(nn.Module):
    """The root module holding every weight; the three stage modules call into it."""

    def __init__(self, cfg: MobileInstConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.normalize = ImageNormalize(PREPROCESS)
        self.backbone = TopFormer(cfg.backbone)
        self.mask_decoder = MaskDecoder(cfg.backbone.inject_dim, cfg.backbone.global_dim, cfg.decoder_width,
                                        cfg.mask_dim)
        self.decoder = InstanceDecoder(cfg)

    def features(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, H, W, 3) BGR or normalised float (B, 3, H, W) -> X_mask (B, Dm, H/8, W/8), X6."""
        x = self.normalize(image)  # (B, 3, H, W)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if h % 64 or w % 64:
            raise EdgevisError(f"MobileInst input {h}x{w} is not a multiple of 64; letterbox frames with "
                               "edgevis.runtime.preprocess.prepare to the model's input size")
        x3, x4, x5, x6 = self.backbone(x)
        return self.mask_decoder(x3, x4, x5, x6), x6

    def forward(self, image: torch.Tensor, passed: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training / per-frame path: all outputs of one frame batch."""
        x_mask, x6 = self.features(image)
        kernels, logits, obj, q1 = self.decoder(x_mask, x6, passed)
        return {"masks": kernel_masks(kernels, x_mask), "logits": logits, "objectness": obj, "queries": q1,
                "kernels": kernels}


class _FrameStage(nn.Module):
    def __init__(self, net: MobileInstNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.features(image)


class _KeyStage(nn.Module):
    def __init__(self, net: MobileInstNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x_mask: torch.Tensor, x6: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kernels, logits, obj, _ = self.net.decoder(x_mask, x6)
        return kernels, logits, obj


class _MaskStage(nn.Module):
    def __init__(self, net: MobileInstNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, kernels: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        return kernel_masks(kernels, x_mask)


class MobileInst(Deployable):
    stages = STAGES

    def __init__(self, name: str = "mobileinst", cfg: MobileInstConfig | None = None) -> None:
        self.name = name
        self.cfg = cfg or CONFIGS[name]
        self.net = MobileInstNet(self.cfg).eval()
        self._stages = {"frame": _FrameStage(self.net), "key": _KeyStage(self.net), "mask": _MaskStage(self.net)}

    def iospec(self, name: str) -> IOSpec:
        self.check_stage(name)
        c = self.cfg
        h8, w8, h64, w64 = c.height // 8, c.width // 8, c.height // 64, c.width // 64
        x_mask = TensorSpec("x_mask", "float32", ("B", c.mask_dim, h8, w8))
        x6 = TensorSpec("x6", "float32", ("B", c.backbone.global_dim, h64, w64))
        kernels = TensorSpec("kernels", "float32", ("B", c.queries, c.mask_dim))
        if name == "frame":
            ins, outs = [TensorSpec("image", "uint8", ("B", c.height, c.width, 3))], [x_mask, x6]
            tol = {"x_mask": 2e-3, "x6": 2e-3}
        elif name == "key":
            ins = [x_mask, x6]
            outs = [kernels, TensorSpec("logits", "float32", ("B", c.queries, c.num_classes)),
                    TensorSpec("objectness", "float32", ("B", c.queries))]
            tol = {"kernels": 2e-3, "logits": 2e-3, "objectness": 2e-3}
        else:
            ins, outs = [kernels, x_mask], [TensorSpec("masks", "float32", ("B", c.queries, h8, w8))]
            tol = {"masks": 5e-3}
        return IOSpec(model=self.name, stage=name, inputs=ins, outputs=outs,
                      preprocess=PREPROCESS if name == "frame" else None,
                      image_input="image" if name == "frame" else None, dims={"B": 1}, tolerances=tol)

    def policy(self, **options: Any) -> Any:
        from edgevis.runtime.policies.mobileinst import MobileInstPolicy

        return MobileInstPolicy(self, **options)
