"""Policy of SpVOS: first-frame masks, memory ring buffer, object slots, sparse caches, refreshes.

Per stream (:class:`SpVOSState`):
- object slots: the first mask's object labels fill slots 0..N-1 of the K static slots
  (``obj_valid`` marks them); results carry the labels as track ids;
- memory ring: ``mem_keys`` (1, T, Ck, h, w), ``mem_values`` (1, T, K, Cv, h, w), ``mem_valid`` (1, T).
  Slot 0 keeps the first frame for good; every ``mem_every``-th frame goes into slots 1..T-1 in turn,
  overwriting the oldest, so the memory per stream is constant once the ring is full;
- the key encoder's sparse caches (encode_key's state tensors); every ``refresh`` frames their x0 are
  reset to -inf, which makes that frame dense (frame 0 is dense by the init rule).

First masks (``first_mask``): a DAVIS palette PNG path, an (H, W) integer label array, a list of
either (one per stream), or ``"auto"``: a placeholder single object (the central half of the frame)
so benchmarks and checks exercise the pipeline without annotations. ``None`` (the default) builds
the policy, but a stream's first frame then raises EdgevisError: semi-supervised VOS needs the user's
first-frame masks (``edgevis run --first-mask mask.png``). Checks pass the synthetic clip's frame-0
ground truth through ``SpVOSModel.check_policy_options``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from edgevis.errors import EdgevisError
from edgevis.runtime.policy import Policy, StageCaller, StepItem, StreamState
from edgevis.runtime.preprocess import Letterbox, crop_to_source, prepare
from edgevis.runtime.results import FrameResult

log = logging.getLogger(__name__)
VOID = 255
FirstMask = str | Path | np.ndarray


@dataclass
class SpVOSState(StreamState):
    caches: list[torch.Tensor] = field(default_factory=list)  # encode_key state inputs, IOSpec order
    mem_keys: torch.Tensor | None = None  # (1, T, Ck, h, w)
    mem_values: torch.Tensor | None = None  # (1, T, K, Cv, h, w)
    mem_valid: torch.Tensor | None = None  # (1, T) 1 = slot holds a frame
    obj_valid: torch.Tensor | None = None  # (1, K) 1 = slot holds an object
    object_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,) labels of slots 0..N-1
    next_slot: int = 1  # ring position for the next memory frame (slot 0 is the first frame)
    inserted: int = 0  # memory frames written so far


def read_first_mask(value: FirstMask) -> np.ndarray:
    """A first mask as an (H, W) integer label array (0 background, 255 void)."""
    if isinstance(value, (str, Path)):
        from edgevis.data import read_palette_png

        return read_palette_png(value).astype(np.int64)
    arr = np.asarray(value)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise EdgevisError(f"first mask: received an array of shape {arr.shape} dtype {arr.dtype}; expected an (H, W) "
                           "integer label map (0 = background, 1..N = objects), e.g. a DAVIS palette PNG's indices")
    return arr.astype(np.int64)


def object_ids(labels: np.ndarray, k: int, where: str) -> np.ndarray:
    ids = np.unique(labels)
    ids = ids[(ids != 0) & (ids != VOID)]
    if ids.size == 0:
        raise EdgevisError(f"first mask {where}: no objects (every pixel is background 0 or void 255); expected "
                           "object labels 1..N in the first frame's mask. Draw at least one object.")
    if ids.size > k:
        raise EdgevisError(f"first mask {where}: {ids.size} objects (labels {ids.tolist()}) but the model has K={k} "
                           f"object slots; merge or drop objects, or build the model with more slots "
                           f"(edgevis.models.spvos.build_spvos(max_objects={ids.size})) and re-export it")
    return ids.astype(np.int64)


class SpVOSPolicy(Policy):
    def __init__(self, model: Any, first_mask: FirstMask | Sequence[FirstMask] | None = None, *,
                 refresh: int | None = None, mem_every: int | None = None) -> None:
        super().__init__(model)
        cfg = model.cfg
        self.k, self.t = cfg.max_objects, cfg.mem_slots
        self.refresh = int(cfg.refresh if refresh is None else refresh)
        self.mem_every = int(cfg.mem_every if mem_every is None else mem_every)
        if self.refresh < 0 or self.mem_every < 1:
            raise EdgevisError(f"refresh={self.refresh} (>= 0, 0 = never) / mem_every={self.mem_every} (>= 1) invalid")
        self.hw = self.input_hw("encode_key")
        self.pre = self.specs["encode_key"].preprocess
        self.cache_specs = self.specs["encode_key"].states
        self.first_masks = [] if first_mask is None else self._load_first_masks(first_mask)

    def _load_first_masks(self, first_mask: Any) -> list[np.ndarray | str]:
        items = list(first_mask) if isinstance(first_mask, (list, tuple)) else [first_mask]
        out: list[np.ndarray | str] = []
        for i, m in enumerate(items):
            if isinstance(m, str) and m == "auto":
                out.append("auto")
                continue
            labels = read_first_mask(m)
            object_ids(labels, self.k, f"{m if isinstance(m, (str, Path)) else f'#{i}'}")  # validate now
            out.append(labels)
        return out

    def new_state(self, stream: int) -> SpVOSState:
        return SpVOSState(stream)

    # ---- first frame ---------------------------------------------------------------------------
    def _first_labels(self, stream: int, src_hw: tuple[int, int]) -> np.ndarray:
        if not self.first_masks:
            raise EdgevisError(f"model '{self.model.name}' (semi-supervised VOS) needs the first frame's object masks: "
                               "received none; pass --first-mask mask.png (a DAVIS palette PNG, 0 = background, "
                               "1..N = objects), or first_mask='auto' for a placeholder object in smoke tests")
        m = self.first_masks[stream] if stream < len(self.first_masks) else self.first_masks[-1]
        if isinstance(m, str):  # "auto": the central half of the frame is one object
            labels = np.zeros(src_hw, np.int64)
            h, w = src_hw
            labels[h // 4: h - h // 4, w // 4: w - w // 4] = 1
            return labels
        if tuple(m.shape) != tuple(src_hw):
            log.warning("first mask is %dx%d but stream %d's frames are %dx%d; resizing the mask (nearest)",
                        m.shape[0], m.shape[1], stream, src_hw[0], src_hw[1])
            m = cv2.resize(m.astype(np.uint8), (src_hw[1], src_hw[0]), interpolation=cv2.INTER_NEAREST).astype(np.int64)
        return m

    def _masks_to_input(self, labels: np.ndarray, ids: np.ndarray, lb: Letterbox) -> torch.Tensor:
        """Source-resolution labels -> (1, K, H, W) float one-hot at the model input (letterboxed)."""
        rh, rw = lb.resized_hw
        small = cv2.resize(labels.astype(np.uint8), (rw, rh), interpolation=cv2.INTER_NEAREST)
        out = np.zeros((1, self.k, *self.hw), np.float32)  # (1, K, H, W)
        for j, oid in enumerate(ids):
            out[0, j, :rh, :rw] = small == oid
        return torch.from_numpy(out)

    def _start(self, st: SpVOSState) -> None:
        """Empty memory ring and the object slots of a stream's first frame."""
        seg = self.specs["segment"]
        shapes = {t.name: t.resolve({"B": 1}) for t in seg.inputs}
        st.mem_keys = torch.zeros(shapes["mem_keys"])
        st.mem_values = torch.zeros(shapes["mem_values"])
        st.mem_valid = torch.zeros(shapes["mem_valid"])
        st.obj_valid = torch.zeros(shapes["obj_valid"])
        st.obj_valid[0, : len(st.object_ids)] = 1.0
        st.next_slot, st.inserted = 1, 0

    # ---- step ----------------------------------------------------------------------------------
    def step(self, items: list[StepItem], call: StageCaller) -> list[FrameResult]:
        images, boxes, feeds = [], [], []
        for it in items:
            st: SpVOSState = it.state
            x, lb = prepare(it.frame, self.hw, self.pre)
            images.append(x)
            boxes.append(lb)
            if st.index == 0 or not st.caches:
                st.caches = [s.initial({"B": 1}) for s in self.cache_specs]
            elif self.refresh and st.index % self.refresh == 0:  # dense refresh: x0 = -inf
                st.caches = [s.initial({"B": 1}) if s.init == "neg_inf" else c for s, c in zip(self.cache_specs, st.caches)]
            feeds.append({"image": x, **{s.name_in: c for s, c in zip(self.cache_specs, st.caches)}})
        keys = call("encode_key", feeds, items)
        for it, out in zip(items, keys):
            it.state.caches = [out[s.name_out] for s in self.cache_specs]

        probs: list[torch.Tensor | None] = [None] * len(items)
        seg_idx = [i for i, it in enumerate(items) if it.state.index > 0]
        for i, it in enumerate(items):
            st = it.state
            if st.index == 0:
                labels = self._first_labels(st.stream, st.source_hw or it.frame.shape[:2])
                st.object_ids = object_ids(labels, self.k, f"of stream {st.stream}")
                self._start(st)
                probs[i] = self._masks_to_input(labels, st.object_ids, boxes[i])
        if seg_idx:
            seg_feeds = []
            for i in seg_idx:
                st, o = items[i].state, keys[i]
                seg_feeds.append({"key": o["key"], "query_value": o["query_value"], "f8": o["f8"], "f4": o["f4"],
                                  "mem_keys": st.mem_keys, "mem_values": st.mem_values, "mem_valid": st.mem_valid,
                                  "obj_valid": st.obj_valid})
            for i, out in zip(seg_idx, call("segment", seg_feeds, [items[i] for i in seg_idx])):
                probs[i] = out["probs"]

        mem_idx = [i for i, it in enumerate(items) if it.state.index % self.mem_every == 0]
        if mem_idx:
            val_feeds = [{"image": images[i], "masks": probs[i], "f16": keys[i]["f16"]} for i in mem_idx]
            for i, out in zip(mem_idx, call("encode_value", val_feeds, [items[i] for i in mem_idx])):
                self._insert(items[i].state, keys[i]["key"], out["values"])

        return [self._result(it, lb, p) for it, lb, p in zip(items, boxes, probs)]

    def _insert(self, st: SpVOSState, key: torch.Tensor, values: torch.Tensor) -> None:
        slot = 0 if st.index == 0 else st.next_slot
        if st.index > 0:
            st.next_slot = 1 + (st.next_slot % (self.t - 1))
        st.mem_keys[0, slot] = key[0]
        st.mem_values[0, slot] = values[0]
        st.mem_valid[0, slot] = 1.0
        st.inserted += 1

    def _result(self, it: StepItem, lb: Letterbox, probs: torch.Tensor) -> FrameResult:
        st: SpVOSState = it.state
        n = len(st.object_ids)
        p = probs[0, :n].numpy()  # (N, H, W); numpy keeps post-processing off torch's thread pool
        bg = 1.0 - p.sum(0, keepdims=True)
        src = crop_to_source(np.concatenate([bg, p], 0), lb)  # (1+N, Hs, Ws)
        labels = src.argmax(0)  # (Hs, Ws) 0 = background, j+1 = slot j
        masks = labels[None] == np.arange(1, n + 1)[:, None, None]  # (N, Hs, Ws)
        scores = np.array([float(src[j + 1][masks[j]].mean()) if masks[j].any() else 0.0 for j in range(n)],
                          np.float32)
        return FrameResult(stream=st.stream, index=st.index, masks=masks, track_ids=st.object_ids.copy(),
                           class_ids=np.zeros(n, np.int64), scores=scores, timings_ms={}, source_hw=st.source_hw)
