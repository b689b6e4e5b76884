"""IDOL-style online tracker in plain numpy: the per-stream state of the OOKD policy.

Each frame the model gives up to K detections (score, label, association embedding, mask). The
tracker, following IDOL's published inference settings (SEEDS.md section 3):

1. drops detections scoring below ``init_score`` (0.2) and runs mask NMS at ``nms_pre`` (0.7) among
   the rest, best score first (duplicates of one object are removed before they can take two ids);
2. matches detections to tracklets by **bi-softmax**: with ``S = E_det @ K_trk.T / temperature``,
   ``score = (softmax(S, over tracklets) + softmax(S, over detections)) / 2``; detections in score
   order take their best tracklet if ``score > match_score`` (0.5), and a taken tracklet's column is
   zeroed so no two detections share one id;
3. after matching, mask NMS at ``nms_post`` (0.3): an unmatched detection overlapping a detection
   already kept (matched, or a higher-scoring new one) is dropped, so a duplicate never opens a track;
4. unmatched detections open a tracklet if their score exceeds ``add_new_score`` (0.5), or
   ``init_score`` (0.2) while the tracker holds no tracklet (first frame, or after everything left);
5. a matched tracklet updates its momentum embedding ``m <- (1 - momentum) * m + momentum * e``
   (momentum 0.5) and appends ``e`` to a memory of at most ``memory_len`` (10) embeddings;
6. a tracklet unseen for ``max_unseen`` (10) frames in a row is dropped (so an object may be away
   for up to 9 frames and keep its id).

[our design] Both softmaxes get one extra "no match" slot of similarity ``null_similarity`` (0): with
plain bi-softmax a lone tracklet takes any detection (its softmax over one tracklet is 1, so the mean
is >= 0.5); the slot plays the part of QDTrack's backdrop embeddings, which IDOL's tracker drops.
The key a tracklet is matched on is the mean of its momentum embedding and of its memory
(IDOL's "long match" over the memory, made deterministic and order-free). Embeddings are used raw,
not L2-normalised, as IDOL's contrastive head is trained on raw dot products.

Bad state: ``check_invariants()`` verifies the bookkeeping (unique ids below ``next_id``, memory
sizes, finite embeddings of the right width, ages); with ``debug=True`` (or ``EDGEVIS_DEBUG=1``) it
runs before and after every step and raises :class:`TrackerStateError`. Without debug, ``step``
still repairs duplicate ids (fresh ids for the later copies) so a corrupted state never yields two
instances with one id, and non-finite embeddings are dropped with their tracklet.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from edgevis.errors import EdgevisError

log = logging.getLogger(__name__)


class TrackerStateError(EdgevisError):
    """The tracker's state broke an invariant (only raised in debug mode)."""


