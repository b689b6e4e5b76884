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
import torch.nn.functional as F
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

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each (C,): ``bn(x) = x * scale + shift``."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()  # (C,)
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not eager_inference():
            scale, shift = self.scale_shift()
            return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        scale, shift = self._cached(None)
        return torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1))  # one pass, no temporaries

    def folded(self, conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
        """``conv``'s weight and bias with this BN folded in: ``conv2d(x, *folded) == bn(conv(x))`` up to
        float rounding (TensorRT and onnxruntime fold it the same way when they build)."""
        return self._cached(conv)

    def _cached(self, conv: nn.Conv2d | None) -> tuple[torch.Tensor, torch.Tensor]:
        """scale/shift (``conv`` None) or the folded conv, recomputed only when a buffer or the conv's
        weight changed (version counters: load_state_dict and optimizers write in place)."""
        tensors = [self.weight, self.bias, self.running_mean, self.running_var]
        if conv is not None:
            tensors += [conv.weight] + ([conv.bias] if conv.bias is not None else [])
        try:
            key = tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
        except RuntimeError:  # inference tensors carry no version counter: no cache
            key = None
        cache = self.__dict__.setdefault("_fold_cache", {})
        slot = id(conv) if conv is not None else None
        hit = cache.get(slot)
        if key is not None and hit is not None and hit[0] == key:
            return hit[1]
        scale, shift = self.scale_shift()
        if conv is None:
            value = (scale, shift)
        else:
            w = conv.weight * scale.view(-1, 1, 1, 1)  # (Cout, Cin, k, k)
            value = (w, shift if conv.bias is None else shift + conv.bias * scale)
        if key is not None:
            cache[slot] = (key, value)
        return value


def eager_inference() -> bool:
    """True in eager PyTorch without autograd: not training, tracing, exporting or compiling. There the
    frozen BatchNorms fold into their convs (:func:`conv_bn`) and the stem pool takes its fast form;
    graphs (ONNX, torch.export) keep the plain ops, which TensorRT and onnxruntime fuse themselves.
    The TorchScript ONNX exporter traces (``jit.is_tracing``) and the dynamo one exports
    (``compiler.is_exporting``/``is_compiling``), so ``torch.onnx.is_in_onnx_export`` (1.3 us a call,
    the rest together 0.25 us; this runs per conv) is not asked."""
    return not (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling()
                or torch.compiler.is_exporting())


def conv_bn(conv: nn.Conv2d, bn: FrozenBatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))``; in eager inference one conv with the BN folded into its weight and bias."""
    if conv.padding_mode != "zeros" or not eager_inference():
        return bn(conv(x))
    w, b = bn.folded(conv)
    return F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)


def max_pool_3x3s2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 3, stride=2, padding=1)``, the ResNet stem pool, with the same values.

    In eager inference it is computed as pairwise maxima of strided views (rows, then columns): torch's
    CPU max_pool2d takes 2.5-5x longer on this shape (a (1, 64, 240, 432) stem map: 28 ms vs 5-6 ms on
    2 cores). Graphs keep MaxPool."""
    if not eager_inference() or x.is_cuda:
        return F.max_pool2d(x, 3, stride=2, padding=1)
    h, w = x.shape[-2:]
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    xp = F.pad(x, (1, 2 * wo + 1 - w, 1, 2 * ho + 1 - h), value=float("-inf"))  # (..., 2ho+2, 2wo+2)
    v = xp.unflatten(-2, (ho + 1, 2))  # output row i reads padded rows 2i, 2i+1, 2i+2
    r = torch.maximum(v[..., :ho, 0, :], v[..., :ho, 1, :])
    torch.maximum(r, v[..., 1:, 0, :], out=r)  # (..., ho, 2wo+2)
    u = r.unflatten(-1, (wo + 1, 2))
    y = torch.maximum(u[..., :wo, 0], u[..., :wo, 1])
    return torch.maximum(y, u[..., 1:, 0], out=y)  # (..., ho, wo)


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
        idt = x if self.downsample is None else conv_bn(self.downsample[0], self.downsample[1], x)
        y = self.relu(conv_bn(self.conv1, self.bn1, x))
        if conv is None:
            y = self.relu(conv_bn(self.conv2, self.bn2, y))
        else:
            y = self.relu(self.bn2(conv(prefix + "conv2", self.conv2, y)))
        return self.relu(conv_bn(self.conv3, self.bn3, y) + idt)


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
        cin = w
        for i, n in enumerate(cfg.layers):
            width = w * 2**i
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(cin, width, stride=(2 if (i > 0 and j == 0) else 1)))
                cin = width * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = max_pool_3x3s2(self.relu(conv_bn(self.conv1, self.bn1, x)))  # (B, w, H/4, W/4)
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
