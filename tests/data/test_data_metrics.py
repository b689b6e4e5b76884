"""Metrics on hand-made cases whose answers are worked out in the comments."""

import numpy as np
import pytest

from edgevis.data import SyntheticClip, boundary_f, davis_j_and_f, mask_iou_matrix, region_j, rle_encode, ytvis_map
from edgevis.errors import EdgevisError

T, H, W = 4, 4, 10


def _clip(tracks: list[np.ndarray], classes: list[int]) -> SyntheticClip:
    masks = np.stack(tracks, axis=1) if tracks else np.zeros((T, 0, H, W), bool)  # (T, N, H, W)
    return SyntheticClip(np.zeros((T, H, W, 3), np.uint8), masks, list(range(1, len(tracks) + 1)), classes, "v")


def _track(*rows_cols) -> np.ndarray:
    """(T, H, W) track; one (row, col_start, col_end) or None per frame."""
    m = np.zeros((T, H, W), bool)
    for t, rc in enumerate(rows_cols):
        if rc is not None:
            r, c0, c1 = rc
            m[t, r, c0:c1] = True
    return m


def _pred(masks: np.ndarray, score: float, cat: int = 1, video: int = 1) -> dict:
    return {"video_id": video, "score": score, "category_id": cat, "masks": masks}


GT = _track((0, 0, 10), (1, 0, 10), None, None)
# frame 0: identical (I 10, U 10); frame 1: half (I 5, U 10); frame 2: prediction only (U 5); frame 3: both absent
PRED_06 = _track((0, 0, 10), (1, 0, 5), (2, 0, 5), None)  # spatio-temporal IoU = 15 / 25 = 0.6
FAR = _track(None, (3, 0, 10), None, None)  # IoU 0 with GT


def test_mask_iou_matrix_known_values():
    a = np.zeros((2, 2, 4), bool)
    a[0, 0, :] = True  # 4 px
    a[1, :, :2] = True  # 4 px
    b = np.zeros((3, 2, 4), bool)
    b[0, 0, :2] = True  # 2 px inside both a[0] and a[1]
    b[1] = a[0]
    iou = mask_iou_matrix(a, b)
    assert np.allclose(iou, [[2 / 4, 1.0, 0.0], [2 / 4, 2 / 6, 0.0]])
    # flattening (T, H, W) tracks gives the spatio-temporal IoU
    assert mask_iou_matrix(GT[None], PRED_06[None])[0, 0] == pytest.approx(0.6)


def test_perfect_predictions_give_map_1():
    second = _track(None, (3, 0, 4), (3, 0, 4), (3, 0, 4))
    gt = [_clip([GT, second], [1, 2]), _clip([second], [2])]
    preds = [_pred(GT, 0.9), _pred(second, 0.8, cat=2), _pred(second, 0.7, cat=2, video=2)]
    r = ytvis_map(gt, preds)
    assert r["mAP"] == r["AP50"] == r["AP75"] == r["AR100"] == pytest.approx(1.0)
    assert r["per_category"] == {1: pytest.approx(1.0), 2: pytest.approx(1.0)}


@pytest.mark.parametrize("as_rle", [False, True])
def test_known_iou_06_passes_three_of_ten_thresholds(as_rle):
    pred = _pred(PRED_06, 0.9)
    if as_rle:  # results-file form: compressed RLE per frame, None where absent
        del pred["masks"]
        pred["segmentations"] = [rle_encode(m, compressed=True) if m.any() else None for m in PRED_06]
    r = ytvis_map([_clip([GT], [1])], [pred])
    # IoU 0.6 matches at .50, .55, .60 (AP 1 each) and fails at .65 ... .95 (AP 0): mAP = 3 / 10
    assert r["mAP"] == pytest.approx(0.3)
    assert r["AP50"] == pytest.approx(1.0) and r["AP75"] == 0.0


def test_false_positive_ranked_above_the_true_positive_halves_ap():
    gt = [_clip([GT], [1])]
    assert ytvis_map(gt, [_pred(GT, 0.8), _pred(FAR, 0.7)])["mAP"] == pytest.approx(1.0)
    # ranked FP, TP: precision (0, 1/2) at recall (0, 1) -> envelope 1/2 at all 101 recall points
    assert ytvis_map(gt, [_pred(GT, 0.7), _pred(FAR, 0.8)])["mAP"] == pytest.approx(0.5)
    # the same when the FP lies in another video, one without any track
    gt2 = [_clip([GT], [1]), _clip([], [])]
    assert ytvis_map(gt2, [_pred(GT, 0.7), _pred(FAR, 0.8, video=2)])["mAP"] == pytest.approx(0.5)
    # with max_dets=1 only the FP is kept: AP 0
    assert ytvis_map(gt, [_pred(GT, 0.7), _pred(FAR, 0.8)], max_dets=1)["mAP"] == 0.0