@dataclass(frozen=True)
class TrackerConfig:
    """Thresholds of the IDOL tracker; defaults are IDOL's published inference settings."""

    init_score: float = 0.2  # detections below are ignored; above, they open tracks while none exist
    add_new_score: float = 0.5  # unmatched detections above this open a new tracklet
    match_score: float = 0.5  # bi-softmax score a match must exceed
    nms_pre: float = 0.7  # mask IoU of duplicate detections removed before matching
    nms_post: float = 0.3  # mask IoU above which an unmatched detection is a duplicate of a kept one
    momentum: float = 0.5  # weight of the new embedding in the momentum average
    memory_len: int = 10  # embeddings kept per tracklet
    max_unseen: int = 10  # a tracklet unseen for this many frames in a row is dropped
    temperature: float = 1.0  # bi-softmax temperature on the raw dot products
    null_similarity: float | None = 0.0  # similarity of the "no match" slot in both softmaxes (None: IDOL's plain form)

    def __post_init__(self) -> None:
        for name in ("init_score", "add_new_score", "match_score", "nms_pre", "nms_post", "momentum"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise EdgevisError(f"TrackerConfig.{name} = {v}; expected a value in [0, 1]")
        if self.memory_len < 1 or self.max_unseen < 1 or self.temperature <= 0:
            raise EdgevisError(
                f"TrackerConfig: memory_len={self.memory_len}, max_unseen={self.max_unseen}, "
                f"temperature={self.temperature}; expected memory_len >= 1, max_unseen >= 1, temperature > 0")


@dataclass
class Tracklet:
    track_id: int
    label: int
    score: float
    embed: np.ndarray  # (D,) momentum-averaged embedding
    memory: deque = field(default_factory=deque)  # of (D,) embeddings, newest last, at most memory_len
    last_seen: int = 0  # frame index of the last match
    hits: int = 1

    def key(self) -> np.ndarray:
        """(D,) the embedding this tracklet is matched on."""
        if not self.memory:
            return self.embed
        return 0.5 * (self.embed + np.mean(np.stack(self.memory), axis=0))


@dataclass
class TrackOutput:
    """One frame's tracked instances: ``index`` rows into the detections given to ``step``."""

    index: np.ndarray  # (N,) int64 detection row
    track_ids: np.ndarray  # (N,) int64
    new: np.ndarray  # (N,) bool, opened a tracklet on this frame


def greedy_nms(ious: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS over score-sorted rows of an (N, N) IoU matrix: a row is kept unless its IoU with a
    kept row exceeds ``threshold``; returns the kept row positions (the tracker's and MobileInst's)."""
    keep: list[int] = []
    for i in range(len(ious)):
        if not keep or not (ious[i, keep] > threshold).any():
            keep.append(i)
    return keep


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def bisoftmax(det: np.ndarray, trk: np.ndarray, temperature: float = 1.0, null: float | None = 0.0) -> np.ndarray:
    """(N, D) detection and (M, D) tracklet embeddings -> (N, M) bi-softmax matching scores.

    ``null``: similarity of an extra "no match" slot added to both softmaxes (None: no slot).
    """
    sims = (det @ trk.T) / temperature  # (N, M)
    if null is not None:
        sims = np.pad(sims, ((0, 1), (0, 1)), constant_values=null / temperature)  # (N+1, M+1)
        return (0.5 * (_softmax(sims, 1) + _softmax(sims, 0)))[:-1, :-1]
    return 0.5 * (_softmax(sims, 1) + _softmax(sims, 0))


def debug_from_env() -> bool:
    return os.environ.get("EDGEVIS_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


class IdolTracker:
    """Tracklets of one stream. ``step`` per frame; ``frame`` counts the frames seen."""

    def __init__(self, config: TrackerConfig | None = None, debug: bool | None = None) -> None:
        self.cfg = config or TrackerConfig()
        self.debug = debug_from_env() if debug is None else bool(debug)
        self.tracklets: list[Tracklet] = []
        self.next_id = 1
        self.frame = 0
        self.dim: int | None = None  # embedding width, fixed by the first detections

    # ---- invariants ------------------------------------------------------------------------------
    def check_invariants(self) -> None:
        """Raise :class:`TrackerStateError` naming the first broken invariant."""
        ids = [t.track_id for t in self.tracklets]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise TrackerStateError(f"tracker state: duplicate track ids {dup}; each tracklet needs its own id "
                                    "(reset the stream to recover)")
        if ids and max(ids) >= self.next_id:
            raise TrackerStateError(f"tracker state: track id {max(ids)} >= next_id {self.next_id}; a new track would "
                                    "reuse an id (reset the stream to recover)")
        for t in self.tracklets:
            if len(t.memory) > self.cfg.memory_len:
                raise TrackerStateError(f"tracker state: track {t.track_id} holds {len(t.memory)} memory embeddings, "
                                        f"expected at most {self.cfg.memory_len}")
            if t.last_seen > self.frame or self.frame - t.last_seen > self.cfg.max_unseen:
                raise TrackerStateError(f"tracker state: track {t.track_id} last seen at frame {t.last_seen}, now "
                                        f"{self.frame}; expected within {self.cfg.max_unseen} frames and not in the future")
            for e in (t.embed, *t.memory):
                if e.ndim != 1 or (self.dim is not None and e.shape[0] != self.dim) or not np.isfinite(e).all():
                    raise TrackerStateError(f"tracker state: track {t.track_id} has an embedding of shape {e.shape} "
                                            f"(finite: {bool(np.isfinite(e).all())}); expected finite ({self.dim},)")

    def _repair(self) -> None:
        """Cheap fixes so a corrupted state cannot crash a step or emit one id twice."""
        seen: set[int] = set()
        kept = []
        for t in self.tracklets:
            if t.embed.ndim != 1 or (self.dim is not None and t.embed.shape[0] != self.dim) \
                    or not np.isfinite(t.embed).all():
                log.warning("tracker: dropping track %d with a bad embedding", t.track_id)
                continue
            if len(t.memory) > self.cfg.memory_len or any(e.shape != t.embed.shape or not np.isfinite(e).all()
                                                           for e in t.memory):
                t.memory = deque((e for e in t.memory if e.shape == t.embed.shape and np.isfinite(e).all()),
                                 maxlen=self.cfg.memory_len)
            t.last_seen = min(t.last_seen, self.frame)
            if t.track_id in seen:
                log.warning("tracker: track id %d is duplicated; the copy gets id %d", t.track_id, self.next_id)
                t.track_id = self.next_id
            self.next_id = max(self.next_id, t.track_id + 1)
            seen.add(t.track_id)
            kept.append(t)
        self.tracklets = kept

    # ---- one frame -------------------------------------------------------------------------------
    def step(self, scores: np.ndarray, labels: np.ndarray, embeds: np.ndarray, masks: np.ndarray) -> TrackOutput:
        """Detections of one frame: scores (N,), labels (N,), embeds (N, D), masks (N, ...) bool."""
        from edgevis.data.metrics import mask_iou_matrix  # lazily: edgevis.data loads its readers and cv2

        cfg = self.cfg
        if self.debug:
            self.check_invariants()
        else:
            self._repair()
        n = len(scores)
        if embeds.ndim != 2 or len(embeds) != n or len(labels) != n or len(masks) != n:
            raise EdgevisError(f"tracker.step: received scores {np.shape(scores)}, labels {np.shape(labels)}, "
                               f"embeds {np.shape(embeds)}, masks {np.shape(masks)}; expected N rows each, embeds (N, D)")
        if n and self.dim is None:
            self.dim = int(embeds.shape[1])
        elif n and embeds.shape[1] != self.dim:
            raise EdgevisError(f"tracker.step: embeddings are {embeds.shape[1]}-d, the tracker holds {self.dim}-d; "
                               "reset the stream when the model changes")
        flat = np.asarray(masks, bool).reshape(n, int(np.prod(np.shape(masks)[1:])))  # (N, P)
        ok = np.isfinite(scores) & (scores >= cfg.init_score) & np.isfinite(embeds).all(1) & flat.any(1)
        order = np.flatnonzero(ok)[np.argsort(-scores[ok], kind="stable")]  # candidates, best first
        ious = (mask_iou_matrix(flat[order], flat[order]).astype(np.float32) if len(order)
                else np.zeros((0, 0), np.float32))
        keep = greedy_nms(ious, cfg.nms_pre)
        cand = order[keep]  # (n,) detection rows
        ious = ious[np.ix_(keep, keep)]
        ids = np.full(len(cand), -1, np.int64)
        which = np.full(len(cand), -1, np.int64)  # tracklet index per candidate
        if len(cand) and self.tracklets:
            keys = np.stack([t.key() for t in self.tracklets])  # (M, D)
            sc = bisoftmax(embeds[cand].astype(np.float32), keys.astype(np.float32), cfg.temperature,
                           cfg.null_similarity)  # (n, M)
            for i in range(len(cand)):
                j = int(sc[i].argmax())
                if sc[i, j] > cfg.match_score:
                    which[i] = j
                    ids[i] = self.tracklets[j].track_id
                    sc[:, j] = 0.0
        # after matching: unmatched candidates overlapping a kept one are duplicates
        first = not self.tracklets
        kept_rows: list[int] = [i for i in range(len(cand)) if which[i] >= 0]
        new = np.zeros(len(cand), bool)
        for i in range(len(cand)):
            if which[i] >= 0:
                continue
            if kept_rows and (ious[i, kept_rows] > cfg.nms_post).any():
                continue
            if scores[cand[i]] > (cfg.init_score if first else cfg.add_new_score):
                new[i] = True
                kept_rows.append(i)
        for i in range(len(cand)):
            d = int(cand[i])
            e = embeds[d].astype(np.float32)
            if which[i] >= 0:
                t = self.tracklets[which[i]]
                t.embed = (1.0 - cfg.momentum) * t.embed + cfg.momentum * e
                t.memory.append(e)
                t.last_seen, t.label, t.score, t.hits = self.frame, int(labels[d]), float(scores[d]), t.hits + 1
            elif new[i]:
                t = Tracklet(self.next_id, int(labels[d]), float(scores[d]), e.copy(),
                             deque([e], maxlen=cfg.memory_len), last_seen=self.frame)
                self.tracklets.append(t)
                ids[i] = t.track_id
                self.next_id += 1
        self.tracklets = [t for t in self.tracklets if self.frame - t.last_seen < cfg.max_unseen]
        self.frame += 1
        if self.debug:
            self.check_invariants()
        shown = ids >= 0
        return TrackOutput(cand[shown].astype(np.int64), ids[shown], new[shown])
