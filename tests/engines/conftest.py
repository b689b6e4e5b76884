"""A tiny stateful model whose trt-flavor graph has a plugin node (ConvGRUCell) and a softmax.

dims B=2: convgru_update's input check calls int() on the shape, which pins B during export (reported).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from edgevis.models.base import Deployable
from edgevis.models.blocks import ImageNormalize
from edgevis.plugins.convgru import convgru_update
from edgevis.spec import IOSpec, Preprocess, StateSpec, TensorSpec

PRE = Preprocess(size_multiple=4)
H, W, C = 16, 24, 8


class GruNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.normalize = ImageNormalize(PRE)
        self.enc = nn.Conv2d(3, C, 3, stride=2, padding=1)
        self.gates = nn.Conv2d(2 * C, 2 * C, 3, padding=1)
        self.cand = nn.Conv2d(2 * C, C, 3, padding=1)
        self.head = nn.Conv2d(C, 4, 1)

    def forward(self, image: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.relu(self.enc(self.normalize(image)))  # (B, C, H/2, W/2)
        zr = self.gates(torch.cat([f, h], 1))  # (B, 2C, H/2, W/2)
        r = torch.sigmoid(zr[:, C:])
        n = self.cand(torch.cat([f, r * h], 1))
        h_new = convgru_update(zr, n, h)
        return torch.softmax(self.head(h_new), 1), h_new


class GruModel(Deployable):
    name = "gru_plugin_test"
    stages = ("frame",)

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = GruNet().eval()

    def stage(self, name: str) -> nn.Module:
        self.check_stage(name)
        return self.net

    def iospec(self, name: str) -> IOSpec:
        return IOSpec(
            model=self.name, stage=name,
            inputs=[TensorSpec("image", "uint8", ("B", H, W, 3))],
            outputs=[TensorSpec("probs", "float32", ("B", 4, H // 2, W // 2))],
            states=[StateSpec("h", "h_out", ("B", C, H // 2, W // 2))],
            preprocess=PRE, image_input="image", dims={"B": 1}, tolerances={"probs": 1e-5, "h_out": 1e-5},
        )

    def policy(self, **options: Any) -> Any:
        raise NotImplementedError


@pytest.fixture(scope="session")
def gru_onnx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The test model exported in both flavors (once per session)."""
    from edgevis.export.onnx_export import export_stage

    model = GruModel()
    d = tmp_path_factory.mktemp("gru")
    return {
        "model": model,
        "trt": export_stage(model, "frame", d / "frame.trt.onnx", "trt").path,
        "portable": export_stage(model, "frame", d / "frame.portable.onnx", "portable").path,
    }
