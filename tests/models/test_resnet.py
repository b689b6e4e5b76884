"""ResNet blocks: eager-inference BatchNorm folding and the fast stem pool give the graph ops' values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgevis.models import resnet


def _bn(c: int, seed: int) -> resnet.FrozenBatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = resnet.FrozenBatchNorm2d(c)
    bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
    bn.bias.copy_(torch.randn(c, generator=g))
    bn.running_mean.copy_(torch.randn(c, generator=g))
    bn.running_var.copy_(torch.rand(c, generator=g) + 0.1)
    return bn


def test_eager_inference_only_without_autograd() -> None:
    assert not resnet.eager_inference()  # grad mode is on in tests
    with torch.no_grad():
        assert resnet.eager_inference()
    with torch.inference_mode():
        assert resnet.eager_inference()


@pytest.mark.parametrize("shape", [(1, 16, 48, 80), (2, 3, 47, 81), (1, 4, 1, 1), (1, 2, 2, 3), (1, 8, 5, 2)])
def test_fast_stem_pool_equals_max_pool2d(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    x.view(-1)[0] = float("-inf")
    want = F.max_pool2d(x, 3, stride=2, padding=1)
    with torch.inference_mode():
        got = resnet.max_pool_3x3s2(x)
    assert got.shape == want.shape
    assert torch.equal(got, want)  # max is exact


def _affine(bn: resnet.FrozenBatchNorm2d, y: torch.Tensor) -> torch.Tensor:
    scale, shift = bn.scale_shift()
    return y * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


@pytest.mark.parametrize("stride,k,bias", [(1, 1, False), (2, 3, False), (1, 3, True)])
def test_conv_bn_folds_in_eager_inference(stride: int, k: int, bias: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, k, stride=stride, padding=k // 2, bias=bias)
    bn = _bn(12, 1)
    x = torch.randn(2, 8, 15, 17)
    want = bn(conv(x)).detach()  # grad mode: the plain ops
    with torch.no_grad():
        torch.testing.assert_close(resnet.conv_bn(conv, bn, x), want, rtol=1e-5, atol=1e-5)
        y = conv(x)
        torch.testing.assert_close(bn(y), _affine(bn, y), rtol=1e-6, atol=1e-6)  # the one-op eager BN


def test_folded_weights_follow_in_place_updates() -> None:
    """A cached fold is dropped when the conv's weights or the BN's buffers are written (load_state_dict,
    optimizer steps): the next call folds the new values."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=False), _bn(6, 2)
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        first = resnet.conv_bn(conv, bn, x)
        assert torch.equal(resnet.conv_bn(conv, bn, x), first)  # cached: the same numbers
        conv.weight.mul_(2.0)
        torch.testing.assert_close(resnet.conv_bn(conv, bn, x), _affine(bn, conv(x)), rtol=1e-5, atol=1e-5)
        bn.load_state_dict({k: v + 1.0 for k, v in bn.state_dict().items()})
        torch.testing.assert_close(resnet.conv_bn(conv, bn, x), _affine(bn, conv(x)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bn(x[:, :1].expand(1, 6, 9, 9)), _affine(bn, x[:, :1].expand(1, 6, 9, 9)))


def test_resnet_body_eager_inference_matches_graph_ops() -> None:
    """The whole body under no_grad (folded BNs, fast pool) against the plain ops (grad mode)."""
    torch.manual_seed(0)
    body = resnet.ResNetBody(resnet.ResNetConfig(layers=(1, 1, 1, 1), width=8))
    for m in body.modules():
        if isinstance(m, resnet.FrozenBatchNorm2d):
            m.load_state_dict(_bn(m.weight.numel(), 3).state_dict())
    x = torch.randn(1, 3, 64, 96)
    want = body(x)
    with torch.inference_mode():
        got = body(x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.detach(), rtol=1e-4, atol=1e-4)


def test_conv_bn_keeps_other_padding_modes() -> None:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect", bias=False), _bn(4, 4)
    x = torch.randn(1, 3, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(resnet.conv_bn(conv, bn, x), _affine(bn, conv(x)), rtol=1e-5, atol=1e-5)
