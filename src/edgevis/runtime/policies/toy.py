"""Policy of the toy recurrent model: carry the GRU hidden map; one instance per class channel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edgevis.runtime.policy import Policy, StageCaller, StepItem, StreamState
from edgevis.runtime.preprocess import LazyMasks, prepare
from edgevis.runtime.results import FrameResult


@dataclass
class ToyState(StreamState):
    h: torch.Tensor | None = None  # (1, C, H/4, W/4) GRU hidden map


class ToyPolicy(Policy):
    def __init__(self, model: Any, threshold: float = 0.0) -> None:
        super().__init__(model)
        self.threshold = threshold
        self.spec = self.specs["frame"]
        self.hw = self.input_hw("frame")

    def new_state(self, stream: int) -> ToyState:
        return ToyState(stream)

    def step(self, items: list[StepItem], call: StageCaller) -> list[FrameResult]:
        feeds, boxes = [], []
        for it in items:
            x, lb = prepare(it.frame, self.hw, self.spec.preprocess)
            if it.state.h is None:
                it.state.h = self.spec.init_state({"B": 1})["h"]
            feeds.append({"image": x, "h": it.state.h})
            boxes.append(lb)
        outs = call("frame", feeds, items)
        results = []
        for it, lb, out in zip(items, boxes, outs):
            it.state.h = out["h_out"]
            # numpy views, not torch indexing: a few host ops per frame, kept off torch's dispatcher
            peak = out["scores"].numpy()[0]  # (K,) each channel's peak logit
            keep = np.flatnonzero(peak > self.threshold).astype(np.int64, copy=False)  # (N,)
            masks = LazyMasks(out["logits"].numpy()[0], lb, self.threshold, rows=keep)  # (N, H, W) on first access
            ids = keep + 1  # track id = class id = channel + 1
            results.append(FrameResult(
                stream=it.state.stream, index=it.state.index, masks=masks, track_ids=ids, class_ids=ids.copy(),
                scores=(1.0 / (1.0 + np.exp(-peak[keep]))).astype(np.float32, copy=False), timings_ms={},
                source_hw=it.state.source_hw,
            ))
        return results
