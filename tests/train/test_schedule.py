from __future__ import annotations

import math

import pytest
import torch

from edgevis.train import schedule
from edgevis.train.schedule import WarmupCosine


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(schedule.time, "time", c)
    return c


def _opt() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_warmup_then_cosine_over_the_steps(clock):
    opt = _opt()
    s = WarmupCosine(opt, lr=0.1, steps=100, max_minutes=60, warm=10)
    lrs = []
    for step in range(100):
        assert s.begin(step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.1 * 0.1 * 0.5 * (1 + math.cos(0.0)))  # 1/10 of the warm-up
    assert lrs[9] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.09)))  # warm-up done
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # then only decays
    assert lrs[-1] < 1e-4


def test_time_budget_ends_the_run_and_drives_the_decay(clock):
    opt = _opt()
    s = WarmupCosine(opt, lr=0.1, steps=1000, max_minutes=2, warm=1)
    assert s.begin(0)
    clock.now += 60  # half the budget, 1 of 1000 steps
    assert s.progress(1) == pytest.approx(0.5)
    assert s.begin(1) and opt.param_groups[0]["lr"] == pytest.approx(0.05)
    clock.now += 60
    assert not s.begin(2) and opt.param_groups[0]["lr"] == pytest.approx(0.05)  # nothing set once over
    assert s.elapsed() == pytest.approx(120)


def test_no_time_budget_when_max_minutes_is_not_positive(clock):
    s = WarmupCosine(_opt(), lr=0.1, steps=10, max_minutes=0, warm=1)
    clock.now += 1e6
    assert s.begin(5) and s.progress(5) == pytest.approx(0.5)
