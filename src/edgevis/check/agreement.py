"""Task-level agreement between two runs of the same clip: mask IoU of matched tracks, id agreement."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgevis.runtime.results import FrameResult


@dataclass
class Agreement:
    frame_iou: list[float] = field(default_factory=list)  # mean IoU of instances per frame
    id_agreement: list[float] = field(default_factory=list)  # |ids_a & ids_b| / |ids_a | ids_b| per frame

    @property
    def mean_iou(self) -> float:
        return float(np.mean(self.frame_iou)) if self.frame_iou else 1.0

    @property
    def mean_id_agreement(self) -> float:
        return float(np.mean(self.id_agreement)) if self.id_agreement else 1.0

    def add(self, ref: FrameResult, got: FrameResult) -> None:
        ids_r = {int(t): i for i, t in enumerate(ref.track_ids)}
        ids_g = {int(t): i for i, t in enumerate(got.track_ids)}
        union = set(ids_r) | set(ids_g)
        if not union:
            self.frame_iou.append(1.0)
            self.id_agreement.append(1.0)
            return
        ious = []
        for t in union:
            if t in ids_r and t in ids_g:
                a, b = ref.masks[ids_r[t]], got.masks[ids_g[t]]
                u = np.logical_or(a, b).sum()
                ious.append(1.0 if u == 0 else float(np.logical_and(a, b).sum() / u))
            else:  # a track only one side has counts as a miss
                ious.append(0.0)
        self.frame_iou.append(float(np.mean(ious)))
        self.id_agreement.append(len(set(ids_r) & set(ids_g)) / len(union))
