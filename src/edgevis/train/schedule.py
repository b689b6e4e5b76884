"""The learning-rate schedule every edgevis trainer uses: linear warm-up, then cosine decay to zero over
the planned steps or the wall-clock budget, whichever runs out first (a shared or slow machine still
ends its run with a small learning rate instead of being cut off mid-schedule)."""

from __future__ import annotations

import math
import time

import torch


class WarmupCosine:
    """Sets ``opt``'s learning rate before each step; :meth:`begin` returns False once the budget is spent."""

    def __init__(self, opt: torch.optim.Optimizer, lr: float, steps: int, max_minutes: float, warm: int) -> None:
        self.opt, self.lr, self.steps, self.max_minutes, self.warm = opt, lr, steps, max_minutes, max(1, warm)
        self.t0 = time.time()

    def elapsed(self) -> float:
        """Seconds since the schedule was made."""
        return time.time() - self.t0

    def progress(self, step: int) -> float:
        """Fraction of the run done before ``step``: of the steps or of the time budget, the larger
        (``max_minutes <= 0``: no time budget)."""
        by_time = self.elapsed() / (60 * self.max_minutes) if self.max_minutes > 0 else 0.0
        return max(step / self.steps, by_time)

    def begin(self, step: int) -> bool:
        """Set the learning rate of ``step``; False (nothing set) when the run is over."""
        progress = self.progress(step)
        if progress >= 1.0:
            return False
        lr = self.lr * min(1.0, (step + 1) / self.warm) * 0.5 * (1 + math.cos(math.pi * progress))
        for g in self.opt.param_groups:
            g["lr"] = lr
        return True
