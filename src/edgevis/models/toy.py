"""A tiny recurrent segmenter (ConvGRU) that proves the runner before the real models land.

Stage ``frame``: image (B, H, W, 3) uint8 BGR, h (B, C, H/4, W/4) -> logits (B, K, H/4, W/4),
scores (B, K) (each channel's peak logit, computed in the graph so the host reads K numbers, not
K maps), h'. Each of the K channels is one "instance" whose track id is its channel; the point is
the state handling (streaming == clip, reset, stream isolation), not accuracy. Untrained unless
weights given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgevis.models.base import Deployable
from edgevis.models.blocks import ImageNormalize
from edgevis.spec import IOSpec, Preprocess, StateSpec, TensorSpec


@dataclass(frozen=True)
class ToyConfig:
    num_classes: int = 3
    width: int = 16
    hidden: int = 16
    height: int = 256
    width_px: int = 448


class ToyRecurrentSeg(nn.Module):
    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, c = cfg.width, cfg.hidden
        self.normalize = ImageNormalize(PREPROCESS)
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        )
        self.gates = nn.Conv2d(w + c, 2 * c, 3, padding=1)
        self.candidate = nn.Conv2d(w + c, c, 3, padding=1)
        self.head = nn.Conv2d(c, cfg.num_classes, 1)

    def step(self, image: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.encoder(self.normalize(image))  # (B, w, H/4, W/4)
        z, r = torch.sigmoid(self.gates(torch.cat([f, h], 1))).chunk(2, 1)  # (B, C, H/4, W/4) each
        n = torch.tanh(self.candidate(torch.cat([f, r * h], 1)))
        h_new = (1 - z) * h + z * n
        logits = self.head(h_new)  # (B, K, H/4, W/4)
        return logits, logits.amax(dim=(2, 3)), h_new  # ..., (B, K), (B, C, H/4, W/4)

    def forward(self, image: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One frame (B, H, W, 3) uint8 or a clip (B, T, H, W, 3); the same blocks serve both."""
        if image.dim() == 4:
            return self.step(image, h)
        logits, scores = [], []
        for t in range(image.shape[1]):
            out, sc, h = self.step(image[:, t], h)
            logits.append(out)
            scores.append(sc)
        return torch.stack(logits, 1), torch.stack(scores, 1), h  # (B, T, K, H/4, W/4), (B, T, K), (B, C, H/4, W/4)


PREPROCESS = Preprocess(size_multiple=4)


class ToyModel(Deployable):
    stages = ("frame",)

    def __init__(self, name: str = "toy_convgru", cfg: ToyConfig | None = None) -> None:
        self.name = name
        self.cfg = cfg or ToyConfig()
        self.net = ToyRecurrentSeg(self.cfg).eval()

    def iospec(self, name: str) -> IOSpec:
        self.check_stage(name)
        c = self.cfg
        h4, w4 = c.height // 4, c.width_px // 4
        return IOSpec(
            model=self.name,
            stage=name,
            inputs=[TensorSpec("image", "uint8", ("B", c.height, c.width_px, 3))],
            outputs=[TensorSpec("logits", "float32", ("B", c.num_classes, h4, w4)),
                     TensorSpec("scores", "float32", ("B", c.num_classes))],
            states=[StateSpec("h", "h_out", ("B", c.hidden, h4, w4), "float32", "zeros")],
            preprocess=PREPROCESS,
            image_input="image",
            dims={"B": 1},
            tolerances={"logits": 1e-4, "scores": 1e-4, "h_out": 1e-4},
        )

    def policy(self, **options: Any) -> Any:
        from edgevis.runtime.policies.toy import ToyPolicy

        return ToyPolicy(self, **options)
