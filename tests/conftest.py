"""Shared fixtures: tiny models and frames so the suite stays fast on 2 CPU cores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgevis.models.toy import ToyConfig, ToyModel


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def toy() -> ToyModel:
    torch.manual_seed(0)
    return ToyModel("toy_convgru", ToyConfig(height=64, width_px=96))


@pytest.fixture
def frames() -> list[np.ndarray]:
    """12 BGR frames 48x80 of a square moving over a gradient."""
    rng = np.random.default_rng(0)
    base = (np.linspace(0, 255, 80)[None, :, None] * np.ones((48, 1, 3))).astype(np.uint8)
    out = []
    for t in range(12):
        f = base.copy()
        f[10:26, 5 + 4 * t : 21 + 4 * t] = (40, 200, 90)
        f = np.clip(f.astype(int) + rng.integers(-5, 6, f.shape), 0, 255).astype(np.uint8)
        out.append(f)
    return out
