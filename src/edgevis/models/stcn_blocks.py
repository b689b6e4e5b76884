"""STCN building blocks (ResNet with frozen BN, ResBlock, CBAM, fusion, decoder), sizes configurable.

Attribute names follow STCN's published checkpoint layout so ``state_dict`` keys are the official
ones (``key_encoder.res2.0.conv1.weight``, ``value_encoder.fuser.attention.ChannelGate.mlp.1.weight``,
``decoder.up_16_8.skip_conv.weight`` ...). The key encoder's 3x3 convs can run as triple-gated sparse
convolutions (``edgevis.plugins.sparse_conv``) with explicit caches: :meth:`KeyEncoder.forward` takes a
list of ``(x0, y0)`` tensors, one pair per sparse conv in :meth:`KeyEncoder.sparse_convs` order, and
returns the updated list. The weights stay in plain ``nn.Conv2d`` modules, so dense and sparse
variants load the same checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgevis.models import resnet

# A conv runner: (name, conv, x) -> y. Dense: conv(x); sparse: the triple-gated conv with caches.
ConvFn = Callable[[str, nn.Conv2d, torch.Tensor], torch.Tensor]


def dense_conv(name: str, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return conv(x)


class FrozenBatchNorm2d(resnet.FrozenBatchNorm2d):
    """BatchNorm with fixed statistics and affine parameters (STCN trains with frozen BN statistics).

    Holds ``weight``, ``bias``, ``running_mean``, ``running_var`` and ``num_batches_tracked`` as
    buffers (the keys of a torchvision BatchNorm2d), so checkpoints load unchanged.
    """

    KEEP_COUNT = True


class Bottleneck(resnet.Bottleneck):
    """torchvision ResNet v1.5 bottleneck with STCN's frozen BatchNorm (``num_batches_tracked`` kept)."""

    BN = FrozenBatchNorm2d


class BasicBlock(nn.Module):
    """torchvision ResNet-18 basic block."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, expansion: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = FrozenBatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(planes)
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                         FrozenBatchNorm2d(planes)) if stride != 1 or inplanes != planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = F.relu(resnet.conv_bn(self.conv1, self.bn1, x))
        r = resnet.conv_bn(self.conv2, self.bn2, r)
        idt = x if self.downsample is None else resnet.conv_bn(self.downsample[0], self.downsample[1], x)
        return F.relu(r + idt)


def make_layer(block: type, inplanes: int, planes: int, blocks: int, stride: int, expansion: int = 1) -> nn.Sequential:
    layers = [block(inplanes, planes, stride, expansion)]
    layers += [block(planes * expansion, planes, 1, expansion) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class KeyEncoder(nn.Module):
    """ResNet-50 up to layer3 (STCN names layer1 ``res2``): image -> f16, f8, f4."""

    def __init__(self, stem: int = 64, widths: Sequence[int] = (64, 128, 256), blocks: Sequence[int] = (3, 4, 6),
                 expansion: int = 4, stem_kernel: int = 7) -> None:
        super().__init__()
        e = expansion
        self.conv1 = nn.Conv2d(3, stem, stem_kernel, stride=2, padding=stem_kernel // 2, bias=False)
        self.bn1 = FrozenBatchNorm2d(stem)
        self.res2 = make_layer(Bottleneck, stem, widths[0], blocks[0], 1, e)
        self.layer2 = make_layer(Bottleneck, widths[0] * e, widths[1], blocks[1], 2, e)
        self.layer3 = make_layer(Bottleneck, widths[1] * e, widths[2], blocks[2], 2, e)
        self.channels = (widths[0] * e, widths[1] * e, widths[2] * e)  # f4, f8, f16

    @property
    def sparse_stem(self) -> bool:
        """A 3x3 stem (tiny variants) may run sparse; ResNet-50's 7x7 stem always runs dense."""
        return self.conv1.kernel_size[0] == 3

    def sparse_convs(self) -> list[tuple[str, nn.Conv2d]]:
        """The 3x3 convs that may run sparse, in call order (name relative to this module)."""
        out = [("conv1", self.conv1)] if self.sparse_stem else []
        for lname in ("res2", "layer2", "layer3"):
            for i, blk in enumerate(getattr(self, lname)):
                out.append((f"{lname}.{i}.conv2", blk.conv2))
        return out

    def forward(self, x: torch.Tensor, conv: ConvFn = dense_conv) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # ``conv`` runs only the sparse_convs(); every other conv folds its BatchNorm in eager inference
        dense = conv is dense_conv
        if dense or not self.sparse_stem:
            x = resnet.conv_bn(self.conv1, self.bn1, x)
        else:
            x = self.bn1(conv("conv1", self.conv1, x))
        x = resnet.max_pool_3x3s2(F.relu(x))  # (B, stem, H/2, W/2) -> (B, stem, H/4, W/4)
        feats = []
        for lname in ("res2", "layer2", "layer3"):
            for i, blk in enumerate(getattr(self, lname)):
                x = blk(x, None if dense else conv, f"{lname}.{i}.")
            feats.append(x)
        f4, f8, f16 = feats  # (B, C4, H/4, W/4), (B, C8, H/8, W/8), (B, C16, H/16, W/16)
        return f16, f8, f4


