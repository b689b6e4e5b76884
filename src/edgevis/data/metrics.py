"""Video instance segmentation and video object segmentation metrics.

``ytvis_map`` follows the YouTube-VIS evaluation (a COCO evaluation whose "images" are videos and
whose IoU is spatio-temporal): per video and category, detections sorted by score (at most max_dets)
are greedily matched to the unmatched ground-truth track of highest IoU >= threshold, for thresholds
.50:.05:.95; per category, precision is made monotone and sampled at 101 recall points; AP is the mean
over thresholds and recall points, and mAP the mean over categories that have ground truth. Area ranges
("small/medium/large") and crowd tracks are not used: every track counts, area range "all".

``davis_j_and_f`` follows the DAVIS 2017 semi-supervised evaluation: J is the region IoU and F the
boundary F-measure of each object in each frame, the first and the last frame excluded (the first is the
given mask), averaged over frames per object and then over objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from edgevis.data.rle import rle_encode, rle_runs
from edgevis.data.synthetic import SyntheticClip
from edgevis.errors import EdgevisError

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)  # (10,), as COCOeval
RECALL_POINTS = np.linspace(0.0, 1.0, int(np.round(1.0 / 0.01)) + 1)  # (101,)
VOID_LABEL = 255


def mask_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, ...) and (M, ...) bool masks -> (N, M) IoU over all trailing dims; 0 where both are empty.

    With (N, T, H, W) tracks this is the spatio-temporal IoU of YouTube-VIS (sum of intersections over
    frames divided by the sum of unions).
    """
    if a.shape[1:] != b.shape[1:]:
        raise EdgevisError(f"mask_iou_matrix needs masks of the same size; got {a.shape[1:]} and {b.shape[1:]}.")
    p = int(np.prod(a.shape[1:]))
    dtype = np.float32 if p < 2**24 else np.float64  # float32 counts are exact below 2**24 pixels
    af = a.reshape(len(a), p).astype(dtype)  # (N, P)
    bf = b.reshape(len(b), p).astype(dtype)  # (M, P)
    inter = (af @ bf.T).astype(np.float64)  # (N, M)
    union = af.sum(1, dtype=np.float64)[:, None] + bf.sum(1, dtype=np.float64)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


# -------------------------------------------------------------------------------------- YouTube-VIS mAP


def _frame_runs(pred: dict, t: int, h: int, w: int, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Frame t of a prediction as foreground runs (starts, ends) in column-major order, or None if absent."""
    if "masks" in pred:
        m = np.asarray(pred["masks"][t], bool)
        if m.shape != (h, w):
            raise EdgevisError(f"prediction {k}: frame {t} mask has shape {m.shape}; the video is (H, W) = {(h, w)}.")
        starts, ends, _ = rle_runs(rle_encode(m))
    else:
        seg = pred["segmentations"][t]
        if seg is None:
            return None
        starts, ends, size = rle_runs(seg)
        if size != (h, w):
            raise EdgevisError(f"prediction {k}: frame {t} RLE size is {list(size)}; the video is (H, W) = {(h, w)}.")
    return (starts, ends) if len(starts) else None


def _video_ious(clip: SyntheticClip, preds: list[tuple[int, dict]]) -> np.ndarray:
    """(D, G) spatio-temporal IoU of predictions vs the clip's tracks, accumulated frame by frame.

    Predictions stay run-length encoded: the intersection of a run [s, e) with a track is a difference
    of the track's cumulative pixel counts, so no prediction mask is ever decoded.
    """
    n_t, g, h, w = clip.masks.shape
    inter = np.zeros((len(preds), g))
    area_d = np.zeros(len(preds))
    area_g = clip.masks.sum(axis=(0, 2, 3), dtype=np.float64)  # (G,)
    for k, p in preds:
        n = len(p["masks"]) if "masks" in p else len(p["segmentations"])
        if n != n_t:
            raise EdgevisError(f"prediction {k} (video {p['video_id']}) has {n} frames; the video has {n_t}.")
    for t in range(n_t):
        gt_cum = np.zeros((g, h * w + 1), np.int64)  # (G, H*W + 1) column-major running pixel counts
        np.cumsum(clip.masks[t].transpose(0, 2, 1).reshape(g, h * w), axis=1, out=gt_cum[:, 1:])
        for j, (k, p) in enumerate(preds):
            runs = _frame_runs(p, t, h, w, k)
            if runs is None:
                continue
            starts, ends = runs
            area_d[j] += float((ends - starts).sum())
            inter[j] += (gt_cum[:, ends] - gt_cum[:, starts]).sum(axis=1)
    union = area_d[:, None] + area_g[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _match(ious: np.ndarray) -> np.ndarray:
    """(D, G) IoU of score-sorted detections -> (len(IOU_THRESHOLDS), D) bool matched, COCO greedy rule."""
    n_d, n_g = ious.shape
    matched = np.zeros((len(IOU_THRESHOLDS), n_d), bool)
    for ti, thr in enumerate(IOU_THRESHOLDS):
        taken = np.zeros(n_g, bool)
        for di in range(n_d):
            best, m = min(thr, 1 - 1e-10), -1
            for gi in range(n_g):
                if taken[gi] or ious[di, gi] < best:
                    continue
                best, m = ious[di, gi], gi
            if m >= 0:
                taken[m] = True
                matched[ti, di] = True
    return matched


def _precision_recall(scores: np.ndarray, matched: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores (D,), matched (thr, D) over all videos of a category -> precision (thr, 101), recall (thr,)."""
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(matched[:, order], axis=1, dtype=np.float64)  # (thr, D)
    fp = np.cumsum(~matched[:, order], axis=1, dtype=np.float64)
    precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS)))
    recall = np.zeros(len(IOU_THRESHOLDS))
    for ti in range(len(IOU_THRESHOLDS)):
        if not len(order):
            continue
        rc = tp[ti] / n_gt
        pr = tp[ti] / (tp[ti] + fp[ti] + np.spacing(1))
        recall[ti] = rc[-1]
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope: max over higher recalls
        idx = np.searchsorted(rc, RECALL_POINTS, side="left")
        valid = idx < len(pr)
        precision[ti, : valid.sum()] = pr[idx[valid]]
    return precision, recall


