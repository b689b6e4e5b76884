"""OOKD policy: the per-frame student plus the IDOL tracker (runtime/tracker.py) carried per stream.

Every frame: the ``frame`` stage runs once for all streams (batched); each stream's top-K detections
(scores, labels, association embeddings, mask logits > 0 at stride 4 as the masks the NMS compares)
go to that stream's :class:`IdolTracker`, which assigns track ids (bi-softmax matching, NMS before
and after, new-track and drop rules). The frame's result is the tracked detections, masks resized
to the source resolution, class ids 1-based (label + 1, as YouTube-VIS category ids).

Options: any :class:`TrackerConfig` field (``match_score=0.6``...) or ``tracker=TrackerConfig(...)``,
and ``debug`` (invariant checks every step; default from ``EDGEVIS_DEBUG``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgevis.errors import EdgevisError
from edgevis.runtime.policy import Policy, StageCaller, StepItem, StreamState
from edgevis.runtime.preprocess import LazyMasks, prepare
from edgevis.runtime.results import FrameResult
from edgevis.runtime.tracker import IdolTracker, TrackerConfig


@dataclass
class OokdState(StreamState):
    tracker: IdolTracker = field(default_factory=IdolTracker)


class OokdPolicy(Policy):
    def __init__(self, model: Any, tracker: TrackerConfig | None = None, debug: bool | None = None,
                 **thresholds: float) -> None:
        super().__init__(model)
        known = {f.name for f in dataclasses.fields(TrackerConfig)}
        unknown = sorted(set(thresholds) - known)
        if unknown:
            raise EdgevisError(f"OOKD policy: unknown options {unknown}; expected tracker settings among {sorted(known)}")
        self.tracker_cfg = dataclasses.replace(tracker or TrackerConfig(), **thresholds)
        self.debug = debug
        self.spec = self.specs["frame"]
        self.hw = self.input_hw("frame")

    def new_state(self, stream: int) -> OokdState:
        return OokdState(stream, tracker=IdolTracker(self.tracker_cfg, debug=self.debug))

    def step(self, items: list[StepItem], call: StageCaller) -> list[FrameResult]:
        prepared = [prepare(it.frame, self.hw, self.spec.preprocess) for it in items]
        outs = call("frame", [{"image": x} for x, _ in prepared], items)
        results = []
        for it, (_, lb), out in zip(items, prepared, outs):
            st: OokdState = it.state
            scores = out["scores"][0].numpy().astype(np.float32)  # (K,)
            labels = out["labels"][0].numpy().astype(np.int64)
            embeds = out["embeds"][0].numpy().astype(np.float32)  # (K, E)
            mask_logits = out["masks"][0].numpy()  # (K, H/4, W/4)
            tracked = st.tracker.step(scores, labels, embeds, mask_logits > 0)
            rows = tracked.index
            results.append(FrameResult(
                stream=st.stream, index=st.index, masks=LazyMasks(mask_logits, lb, rows=rows),
                track_ids=tracked.track_ids.astype(np.int64), class_ids=labels[rows] + 1,
                scores=scores[rows].astype(np.float32), timings_ms={}, source_hw=st.source_hw,
            ))
        return results
