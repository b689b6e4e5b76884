"""StreamRunner: N streams in one process, one backend call per stage per step, typed state per stream."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from edgevis.errors import EdgevisError
from edgevis.runtime.backends.base import Backend
from edgevis.runtime.policy import Policy, StageCaller, StepItem
from edgevis.runtime.results import FrameResult
from edgevis.runtime.sources import to_bgr_u8

log = logging.getLogger(__name__)


class StreamRunner:
    """Serves ``num_streams`` streams of one model.

    ``step(frames)`` takes one frame (or ``None``) per stream and returns one :class:`FrameResult`
    per frame given. A stream whose resolution changes is reset first (``result.reset`` is True).
    Timings: ``timings_ms`` holds each stage's backend time, ``total`` the whole step and
    ``overhead`` everything that is not a backend call (pre/post-processing, policy logic).
    """

    def __init__(self, policy: Policy, backends: dict[str, Backend], num_streams: int = 1) -> None:
        missing = [s for s in policy.stages if s not in backends]
        if missing:
            raise EdgevisError(f"runner for '{policy.model.name}' needs backends for stages {list(policy.stages)}; missing {missing}")
        if num_streams < 1:
            raise EdgevisError(f"num_streams must be >= 1, received {num_streams}")
        self.policy = policy
        self.backends = backends
        self.states = [policy.new_state(i) for i in range(num_streams)]
        self.backend_ms = 0.0
        self.total_ms = 0.0
        self.frames = 0

    @property
    def num_streams(self) -> int:
        return len(self.states)

    def reset(self, stream: int) -> None:
        """Forget everything about ``stream``; its next frame is processed as frame 0."""
        self.states[stream] = self.policy.new_state(stream)

    def step(self, frames: Sequence[np.ndarray | None]) -> list[FrameResult]:
        if len(frames) != self.num_streams:
            raise EdgevisError(f"step() got {len(frames)} frames for {self.num_streams} streams; pass None for a stream without a frame")
        t0 = time.perf_counter()
        items: list[StepItem] = []
        reset_flags: list[bool] = []
        for i, frame in enumerate(frames):
            if frame is None:
                continue
            frame = to_bgr_u8(frame, where=f"stream {i}")
            hw = (int(frame.shape[0]), int(frame.shape[1]))
            was_reset = False
            st = self.states[i]
            if st.source_hw is not None and st.source_hw != hw:
                log.info("stream %d: resolution changed %s -> %s, state reset", i, st.source_hw, hw)
                self.reset(i)
                st = self.states[i]
                was_reset = True
            st.source_hw = hw
            items.append(StepItem(st, frame))
            reset_flags.append(was_reset)
        if not items:
            return []
        caller = StageCaller(self.backends)
        results = self.policy.step(items, caller)
        total = (time.perf_counter() - t0) * 1e3
        for item, res, was_reset in zip(items, results, reset_flags):
            item.state.index += 1
            res.reset = was_reset
            res.timings_ms.update(item.timings_ms)
            res.timings_ms["total"] = total
            res.timings_ms["overhead"] = max(0.0, total - caller.backend_ms)
        self.backend_ms += caller.backend_ms
        self.total_ms += total
        self.frames += len(items)
        return results

    @property
    def overhead_fraction(self) -> float:
        """Share of wall time spent outside backend calls, over everything run so far."""
        return 0.0 if self.total_ms == 0 else (self.total_ms - self.backend_ms) / self.total_ms

    def close(self) -> None:
        for b in {id(b): b for b in self.backends.values()}.values():
            b.close()