def ytvis_map(
    gt_videos: Sequence[SyntheticClip] | Mapping[int, SyntheticClip],
    predictions: Sequence[dict],
    *,
    max_dets: int = 100,
) -> dict:
    """YouTube-VIS video mAP.

    gt_videos: clips keyed by video id, or a sequence (video ids 1..V, as write_ytvis assigns).
    predictions: dicts with video_id, score, category_id and either segmentations (T per-frame RLE dicts
    or None) or masks ((T, H, W) bool). Returns mAP, AP50, AP75, AR1, AR10, AR@max_dets (key
    f"AR{max_dets}") and per_category {category_id: AP}; a value is -1.0 where no ground truth exists
    for it, as in COCO.
    """
    videos = dict(gt_videos) if isinstance(gt_videos, Mapping) else dict(enumerate(gt_videos, start=1))
    by_key: dict[tuple[int, int], list[tuple[int, dict]]] = {}
    for k, p in enumerate(predictions):
        if p.get("video_id") not in videos:
            raise EdgevisError(
                f"prediction {k} has video_id {p.get('video_id')!r}, which is not among the ground-truth video ids "
                f"{sorted(videos)[:10]}; predictions must refer to the evaluated videos."
            )
        if "segmentations" not in p and "masks" not in p:
            raise EdgevisError(
                f"prediction {k} has neither 'segmentations' (per-frame RLE) nor 'masks' ((T, H, W) bool)."
            )
        by_key.setdefault((int(p["video_id"]), int(p["category_id"])), []).append((k, p))
    categories = sorted({int(c) for clip in videos.values() for c in clip.classes} | {c for _, c in by_key})

    # per video: keep the top max_dets per category, then IoU of every kept prediction vs every track
    per_cat: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {c: [] for c in categories}
    n_gt = dict.fromkeys(categories, 0)
    for vid, clip in videos.items():
        kept: list[tuple[int, dict]] = []
        spans = {}
        for c in categories:
            ps = sorted(by_key.get((vid, c), []), key=lambda kp: -float(kp[1]["score"]))[:max_dets]  # stable
            spans[c] = (len(kept), len(kept) + len(ps))
            kept.extend(ps)
        ious = _video_ious(clip, kept)  # (D, G)
        classes = np.asarray(clip.classes, int)
        for c in categories:
            gi = np.flatnonzero(classes == c)
            n_gt[c] += len(gi)
            a, b = spans[c]
            scores = np.array([float(p["score"]) for _, p in kept[a:b]])
            per_cat[c].append((scores, _match(ious[a:b][:, gi])))

    n_thr = len(IOU_THRESHOLDS)
    ar_dets = (1, 10, max_dets)
    precision = -np.ones((n_thr, len(RECALL_POINTS), len(categories)))  # (thr, 101, K)
    recall = -np.ones((n_thr, len(categories), len(ar_dets)))  # (thr, K, maxDets)
    for ci, c in enumerate(categories):
        if n_gt[c] == 0:
            continue
        for mi, md in enumerate(ar_dets):
            scores = np.concatenate([s[:md] for s, _ in per_cat[c]])
            matched = np.concatenate([m[:, :md] for _, m in per_cat[c]], axis=1)
            pr, rc = _precision_recall(scores, matched, n_gt[c])
            recall[:, ci, mi] = rc
            if md == max_dets:
                precision[:, :, ci] = pr

    def mean_valid(x: np.ndarray) -> float:
        v = x[x > -1]
        return float(v.mean()) if v.size else -1.0

    out = {
        "mAP": mean_valid(precision),
        "AP50": mean_valid(precision[np.isclose(IOU_THRESHOLDS, 0.5)]),
        "AP75": mean_valid(precision[np.isclose(IOU_THRESHOLDS, 0.75)]),
    }
    for mi, md in enumerate(ar_dets):
        out[f"AR{md}"] = mean_valid(recall[:, :, mi])
    out["per_category"] = {c: mean_valid(precision[:, :, ci]) for ci, c in enumerate(categories)}
    return out


