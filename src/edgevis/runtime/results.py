"""Per-frame results handed from the runner to the sinks.

``FrameResult`` is what ``StreamRunner.step`` returns for each stream and frame: instance masks at
the source resolution plus track ids, class ids, scores and per-stage timings. ``to_json_dict`` gives
the JSON form written by ``JsonlSink`` (masks as COCO RLE, see ``rle_encode``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class MaskSource(Protocol):
    """Masks not yet at the source resolution (e.g. :class:`edgevis.runtime.preprocess.LazyMasks`).

    ``shape`` is the (N, H, W) the masks will have; ``materialise()`` returns them as a bool array.
    """

    shape: tuple[int, int, int]

    def materialise(self) -> np.ndarray: ...


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE of one binary mask.

    Runs are counted over the mask in column-major (Fortran) order and alternate background /
    foreground, starting with background (so the first count is 0 when pixel (0, 0) is set).
    Returns ``{"size": [H, W], "counts": [int, ...]}``, which ``pycocotools.mask.frPyObjects``
    and the YouTube-VIS evaluator accept.
    """
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects one (H, W) mask, received shape {tuple(mask.shape)}")
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")  # (H*W,)
    if flat.size == 0:
        return {"size": [int(h), int(w)], "counts": []}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # start index of every run after the first
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds)
    counts = runs.tolist()
    if flat[0]:
        counts.insert(0, 0)
    return {"size": [int(h), int(w)], "counts": [int(c) for c in counts]}


@dataclass
class FrameResult:
    """Instances found in one frame of one stream.

    ``masks`` are boolean at the source resolution ``source_hw``; ``track_ids``, ``class_ids`` and
    ``scores`` have one entry per mask. A policy may pass a :class:`MaskSource` instead of an array:
    the masks are then upsampled on first access of ``masks`` (by a sink, say), so a consumer that
    only needs ids, classes and scores never pays for source-resolution masks. ``timings_ms`` holds milliseconds per stage plus ``"total"``.
    ``reset`` is True when the runner reset this stream's state on this frame (first frame, a
    resolution change, or an explicit reset), so track ids may start over.
    """

    stream: int
    index: int
    masks: np.ndarray  # (N, H, W) bool (or a MaskSource, materialised on first access)
    track_ids: np.ndarray  # (N,) int64
    class_ids: np.ndarray  # (N,) int64
    scores: np.ndarray  # (N,) float32
    timings_ms: dict[str, float] = field(default_factory=dict)
    source_hw: tuple[int, int] = (0, 0)
    reset: bool = False

    def __post_init__(self) -> None:
        shape = tuple(self._masks.shape)  # no materialising here
        assert len(shape) == 3, f"masks must be (N, H, W), got {shape}"
        assert len(self.track_ids) == len(self.class_ids) == len(self.scores) == shape[0], (
            "per-instance arrays differ in length"
        )
        if self.source_hw == (0, 0):
            self.source_hw = (int(shape[1]), int(shape[2]))

    @property
    def num_instances(self) -> int:
        return int(self._masks.shape[0])

    @property
    def masks_ready(self) -> bool:
        """True once ``masks`` is an array (given as one, or materialised by an earlier access)."""
        return isinstance(self._masks, np.ndarray)

    @classmethod
    def empty(cls, stream: int, index: int, source_hw: tuple[int, int], **kwargs: Any) -> FrameResult:
        """A result with no instances (e.g. a frame the runner skipped)."""
        h, w = source_hw
        return cls(
            stream=stream,
            index=index,
            masks=np.zeros((0, h, w), dtype=bool),  # (0, H, W)
            track_ids=np.zeros((0,), dtype=np.int64),
            class_ids=np.zeros((0,), dtype=np.int64),
            scores=np.zeros((0,), dtype=np.float32),
            source_hw=(int(h), int(w)),
            **kwargs,
        )

    def to_json_dict(self, rle: bool = True) -> dict[str, Any]:
        """JSON-serialisable form: one entry per instance, masks as COCO RLE (or omitted if not ``rle``)."""
        instances = []
        for i in range(self.num_instances):
            inst: dict[str, Any] = {
                "track_id": int(self.track_ids[i]),
                "class_id": int(self.class_ids[i]),
                "score": round(float(self.scores[i]), 6),
            }
            if rle:
                inst["segmentation"] = rle_encode(self.masks[i])
            else:
                inst["area"] = int(np.count_nonzero(self.masks[i]))
            instances.append(inst)
        return {
            "stream": int(self.stream),
            "index": int(self.index),
            "source_hw": [int(self.source_hw[0]), int(self.source_hw[1])],
            "reset": bool(self.reset),
            "timings_ms": {k: round(float(v), 4) for k, v in self.timings_ms.items()},
            "instances": instances,
        }


def _get_masks(self: FrameResult) -> np.ndarray:
    if not isinstance(self._masks, np.ndarray):
        self._masks = self._masks.materialise()  # (N, H, W) bool, kept
    return self._masks


def _set_masks(self: FrameResult, value: np.ndarray | MaskSource) -> None:
    self._masks = value


# After the class body so the dataclass still sees ``masks`` as a plain init field; its __init__
# assigns through the setter.
FrameResult.masks = property(_get_masks, _set_masks, doc="(N, H, W) bool masks at the source resolution.")  # type: ignore[assignment]
