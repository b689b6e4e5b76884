"""Blocks shared by several model families."""

from __future__ import annotations

import torch
from torch import nn

from edgevis.spec import Preprocess


class ImageNormalize(nn.Module):
    """In-graph pre-processing: uint8 BGR (B, H, W, 3) -> normalised float (B, 3, H, W).

    Also accepts float (B, 3, H, W) already normalised (training code paths), unchanged.
    """

    def __init__(self, pre: Preprocess) -> None:
        super().__init__()
        order = [2, 1, 0] if pre.channel_order == "RGB" else [0, 1, 2]
        mean = torch.tensor(pre.mean, dtype=torch.float32) * pre.scale
        std = torch.tensor(pre.std, dtype=torch.float32) * pre.scale
        self.register_buffer("order", torch.tensor(order), persistent=False)
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", (1.0 / std).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype != torch.uint8:
            return image
        x = image.permute(0, 3, 1, 2).index_select(1, self.order).float()  # (B, 3, H, W)
        return (x - self.mean) * self.inv_std
