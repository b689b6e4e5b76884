"""MobileInst policy: kernel reuse between key frames, kernel association across key frames.

Every frame runs ``frame`` (backbone + mask decoder) and ``mask`` (kernels x X_mask). On key frames
(every ``key_interval`` frames, T; default 3) ``key`` runs the instance decoder first; its detections
(SparseInst scoring: sqrt(sigmoid(cls) * sigmoid(obj)) rescored by maskness, threshold, mask NMS) are
matched to the stream's tracks by Hungarian matching of L2-normalised kernels on 1 - cosine, so track
ids stay stable; class probabilities and scores are averaged over each track's key frames. Frames in
between reuse the key frame's kernels and instance list. With T = 1 every frame is decoded on its own
(:func:`decode_detections`), which is what the per-frame path gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from edgevis.errors import EdgevisError
from edgevis.runtime.policy import Policy, StageCaller, StepItem, StreamState
from edgevis.runtime.preprocess import LazyMasks, prepare
from edgevis.runtime.results import FrameResult
from edgevis.runtime.tracker import greedy_nms


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Detections:
    """Instances kept on one key frame (all arrays have N rows, best score first)."""

    query: np.ndarray  # (N,) int64 query index
    class_prob: np.ndarray  # (N, C) float32 sigmoid class probabilities
    score: np.ndarray  # (N,) float32 final score (maskness-rescored)

    @property
    def class_index(self) -> np.ndarray:
        return self.class_prob.argmax(1) if len(self.query) else np.zeros((0,), np.int64)


def _mask_nms(binary: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS over (N, P) bool masks already sorted by score; returns kept row indices."""
    from edgevis.data.metrics import mask_iou_matrix

    return np.asarray(greedy_nms(mask_iou_matrix(binary, binary).astype(np.float32), iou_threshold), np.int64)


def decode_detections(logits: np.ndarray, objectness: np.ndarray, mask_logits: np.ndarray, *,
                      score_threshold: float = 0.3, max_instances: int = 20, nms_iou: float = 0.6) -> Detections:
    """Per-frame decoding of one frame's key outputs: logits (Q, C), objectness (Q,), mask_logits (Q, h, w)."""
    prob = _sigmoid(logits.astype(np.float32))  # (Q, C)
    score = np.sqrt(prob.max(1) * _sigmoid(objectness.astype(np.float32)))  # (Q,)
    cand = np.flatnonzero(score > 0.5 * score_threshold)  # maskness <= 1, so others cannot pass
    m = _sigmoid(mask_logits[cand].reshape(len(cand), int(np.prod(mask_logits.shape[1:]))).astype(np.float32))  # (n, h*w)
    binary = m > 0.5
    area = binary.sum(1)
    maskness = (m * binary).sum(1) / np.maximum(area, 1)
    final = score[cand] * maskness
    ok = (final > score_threshold) & (area > 0)
    order = np.argsort(-final[ok], kind="stable")
    rows = np.flatnonzero(ok)[order][: 4 * max_instances]
    rows = rows[_mask_nms(binary[rows], nms_iou)][:max_instances] if len(rows) else rows
    q = cand[rows].astype(np.int64)
    return Detections(query=q, class_prob=prob[q].astype(np.float32), score=final[rows].astype(np.float32))


@dataclass
class Track:
    id: int
    kernel: np.ndarray  # (Dm,) L2-normalised kernel of its last key frame
    class_sum: np.ndarray  # (C,) summed class probabilities over key frames
    score_sum: float = 0.0
    count: int = 0
    misses: int = 0  # key frames since it was last matched


@dataclass
class MobileInstState(StreamState):
    kernels: torch.Tensor | None = None  # (1, Q, Dm) kernels of the last key frame (reused until the next)
    logits: np.ndarray | None = None  # (Q, C) key-frame class logits
    objectness: np.ndarray | None = None  # (Q,) key-frame objectness logits
    queries: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # (N,) instances shown
    track_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # (N,)
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # (N,) category ids
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))  # (N,)
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 1