def test_two_tracks_tp_fp_tp():
    other = _track((3, 0, 10), None, None, None)
    gt = [_clip([GT, other], [1, 1])]
    preds = [_pred(GT, 0.9), _pred(FAR, 0.8), _pred(other, 0.7)]
    # recall (.5, .5, 1), precision (1, 1/2, 2/3) -> envelope (1, 2/3, 2/3):
    # 51 recall points in [0, .5] at 1, 50 points in (.5, 1] at 2/3
    assert ytvis_map(gt, preds)["mAP"] == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_empty_wrong_class_and_unmatched_categories():
    gt = [_clip([GT], [1])]
    r = ytvis_map(gt, [])
    assert r["mAP"] == 0.0 and r["AR100"] == 0.0
    # a prediction of a category absent from the ground truth has no AP of its own (-1, as COCO)
    r = ytvis_map(gt, [_pred(GT, 0.9, cat=3)])
    assert r["mAP"] == 0.0 and r["per_category"] == {1: 0.0, 3: -1.0}


def test_unknown_video_id_is_reported():
    with pytest.raises(EdgevisError, match="video_id 7, which is not among the ground-truth video ids"):
        ytvis_map([_clip([GT], [1])], [_pred(GT, 0.9, video=7)])


def _labels(*rects, t=5, h=40, w=40) -> np.ndarray:
    """(T, H, W) label map with (label, y0, y1, x0, x1) rectangles in every frame."""
    lab = np.zeros((t, h, w), np.uint8)
    for v, y0, y1, x0, x1 in rects:
        lab[:, y0:y1, x0:x1] = v
    return lab


def test_j_and_f_of_identical_masks_are_1():
    gt = _labels((1, 5, 15, 5, 15), (2, 20, 30, 20, 35))
    r = davis_j_and_f(gt, gt.copy(), 2)
    assert r["J"] == r["F"] == r["JF"] == r["J_recall"] == 1.0
    assert r["J_per_object"] == [1.0, 1.0]


def test_j_of_known_overlap():
    gt = _labels((1, 0, 10, 0, 10))
    pred = _labels((1, 0, 10, 5, 15))  # 50 shared pixels of 150 in the union
    r = davis_j_and_f(gt, pred, 1)
    assert r["J"] == pytest.approx(1 / 3) and r["J_recall"] == 0.0
    assert region_j(gt[0] == 1, pred[0] == 1) == pytest.approx(1 / 3)


def test_f_of_disjoint_far_masks_is_0_and_near_miss_is_1():
    gt = _labels((1, 2, 10, 2, 10), h=60, w=60)
    far = _labels((1, 40, 50, 40, 50), h=60, w=60)  # tolerance ceil(0.008 * 84.9) = 1 px
    assert davis_j_and_f(gt, far, 1)["F"] == 0.0
    near = _labels((1, 2, 10, 3, 11), h=60, w=60)  # shifted 1 px: every boundary pixel within tolerance
    assert boundary_f(gt[0] == 1, near[0] == 1) == pytest.approx(1.0)
    # a far copy of the square added to the prediction: recall 1, precision 1/2 -> F = 2/3
    copy = np.roll(gt[0] == 1, (40, 40), axis=(0, 1))
    assert boundary_f(gt[0] == 1, (gt[0] == 1) | copy) == pytest.approx(2 / 3)


def test_first_and_last_frames_are_excluded_and_void_ignored():
    gt = _labels((1, 5, 15, 5, 15))
    pred = gt.copy()
    pred[0] = 0  # first frame is the given mask: not scored
    pred[-1] = 0  # last frame: not scored either
    assert davis_j_and_f(gt, pred, 1)["J"] == 1.0
    assert davis_j_and_f(gt, pred, 1, skip_first_last=False)["J"] == pytest.approx(3 / 5)
    gt_void = gt.copy()
    gt_void[:, 30:, :] = 255
    pred_void = gt.copy()
    pred_void[:, 30:, :] = 1  # prediction inside void pixels does not count
    assert davis_j_and_f(gt_void, pred_void, 1)["J"] == 1.0
    # an object absent from both gt and prediction scores 1 (DAVIS convention)
    assert davis_j_and_f(gt, gt, 2)["J_per_object"] == [1.0, 1.0]
    with pytest.raises(EdgevisError, match="needs T >= 3; got T=2.*skip_first_last=False"):
        davis_j_and_f(gt[:2], gt[:2], 1)
