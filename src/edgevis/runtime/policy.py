"""Policies: what differs per model in the runner (schedules, association, memory).

The runner owns one typed :class:`StreamState` per stream and hands a batch of
``(state, frame)`` items to the model's policy together with a :class:`StageCaller`, which
batches the streams' feeds into one backend call per stage and records timings.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edgevis.runtime.backends.base import Backend
from edgevis.runtime.results import FrameResult
from edgevis.spec import IOSpec


@dataclass
class StreamState:
    """Base of every policy's per-stream state. ``index`` counts frames since the last reset."""

    stream: int
    index: int = 0
    source_hw: tuple[int, int] | None = None


@dataclass
class StepItem:
    state: Any  # the policy's StreamState subclass
    frame: np.ndarray  # (H, W, 3) uint8 BGR
    timings_ms: dict[str, float] = field(default_factory=lambda: defaultdict(float))


def to_host(out: dict[str, torch.Tensor], keep_on_device: frozenset[str]) -> dict[str, torch.Tensor]:
    """Plain outputs on the host (policies post-process them with numpy); state outputs stay where the
    backend keeps them, so a GPU backend's recurrent state never leaves the device."""
    return {k: v if k in keep_on_device or v.device.type == "cpu" else v.cpu() for k, v in out.items()}


class StageCaller:
    """Calls a stage's backend once per group of same-shaped feeds (the streams' batch).

    Plain outputs come back on the host; the copy from a GPU backend is inside the timed region
    (it is where an asynchronous backend such as TensorRT finishes), states stay on the device.
    """

    def __init__(self, backends: dict[str, Backend]) -> None:
        self.backends = backends
        self.backend_ms = 0.0

    def __call__(self, stage: str, feeds: list[dict[str, torch.Tensor]], items: list[StepItem]) -> list[dict[str, torch.Tensor]]:
        """Run ``stage`` on one feed dict per item (each with batch 1); returns one output dict per item."""
        backend = self.backends[stage]
        groups: dict[tuple, list[int]] = defaultdict(list)
        if len(feeds) == 1:  # one stream: nothing to group
            groups[()] = [0]
        else:
            for i, f in enumerate(feeds):
                groups[tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(f.items()))].append(i)
        results: list[dict[str, torch.Tensor] | None] = [None] * len(feeds)
        for idx in groups.values():
            batch = feeds[idx[0]] if len(idx) == 1 else {k: torch.cat([feeds[i][k] for i in idx]) for k in feeds[idx[0]]}
            t0 = time.perf_counter()
            out = to_host(backend(batch), backend.state_outputs)
            ms = (time.perf_counter() - t0) * 1e3
            self.backend_ms += ms
            for j, i in enumerate(idx):
                results[i] = {k: v[j : j + 1] for k, v in out.items()} if len(idx) > 1 else out
                items[i].timings_ms[stage] += ms
        return results  # type: ignore[return-value]


class Policy(ABC):
    """Per-model runner logic. Subclasses define their StreamState and ``step``."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.specs: dict[str, IOSpec] = model.specs()

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(self.model.stages)

    def input_hw(self, stage: str) -> tuple[int, int]:
        spec = self.specs[stage]
        shape = next(t.shape for t in spec.inputs if t.name == spec.image_input)
        if spec.preprocess is not None and spec.preprocess.in_graph:  # (B, H, W, 3) uint8
            return int(shape[1]), int(shape[2])
        return int(shape[-2]), int(shape[-1])  # (B, 3, H, W) float

    @abstractmethod
    def new_state(self, stream: int) -> StreamState:
        """A fresh state for one stream (also what ``reset`` uses)."""

    @abstractmethod
    def step(self, items: list[StepItem], call: StageCaller) -> list[FrameResult]:
        """Process one frame for each item; update ``item.state`` in place; one result per item."""