# ------------------------------------------------------------------------------------------ DAVIS J & F


def _boundary(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool one-pixel boundary: pixels that differ from their right, lower or lower-right neighbour
    (the bmap definition of the DAVIS / BSDS toolkits, offset half a pixel toward the origin)."""
    right = np.zeros_like(mask)
    down = np.zeros_like(mask)
    diag = np.zeros_like(mask)
    right[:, :-1] = mask[:, 1:]
    down[:-1, :] = mask[1:, :]
    diag[:-1, :-1] = mask[1:, 1:]
    b = (mask ^ right) | (mask ^ down) | (mask ^ diag)
    b[-1, :] = mask[-1, :] ^ right[-1, :]
    b[:, -1] = mask[:, -1] ^ down[:, -1]
    b[-1, -1] = False
    return b


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (xx**2 + yy**2 <= radius**2).astype(np.uint8)


def boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008, void: np.ndarray | None = None) -> float:
    """Boundary F-measure of two (H, W) bool masks; boundaries match within bound_th * image diagonal
    pixels (rounded up), or bound_th pixels when bound_th >= 1."""
    if void is not None:
        gt, pred = gt & ~void, pred & ~void
    radius = int(bound_th if bound_th >= 1 else np.ceil(bound_th * np.hypot(*gt.shape)))
    bg, bp = _boundary(gt), _boundary(pred)
    n_gt, n_pred = int(bg.sum()), int(bp.sum())
    if n_gt == 0 or n_pred == 0:  # DAVIS conventions for missing boundaries
        precision = 1.0 if n_pred == 0 else 0.0
        recall = 1.0 if n_gt == 0 else 0.0
        if n_gt == 0 and n_pred == 0:
            precision = recall = 1.0
    else:
        disk = _disk(radius)
        gt_dil = cv2.dilate(bg.astype(np.uint8), disk).astype(bool)
        pred_dil = cv2.dilate(bp.astype(np.uint8), disk).astype(bool)
        precision = float((bp & gt_dil).sum()) / n_pred
        recall = float((bg & pred_dil).sum()) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def region_j(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """Region similarity (IoU) of two (H, W) bool masks; 1 when both are empty (DAVIS convention)."""
    keep = ~void if void is not None else np.ones(gt.shape, bool)
    union = int(((gt | pred) & keep).sum())
    return 1.0 if union == 0 else int((gt & pred & keep).sum()) / union


def davis_j_and_f(
    gt: np.ndarray,
    pred: np.ndarray,
    num_objects: int,
    *,
    bound_th: float = 0.008,
    skip_first_last: bool = True,
) -> dict:
    """DAVIS J & F of one sequence: gt, pred (T, H, W) object-index maps (gt may hold void 255).

    skip_first_last drops frame 0 (the given mask) and the last frame, as the DAVIS 2017 semi-supervised
    evaluation does. Returns J, F, JF = (J + F) / 2, J_recall and F_recall (fraction of frames above 0.5),
    averaged over objects, plus J_per_object and F_per_object (lists of per-object frame means), which are
    what DAVIS averages across sequences.
    """
    if gt.shape != pred.shape or gt.ndim != 3:
        raise EdgevisError(
            f"davis_j_and_f needs gt and pred as (T, H, W) index maps of one shape; got {gt.shape} and {pred.shape}."
        )
    frames = range(gt.shape[0])
    if skip_first_last:
        if gt.shape[0] < 3:
            raise EdgevisError(
                f"skip_first_last drops the first and last frames, so it needs T >= 3; got T={gt.shape[0]}. "
                "Pass skip_first_last=False to score every frame."
            )
        frames = range(1, gt.shape[0] - 1)
    j = np.zeros((num_objects, len(frames)))
    f = np.zeros((num_objects, len(frames)))
    for fi, t in enumerate(frames):
        void = gt[t] == VOID_LABEL
        for o in range(num_objects):
            g, p = gt[t] == o + 1, pred[t] == o + 1
            j[o, fi] = region_j(g, p, void)
            f[o, fi] = boundary_f(g, p, bound_th, void)
    j_mean = float(j.mean()) if j.size else float("nan")
    f_mean = float(f.mean()) if f.size else float("nan")
    return {
        "J": j_mean,
        "F": f_mean,
        "JF": (j_mean + f_mean) / 2,
        "J_recall": float((j > 0.5).mean()) if j.size else float("nan"),
        "F_recall": float((f > 0.5).mean()) if f.size else float("nan"),
        "J_per_object": j.mean(axis=1).tolist(),
        "F_per_object": f.mean(axis=1).tolist(),
    }