class MobileInstPolicy(Policy):
    def __init__(self, model: Any, key_interval: int = 3, score_threshold: float = 0.15, max_instances: int = 20,
                 nms_iou: float = 0.6, match_cost: float = 0.5, max_misses: int = 2, average_scores: bool = True) -> None:
        super().__init__(model)
        if int(key_interval) < 1:
            raise EdgevisError(f"key_interval (--key-interval) must be >= 1, received {key_interval}; "
                               "1 decodes every frame, 3 (default) runs the instance decoder every third frame")
        self.key_interval = int(key_interval)
        self.score_threshold, self.max_instances, self.nms_iou = score_threshold, max_instances, nms_iou
        self.match_cost, self.max_misses, self.average_scores = match_cost, max_misses, average_scores
        self.hw = self.input_hw("frame")
        self.pre = self.specs["frame"].preprocess

    def new_state(self, stream: int) -> MobileInstState:
        return MobileInstState(stream)

    def is_key(self, state: MobileInstState) -> bool:
        return state.kernels is None or state.index % self.key_interval == 0

    def step(self, items: list[StepItem], call: StageCaller) -> list[FrameResult]:
        prepared = [prepare(it.frame, self.hw, self.pre) for it in items]
        feats = call("frame", [{"image": x} for x, _ in prepared], items)
        key_idx = [i for i, it in enumerate(items) if self.is_key(it.state)]
        if key_idx:
            outs = call("key", [{"x_mask": feats[i]["x_mask"], "x6": feats[i]["x6"]} for i in key_idx],
                        [items[i] for i in key_idx])
            for i, out in zip(key_idx, outs):
                st = items[i].state
                st.kernels = out["kernels"].clone()  # own copy: backends may reuse output buffers
                st.logits = out["logits"][0].numpy().copy()
                st.objectness = out["objectness"][0].numpy().copy()
        masks = call("mask", [{"kernels": it.state.kernels, "x_mask": f["x_mask"]} for it, f in zip(items, feats)],
                     items)
        results = []
        for i, (it, (_, lb), out) in enumerate(zip(items, prepared, masks)):
            st: MobileInstState = it.state
            mask_logits = out["masks"][0].numpy()  # (Q, h, w)
            if i in key_idx:
                dets = decode_detections(st.logits, st.objectness, mask_logits, score_threshold=self.score_threshold,
                                         max_instances=self.max_instances, nms_iou=self.nms_iou)
                self._associate(st, dets)
            shown = mask_logits[st.queries]  # (N, h, w)
            nonempty = (shown > 0).any(axis=(1, 2))  # (N,)
            results.append(FrameResult(
                stream=st.stream, index=st.index, masks=LazyMasks(shown, lb, rows=nonempty),
                track_ids=st.track_ids[nonempty], class_ids=st.class_ids[nonempty], scores=st.scores[nonempty],
                timings_ms={}, source_hw=st.source_hw,
            ))
        return results

    def _associate(self, st: MobileInstState, dets: Detections) -> None:
        """Hungarian matching of this key frame's kernels to the tracks (1 - cosine); update tracks."""
        assert st.kernels is not None
        k = st.kernels[0].numpy()[dets.query]  # (N, Dm)
        k = k / np.maximum(np.linalg.norm(k, axis=1, keepdims=True), 1e-6)
        assigned = np.full(len(k), -1, np.int64)  # detection -> index into st.tracks
        if st.tracks and len(k):
            prev = np.stack([t.kernel for t in st.tracks])  # (M, Dm)
            cost = 1.0 - k @ prev.T  # (N, M)
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols):
                if cost[r, c] <= self.match_cost:
                    assigned[r] = c
        matched = set(assigned[assigned >= 0].tolist())
        for j, t in enumerate(st.tracks):
            t.misses = 0 if j in matched else t.misses + 1
        for r in range(len(k)):
            if assigned[r] < 0:
                st.tracks.append(Track(st.next_id, k[r], np.zeros_like(dets.class_prob[r])))
                st.next_id += 1
                assigned[r] = len(st.tracks) - 1
            t = st.tracks[assigned[r]]
            t.kernel = k[r]
            t.class_sum = t.class_sum + dets.class_prob[r]
            t.score_sum += float(dets.score[r])
            t.count += 1
        shown = [st.tracks[a] for a in assigned]
        st.queries = dets.query
        st.track_ids = np.asarray([t.id for t in shown], np.int64)
        if self.average_scores:
            st.class_ids = np.asarray([int(t.class_sum.argmax()) + 1 for t in shown], np.int64)
            st.scores = np.asarray([t.score_sum / t.count for t in shown], np.float32)
        else:
            st.class_ids = (dets.class_index + 1).astype(np.int64)
            st.scores = dets.score
        st.tracks = [t for t in st.tracks if t.misses <= self.max_misses]
