"""Runner policy of SeqFormer and Recurrent SeqFormer: online decoding over a sliding window [our design].

SeqFormer's decoder pools instance queries over a whole clip. For a live stream the policy keeps, per
stream, a ring buffer of the last T frames' ``frame``-stage outputs (memory + mask features) and runs
the ``clip`` stage on that window every S frames (``decode_every``, default 1):

- frame stage every frame, all streams batched into one call; the recurrent model's GRU hidden maps
  h1..h4 are carried in the stream state (StateSpec pairs, zeros after a reset);
- until the buffer holds T frames, the window is padded at the front by repeating the stream's first
  frame (a still clip): frame 0 already gets instances, and they refine as real frames arrive;
- each decode yields the top-K (query, class) instances with masks on all T window frames. They are
  linked to the stream's tracks by Hungarian matching on ``iou_weight * mean soft mask IoU`` (of the
  sigmoid maps: continuous in the logits, so backends that differ by 1e-6 link alike) over the
  frames both windows cover (at mask resolution, letterbox padding cropped) ``+ (1 - iou_weight) *
  cosine`` of the instance query embeddings (cosine alone when the windows do not overlap, S >= T).
  Only pairs with similarity >= ``link_threshold`` may link, and leaving a track or an instance
  unmatched is always allowed (:func:`assign_with_unmatched`), so weak pairs never displace strong
  ones. Two bonuses enter the assignment value only: same class (``label_weight``) and same decoder
  query slot as the track's last match (``query_weight``); they break the near-ties of ambiguous
  scenes (e.g. top-K entries sharing one query: same mask and embedding, different class), so
  backends that differ by 1e-6 make the same assignment. Unmatched instances open new track ids
  (stable, from 1 per stream); tracks unseen for ``max_age`` decodes are dropped;
- the frame's result is the window's last frame: masks resized to the source resolution. On frames
  between decodes (S > 1) the last decode's instances and masks are held (reported again).

Post-processing is numpy/scipy; the graphs stay static.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from edgevis.errors import EdgevisError
from edgevis.runtime.policy import Policy, StageCaller, StepItem, StreamState
from edgevis.runtime.preprocess import LazyMasks, Letterbox, crop_hw, prepare
from edgevis.runtime.results import FrameResult


@dataclass
class WindowFrame:
    """One frame's ``frame``-stage outputs in the ring buffer."""

    index: int
    memory: torch.Tensor  # (1, S, d)
    mask_feats: torch.Tensor  # (1, Cm, H/8, W/8)


@dataclass
class Track:
    track_id: int
    label: int
    query: int
    embed: np.ndarray  # (d,) unit norm
    masks: dict[int, np.ndarray]  # frame index -> (h, w) mask probabilities at mask resolution, latest decode
    last_decode: int


@dataclass
class Held:
    """What a frame reports: the latest decode's instances on its last window frame."""

    track_ids: np.ndarray  # (N,) int64
    labels: np.ndarray  # (N,) int64
    scores: np.ndarray  # (N,) float32
    mask_logits: np.ndarray  # (N, H/4, W/4) float32


@dataclass
class SeqFormerState(StreamState):
    hidden: list[torch.Tensor] | None = None  # recurrent model: h1..h4, each (1, d, H_l, W_l)
    buffer: deque[WindowFrame] = field(default_factory=deque)
    letterbox: Letterbox | None = None
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 1
    decodes: int = 0
    held: Held | None = None


def padded_window(buffer: deque[WindowFrame], size: int) -> list[WindowFrame]:
    """The last ``size`` frames, front-padded by repeating the first buffered frame."""
    frames = list(buffer)[-size:]
    return [frames[0]] * (size - len(frames)) + frames


def soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two probability maps: sum(min) / sum(max) (the binary IoU when both are 0/1)."""
    union = float(np.maximum(a, b).sum())
    return 1.0 if union <= 1e-12 else float(np.minimum(a, b).sum()) / union


def assign_with_unmatched(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-value matching where leaving a row or column unmatched is worth 0 and -inf marks a
    forbidden pair: the square (rows + cols) Hungarian problem with one "unmatched" slot per row and
    per column, so weak pairs never displace strong ones. Returns the matched (rows, cols)."""
    n, m = value.shape
    big = 1e6
    cost = np.full((n + m, m + n), big)
    cost[:n, :m] = np.where(np.isfinite(value), -value, big)
    cost[np.arange(n), m + np.arange(n)] = 0.0  # row i unmatched
    cost[n + np.arange(m), np.arange(m)] = 0.0  # column j unmatched
    cost[n:, m:] = 0.0
    rows, cols = linear_sum_assignment(cost)
    ok = (rows < n) & (cols < m) & (cost[rows, cols] < big)
    return rows[ok], cols[ok]


