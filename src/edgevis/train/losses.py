"""Losses and matching costs shared by the trainers (MobileInst, OOKD / QFA)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss, summed (RetinaNet's alpha and gamma)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    return ((alpha * target + (1 - alpha) * (1 - target)) * ce * (1 - pt) ** gamma).sum()


def dice_matrix(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """p (N, P), t (M, P) in [0, 1] -> (N, M) dice coefficients."""
    return 2 * (p @ t.T) / (p.sum(1)[:, None] + t.sum(1)[None, :] + 1e-4)
