"""ResNet with frozen BatchNorm, laid out like torchvision's so published checkpoints load unchanged.

Used by SeqFormer (``detr.backbone.0.body.*`` keys), and reusable by other families (OOKD student,
SpVOS). Parameter names follow torchvision: ``conv1, bn1, layer1..layer4`` with blocks
``{i}.conv1/bn1/conv2/bn2/conv3/bn3/downsample.{0,1}``; no ``fc``/``avgpool`` (the body of
``IntermediateLayerGetter``). :class:`FrozenBatchNorm2d` keeps the four buffers ``weight, bias,
running_mean, running_var`` (no ``num_batches_tracked``) and folds them into one affine op.

``ResNetConfig(layers=(3, 4, 6, 3), width=64)`` is ResNet-50. Tiny variants shrink ``layers`` and
``width`` (e.g. ``(1, 1, 1, 1)``, 8) and keep the same block structure and strides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgevis.errors import EdgevisError


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (buffers, never trained).

    ``KEEP_COUNT`` (class attribute): also hold ``num_batches_tracked`` as a buffer, for checkpoint
    layouts that carry it (STCN's); otherwise that key is dropped when a checkpoint has it."""

    KEEP_COUNT = False

    def __init__(self, n: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))
        if self.KEEP_COUNT:
            self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if not self.KEEP_COUNT:
            state_dict.pop(prefix + "num_batches_tracked", None)  # checkpoints saved from a plain BatchNorm2d
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()  # (C,)
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


class Bottleneck(nn.Module):
    """torchvision ResNet v1.5 bottleneck (stride on the 3x3 conv). ``BN``: its frozen BatchNorm class
    (STCN's blocks use the variant that keeps ``num_batches_tracked``)."""

    expansion = 4
    BN: type[FrozenBatchNorm2d] = FrozenBatchNorm2d

    def __init__(self, cin: int, width: int, stride: int = 1, expansion: int | None = None) -> None:
        super().__init__()
        cout = width * (self.expansion if expansion is None else expansion)
        bn = self.BN
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = bn(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)  # stride on the 3x3 (v1.5)
        self.bn2 = bn(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), bn(cout))

    def forward(self, x: torch.Tensor, conv: Callable | None = None, prefix: str = "") -> torch.Tensor:
        """``conv``: an optional runner ``(name, conv, x) -> y`` for the 3x3 conv, named ``prefix + "conv2"``
        (SpVOS runs it as a triple-gated sparse conv)."""
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.conv2(y) if conv is None else conv(prefix + "conv2", self.conv2, y)
        y = self.relu(self.bn2(y))
        return self.relu(self.bn3(self.conv3(y)) + idt)


@dataclass(frozen=True)
class ResNetConfig:
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)  # ResNet-50
    width: int = 64  # channels of the stem and of layer1's bottleneck

    @property
    def channels(self) -> tuple[int, int, int, int]:
        """Output channels of layer1..layer4 (C2..C5)."""
        return tuple(self.width * (2**i) * Bottleneck.expansion for i in range(4))  # type: ignore[return-value]


class ResNetBody(nn.Module):
    """Stem + layer1..layer4; ``forward`` returns C3, C4, C5 (strides 8, 16, 32), optionally C2 too."""

    def __init__(self, cfg: ResNetConfig = ResNetConfig()) -> None:
        super().__init__()
        if len(cfg.layers) != 4 or min(cfg.layers) < 1 or cfg.width < 1:
            raise EdgevisError(f"ResNetConfig: layers={cfg.layers}, width={cfg.width}; expected 4 block counts >= 1 and width >= 1")
        self.cfg = cfg
        w = cfg.width
        self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = w
        for i, n in enumerate(cfg.layers):
            width = w * 2**i
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(cin, width, stride=(2 if (i > 0 and j == 0) else 1)))
                cin = width * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, w, H/4, W/4)
        c2 = self.layer1(x)  # (B, 4w, H/4, W/4)
        c3 = self.layer2(c2)  # (B, 8w, H/8, W/8)
        c4 = self.layer3(c3)  # (B, 16w, H/16, W/16)
        c5 = self.layer4(c4)  # (B, 32w, H/32, W/32)
        return [c3, c4, c5]


class Backbone(nn.Module):
    """``body`` = the ResNet; matches the ``backbone.0.body.*`` key prefix of DETR-family checkpoints."""

    def __init__(self, cfg: ResNetConfig = ResNetConfig()) -> None:
        super().__init__()
        self.body = ResNetBody(cfg)

    @property
    def num_channels(self) -> tuple[int, int, int]:
        """Channels of C3, C4, C5."""
        return self.body.cfg.channels[1:]  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)


def conv_out(size: int, stride_steps: int) -> int:
    """Spatial size after ``stride_steps`` stride-2 convs/pools with padding (ceil division each step)."""
    for _ in range(stride_steps):
        size = (size + 1) // 2
    return size


def level_shapes(height: int, width: int) -> tuple[tuple[int, int], ...]:
    """(H, W) of the 4 feature levels at strides 8, 16, 32, 64 (C3, C4, C5 and the extra stride-2 level)."""
    return tuple((conv_out(height, k), conv_out(width, k)) for k in (3, 4, 5, 6))