class ResBlock(nn.Module):
    """STCN ResBlock: x + conv(relu(conv(relu(x)))), with a 3x3 conv on the skip when channels change."""

    def __init__(self, indim: int, outdim: int | None = None) -> None:
        super().__init__()
        outdim = outdim or indim
        self.downsample = None if indim == outdim else nn.Conv2d(indim, outdim, 3, padding=1)
        self.conv1 = nn.Conv2d(indim, outdim, 3, padding=1)
        self.conv2 = nn.Conv2d(outdim, outdim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv2(F.relu(self.conv1(F.relu(x))))
        return (x if self.downsample is None else self.downsample(x)) + r


class ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3)))  # (N, C)
        return x * torch.sigmoid(att)[:, :, None, None]


class BasicConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=(k - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SpatialGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.spatial = BasicConv(2, 1, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)  # (N, 2, h, w)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.ChannelGate = ChannelGate(channels, reduction)  # noqa: N815 - checkpoint name
        self.SpatialGate = SpatialGate()  # noqa: N815 - checkpoint name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class FeatureFusionBlock(nn.Module):
    """concat(value feature, key f16) -> ResBlock -> CBAM (residual) -> ResBlock."""

    def __init__(self, indim: int, outdim: int) -> None:
        super().__init__()
        self.block1 = ResBlock(indim, outdim)
        self.attention = CBAM(outdim)
        self.block2 = ResBlock(outdim, outdim)

    def forward(self, x: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
        x = self.block1(torch.cat([x, f16], 1))
        return self.block2(x + self.attention(x))


class ValueEncoder(nn.Module):
    """ResNet-18 up to layer3 with a 5-channel input (RGB, mask, other objects), fused with key f16."""

    def __init__(self, key_f16: int, value_dim: int = 512, stem: int = 64, widths: Sequence[int] = (64, 128, 256),
                 blocks: Sequence[int] = (2, 2, 2)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(5, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(stem)
        self.layer1 = make_layer(BasicBlock, stem, widths[0], blocks[0], 1)
        self.layer2 = make_layer(BasicBlock, widths[0], widths[1], blocks[1], 2)
        self.layer3 = make_layer(BasicBlock, widths[1], widths[2], blocks[2], 2)
        self.fuser = FeatureFusionBlock(widths[2] + key_f16, value_dim)

    def forward(self, image: torch.Tensor, key_f16: torch.Tensor, mask: torch.Tensor,
                other: torch.Tensor) -> torch.Tensor:
        x = torch.cat([image, mask, other], 1)  # (N, 5, H, W)
        x = resnet.max_pool_3x3s2(F.relu(resnet.conv_bn(self.conv1, self.bn1, x)))  # (N, stem, H/4, W/4)
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, widths[2], H/16, W/16)
        return self.fuser(x, key_f16)  # (N, value_dim, H/16, W/16)


class KeyProjection(nn.Module):
    def __init__(self, indim: int, keydim: int) -> None:
        super().__init__()
        self.key_proj = nn.Conv2d(indim, keydim, 3, padding=1)
        nn.init.orthogonal_(self.key_proj.weight.data)
        nn.init.zeros_(self.key_proj.bias.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.key_proj(x)


class UpsampleBlock(nn.Module):
    def __init__(self, skip_c: int, up_c: int, out_c: int) -> None:
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_c, up_c, 3, padding=1)
        self.out_conv = ResBlock(up_c, out_c)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """``skip`` may be per frame (B, ...) while ``up`` is per object (B*K, ...): pass ``skip`` already
        convolved and expanded with :meth:`fuse`."""
        return self.fuse(self.skip_conv(skip), up)

    def fuse(self, skip_f: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        x = skip_f + F.interpolate(up, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.out_conv(x)


def per_object(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, ...) -> (B*K, ...), each frame's tensor repeated for its K objects (object-major within a frame)."""
    return x.unsqueeze(1).expand(x.shape[0], k, *x.shape[1:]).flatten(0, 1)


class Decoder(nn.Module):
    """ResBlock at stride 16, upsampling with skips from strides 8 and 4, one logit map per object."""

    def __init__(self, value_dim: int, c8: int, c4: int, widths: Sequence[int] = (512, 256, 256)) -> None:
        super().__init__()
        self.compress = ResBlock(2 * value_dim, widths[0])
        self.up_16_8 = UpsampleBlock(c8, widths[0], widths[1])
        self.up_8_4 = UpsampleBlock(c4, widths[1], widths[2])
        self.pred = nn.Conv2d(widths[2], 1, 3, padding=1)

    def forward(self, x16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor, k: int) -> torch.Tensor:
        """x16 (B*K, 2*Cv, h, w) per object; f8, f4 per frame (B, ...). Returns (B*K, 1, H, W) logits.

        The skip convs do not depend on the object, so they run once per frame and are repeated K times.
        """
        s8 = per_object(self.up_16_8.skip_conv(f8), k)  # (B*K, D16, H/8, W/8)
        s4 = per_object(self.up_8_4.skip_conv(f4), k)  # (B*K, D8, H/4, W/4)
        x = self.up_16_8.fuse(s8, self.compress(x16))
        x = self.up_8_4.fuse(s4, x)
        x = self.pred(F.relu(x))  # (B*K, 1, H/4, W/4)
        return F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False)
