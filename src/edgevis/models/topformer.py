"""TopFormer backbone (token pyramid + pooled global transformer + semantic injection), export-friendly.

Structure after TopFormer (Zhang et al., CVPR 2022), written for edgevis:

- a token pyramid of MobileNetV2 inverted residual blocks gives local tokens at strides 4/8/16/32;
- every level is average-pooled to stride 64 with a FIXED kernel (64 / stride, the input must be a
  multiple of 64), concatenated, and refined by transformer blocks (1x1-conv attention, conv MLP);
- injection modules fuse each local level with its slice of the global tokens:
  ``local * hsigmoid(act(global)) + embed(global)`` (global upsampled to the local size).

``TopFormer.forward(x)`` returns ``(X3, X4, X5, X6)``: three injected maps of ``inject_dim`` channels
at strides 8/16/32 and the global tokens at stride 64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TopFormerConfig:
    # (kernel, expand ratio, out channels, stride) per inverted residual block, after a stride-2 stem
    blocks: tuple[tuple[int, int, int, int], ...]
    stem: int
    out_indices: tuple[int, ...]  # blocks whose outputs are the stride 4/8/16/32 tokens
    depth: int = 4  # transformer blocks on the pooled tokens
    key_dim: int = 16
    heads: int = 8
    attn_ratio: int = 2
    mlp_ratio: int = 2
    inject_dim: int = 256

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.blocks[i][2] for i in self.out_indices)

    @property
    def global_dim(self) -> int:
        return sum(self.channels)


# TopFormer-B: token channels 32/64/128/160, 384 global channels, 4 blocks of 8 heads, 256-d injection
TOPFORMER_B = TopFormerConfig(
    blocks=((3, 1, 16, 1), (3, 4, 32, 2), (3, 3, 32, 1), (5, 3, 64, 2), (5, 3, 64, 1), (3, 3, 128, 2),
            (3, 3, 128, 1), (5, 6, 160, 2), (5, 6, 160, 1), (3, 6, 160, 1)),
    stem=16, out_indices=(2, 4, 6, 9),
)
# a narrow, shallow variant for tests, CPU training and the demo (232 global channels, 2 blocks)
TOPFORMER_TINY = TopFormerConfig(
    blocks=((3, 1, 16, 1), (3, 4, 24, 2), (5, 3, 48, 2), (3, 3, 64, 2), (5, 4, 96, 2)),
    stem=16, out_indices=(1, 2, 3, 4), depth=2, heads=4, inject_dim=96,
)


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = False) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, expand: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [ConvBN(cin, hidden, 1, act=True)]
        layers += [ConvBN(hidden, hidden, k, stride, groups=hidden, act=True), ConvBN(hidden, cout, 1)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class Attention(nn.Module):
    """Multi-head attention over the pixels of a (B, C, h, w) map, with 1x1 conv projections."""

    def __init__(self, dim: int, key_dim: int, heads: int, attn_ratio: int) -> None:
        super().__init__()
        self.heads, self.key_dim, self.d = heads, key_dim, key_dim * attn_ratio
        self.scale = key_dim**-0.5
        self.q = ConvBN(dim, key_dim * heads)
        self.k = ConvBN(dim, key_dim * heads)
        self.v = ConvBN(dim, self.d * heads)
        self.proj = nn.Sequential(nn.ReLU6(), ConvBN(self.d * heads, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.q(x).reshape(b, self.heads, self.key_dim, h * w).transpose(2, 3)  # (B, nh, N, kd)
        k = self.k(x).reshape(b, self.heads, self.key_dim, h * w)  # (B, nh, kd, N)
        v = self.v(x).reshape(b, self.heads, self.d, h * w).transpose(2, 3)  # (B, nh, N, d)
        attn = torch.softmax(torch.matmul(q, k) * self.scale, dim=-1)  # (B, nh, N, N)
        out = torch.matmul(attn, v).transpose(2, 3).reshape(b, self.heads * self.d, h, w)  # (B, nh*d, h, w)
        return self.proj(out)


class ConvMlp(nn.Module):
    def __init__(self, dim: int, ratio: int) -> None:
        super().__init__()
        hidden = dim * ratio
        self.fc1 = ConvBN(dim, hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.ReLU6()
        self.fc2 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dw(self.fc1(x))))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, cfg: TopFormerConfig) -> None:
        super().__init__()
        self.attn = Attention(dim, cfg.key_dim, cfg.heads, cfg.attn_ratio)
        self.mlp = ConvMlp(dim, cfg.mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class Injection(nn.Module):
    """Semantic injection: local * hsigmoid(act(global)) + embed(global), global upsampled to local size."""

    def __init__(self, local_dim: int, global_dim: int, out: int) -> None:
        super().__init__()
        self.local = ConvBN(local_dim, out)
        self.embed = ConvBN(global_dim, out)
        self.act = ConvBN(global_dim, out)

    def forward(self, x_l: torch.Tensor, x_g: torch.Tensor) -> torch.Tensor:
        size = (int(x_l.shape[-2]), int(x_l.shape[-1]))
        act = F.interpolate(F.hardsigmoid(self.act(x_g)), size=size, mode="bilinear", align_corners=False)
        emb = F.interpolate(self.embed(x_g), size=size, mode="bilinear", align_corners=False)
        return self.local(x_l) * act + emb


class TopFormer(nn.Module):
    STRIDES = (4, 8, 16, 32)

    def __init__(self, cfg: TopFormerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = ConvBN(3, cfg.stem, 3, 2, act=True)
        layers, cin = [], cfg.stem
        for k, t, c, s in cfg.blocks:
            layers.append(InvertedResidual(cin, c, k, t, s))
            cin = c
        self.layers = nn.ModuleList(layers)
        self.trans = nn.Sequential(*[TransformerBlock(cfg.global_dim, cfg) for _ in range(cfg.depth)])
        self.inject = nn.ModuleList(Injection(c, c, cfg.inject_dim) for c in cfg.channels[1:])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) normalised, H and W multiples of 64 -> X3, X4, X5 (B, inject_dim, H/s, W/s), X6."""
        x = self.stem(x)  # (B, stem, H/2, W/2)
        tokens = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.cfg.out_indices:
                tokens.append(x)
        # fixed pools to stride 64 (kernel = stride = 64 / level stride): no adaptive pooling in the graph
        pooled = [F.avg_pool2d(t, 64 // s, 64 // s) for t, s in zip(tokens, self.STRIDES)]
        x6 = self.trans(torch.cat(pooled, 1))  # (B, global_dim, H/64, W/64)
        globals_ = torch.split(x6, list(self.cfg.channels), dim=1)
        x3, x4, x5 = (inj(tokens[i + 1], globals_[i + 1]) for i, inj in enumerate(self.inject))
        return x3, x4, x5, x6