class SeqFormerPolicy(Policy):
    def __init__(self, model: Any, decode_every: int = 1, score_threshold: float = 0.0, iou_weight: float = 0.5,
                 link_threshold: float = 0.5, max_age: int = 5, window: int | None = None,
                 label_weight: float = 0.5, query_weight: float = 0.5) -> None:
        super().__init__(model)
        if decode_every < 1:
            raise EdgevisError(f"decode_every={decode_every}; expected an integer >= 1 (decode every S frames)")
        clip_spec = self.specs["clip"]
        self.window = int(clip_spec.inputs[0].shape[1])
        if window is not None and window != self.window:
            raise EdgevisError(
                f"window={window} but the exported clip stage of '{model.name}' takes T={self.window} frames; "
                "export the model with that window or leave window unset"
            )
        self.decode_every = decode_every
        self.score_threshold = score_threshold
        self.iou_weight = iou_weight
        self.link_threshold = link_threshold
        self.max_age = max_age
        self.label_weight = label_weight
        self.query_weight = query_weight
        self.frame_spec = self.specs["frame"]
        self.hw = self.input_hw("frame")

    def new_state(self, stream: int) -> SeqFormerState:
        return SeqFormerState(stream)

    # ---- step -----------------------------------------------------------------------------------
    def step(self, items: list[StepItem], call: StageCaller) -> list[FrameResult]:
        spec = self.frame_spec
        feeds = []
        for it in items:
            st: SeqFormerState = it.state
            x, st.letterbox = prepare(it.frame, self.hw, spec.preprocess)
            if st.hidden is None and spec.states:
                init = spec.init_state({"B": 1})
                st.hidden = [init[s.name_in] for s in spec.states]
            feed = {"image": x}
            for s, h in zip(spec.states, st.hidden or []):
                feed[s.name_in] = h
            feeds.append(feed)
        outs = call("frame", feeds, items)
        decode_items, windows = [], []
        for it, out in zip(items, outs):
            st = it.state
            if spec.states:
                st.hidden = [out[s.name_out] for s in spec.states]
            st.buffer.append(WindowFrame(st.index, out["memory"], out["mask_feats"]))
            while len(st.buffer) > self.window:
                st.buffer.popleft()
            if st.index % self.decode_every == 0 or st.held is None:
                decode_items.append(it)
                windows.append(padded_window(st.buffer, self.window))
        if decode_items:
            clip_feeds = [
                {"memory": torch.cat([f.memory for f in w])[None], "mask_feats": torch.cat([f.mask_feats for f in w])[None]}
                for w in windows
            ]
            for it, w, out in zip(decode_items, windows, call("clip", clip_feeds, decode_items)):
                self._link(it.state, w, out)
        return [self._result(it.state) for it in items]

    # ---- association ----------------------------------------------------------------------------
    def _link(self, st: SeqFormerState, window: list[WindowFrame], out: dict[str, torch.Tensor]) -> None:
        scores = out["scores"][0].float().numpy()  # (K,)
        labels = out["labels"][0].numpy().astype(np.int64)
        queries = out["queries"][0].numpy().astype(np.int64)
        embed = out["embed"][0].float().numpy()  # (K, d)
        logits = out["masks"][0].float().numpy()  # (K, T, h, w)
        keep = np.flatnonzero(scores >= self.score_threshold)
        st.decodes += 1
        assert st.letterbox is not None
        ch, cw = crop_hw(st.letterbox, logits.shape[-2], logits.shape[-1])
        probs = 1.0 / (1.0 + np.exp(-np.clip(logits[keep, :, :ch, :cw], -30.0, 30.0)))  # (N, T, ch, cw)
        emb = embed[keep]
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        last_slot = {f.index: i for i, f in enumerate(window)}  # frame index -> its last slot in the window
        alive = [t for t in st.tracks if st.decodes - t.last_decode <= self.max_age]
        assign: dict[int, Track] = {}
        if alive and len(keep):
            sim = np.zeros((len(alive), len(keep)), np.float64)
            same = np.zeros_like(sim)
            same_query = np.zeros_like(sim)
            for i, tr in enumerate(alive):
                shared = [f for f in tr.masks if f in last_slot]
                cos = emb @ tr.embed  # (N,)
                same[i] = labels[keep] == tr.label
                same_query[i] = queries[keep] == tr.query
                if shared:
                    iou = np.array([np.mean([soft_iou(tr.masks[f], probs[n, last_slot[f]]) for f in shared])
                                    for n in range(len(keep))])
                    sim[i] = self.iou_weight * iou + (1.0 - self.iou_weight) * cos
                else:
                    sim[i] = cos
            value = sim - self.link_threshold + self.label_weight * same + self.query_weight * same_query
            for r, c in zip(*assign_with_unmatched(np.where(sim >= self.link_threshold, value, -np.inf))):
                assign[int(c)] = alive[r]
        ids = np.zeros(len(keep), np.int64)
        for n in range(len(keep)):
            tr = assign.get(n)
            if tr is None:
                tr = Track(st.next_id, int(labels[keep[n]]), int(queries[keep[n]]), emb[n], {}, st.decodes)
                st.next_id += 1
                alive.append(tr)
            tr.embed, tr.label, tr.query, tr.last_decode = emb[n], int(labels[keep[n]]), int(queries[keep[n]]), st.decodes
            tr.masks = {f: probs[n, s] for f, s in last_slot.items()}
            ids[n] = tr.track_id
        st.tracks = alive
        st.held = Held(ids, labels[keep], scores[keep].astype(np.float32), np.ascontiguousarray(logits[keep, -1]))

    def _result(self, st: SeqFormerState) -> FrameResult:
        held, lb = st.held, st.letterbox
        assert held is not None and lb is not None
        return FrameResult(
            stream=st.stream, index=st.index, masks=LazyMasks(held.mask_logits, lb, 0.0),
            track_ids=held.track_ids.copy(), class_ids=held.labels.copy(), scores=held.scores.copy(),
            timings_ms={}, source_hw=st.source_hw or lb.src_hw,
        )
