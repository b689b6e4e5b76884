"""IDOL tracker on scripted detections (no model): crossings, leaving/returning, NMS, bad state."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from edgevis.data import mask_iou_matrix
from edgevis.errors import EdgevisError
from edgevis.runtime.tracker import IdolTracker, TrackerConfig, TrackerStateError, bisoftmax

HW = (32, 48)
D = 16


def box_mask(x: int, y: int, size: int = 8) -> np.ndarray:
    m = np.zeros(HW, bool)
    m[max(0, y) : y + size, max(0, x) : x + size] = True
    return m


BASIS = np.linalg.qr(np.random.default_rng(0).normal(size=(D, D)))[0]  # (D, D) orthonormal columns


def identity(k: int) -> np.ndarray:
    """A fixed association embedding per object: raw, norm 4, orthogonal to the others (as a trained
    contrastive head gives)."""
    return (4.0 * BASIS[:, k]).astype(np.float32)


class Script:
    """Feeds frames of scripted detections; records the ids the tracker returns per object name."""

    def __init__(self, cfg: TrackerConfig | None = None, **kw) -> None:
        self.tracker = IdolTracker(cfg, **kw)
        self.rng = np.random.default_rng(0)

    def frame(self, dets: list[tuple[str, float, np.ndarray, np.ndarray]]) -> dict[str, int]:
        """dets: (name, score, embedding, mask). Returns name -> id of the detections that were tracked."""
        n = len(dets)
        scores = np.array([d[1] for d in dets], np.float32)
        embeds = np.stack([d[2] + self.rng.normal(0, 0.05, D).astype(np.float32) for d in dets]) if n \
            else np.zeros((0, D), np.float32)
        masks = np.stack([d[3] for d in dets]) if n else np.zeros((0, *HW), bool)
        out = self.tracker.step(scores, np.zeros(n, np.int64), embeds, masks)
        return {dets[int(i)][0]: int(t) for i, t in zip(out.index, out.track_ids)}


def test_bisoftmax_and_mask_iou():
    e = np.stack([identity(1), identity(2)])
    s = bisoftmax(e, e)
    assert s.shape == (2, 2) and s[0, 0] > 0.9 and s[1, 1] > 0.9
    a, b = box_mask(0, 0), box_mask(4, 0)
    iou = mask_iou_matrix(np.stack([a, b]).reshape(2, -1), np.stack([a]).reshape(1, -1))
    assert iou[0, 0] == 1.0 and iou[1, 0] == pytest.approx(32 / 96)


def test_two_objects_crossing_keep_their_ids():
    """A moves right in front, B moves left behind it; B is fully hidden for a few frames in the middle."""
    s = Script()
    ea, eb = identity(1), identity(2)
    seen: dict[str, list[int]] = {"a": [], "b": []}
    hidden = 0
    for t in range(16):
        xa, xb = 2 + 2 * t, 34 - 2 * t
        ma = box_mask(xa, 12)
        mb = box_mask(xb, 12) & ~ma  # visible part of B
        dets = [("a", 0.9, ea, ma)]
        if mb.sum() >= 40:  # a mostly hidden object is not detected
            dets.append(("b", 0.8, eb, mb))
        else:
            hidden += 1
        for k, v in s.frame(dets).items():
            seen[k].append(v)
    assert hidden >= 2  # the scene really hides B
    assert set(seen["a"]) == {1} and len(seen["a"]) == 16
    assert set(seen["b"]) == {2} and len(seen["b"]) == 16 - hidden
    assert s.tracker.next_id == 3


@pytest.mark.parametrize(("away", "same_id"), [(3, True), (9, True), (10, False), (14, False)])
def test_object_leaving_and_returning(away: int, same_id: bool):
    """An object away for up to 9 frames keeps its id; away for 10 or more (the memory) it gets a new one."""
    s = Script()
    ea, eb = identity(1), identity(2)
    ids_a = []
    for t in range(5 + away + 3):
        present = t < 5 or t >= 5 + away
        dets = [("b", 0.9, eb, box_mask(30, 20))]
        if present:
            dets.append(("a", 0.9, ea, box_mask(2 + t, 2)))
        ids = s.frame(dets)
        assert ids["b"] == 1 or ids["b"] == 2
        if present:
            ids_a.append(ids["a"])
    first, back = ids_a[:5], ids_a[5:]
    assert len(set(first)) == 1
    assert set(back) == ({first[0]} if same_id else {3})
    assert len({*first, 3}) == 2 or not same_id
    assert len(s.tracker.tracklets) == 2


def test_duplicates_are_suppressed_before_and_after_matching():
    s = Script()
    ea, eb = identity(1), identity(2)
    # frame 0: a near-duplicate of A (IoU 0.78 > 0.7) is removed before matching: one track only
    dup = box_mask(4, 4) | box_mask(5, 4, size=8)
    ids = s.frame([("a", 0.9, ea, box_mask(4, 4)), ("a_dup", 0.85, ea, dup)])
    assert ids == {"a": 1}
    # frame 1: a partial duplicate (IoU 0.45: kept by the 0.7 pre-NMS) with an embedding the matcher does not
    # accept: after matching it overlaps the matched A by > 0.3, so it opens no track
    partial = box_mask(8, 4, size=8)
    ids = s.frame([("a", 0.9, ea, box_mask(4, 4)), ("ghost", 0.95, identity(7), partial)])
    assert ids == {"a": 1}
    # a real new object far away with a good score opens track 2; a weak one (0.4 < add-new 0.5) does not
    ids = s.frame([("a", 0.9, ea, box_mask(4, 4)), ("b", 0.8, eb, box_mask(36, 20)),
                   ("weak", 0.4, identity(9), box_mask(20, 22))])
    assert ids == {"a": 1, "b": 2}
    assert [t.track_id for t in s.tracker.tracklets] == [1, 2]


def test_init_threshold_on_first_frame_and_thresholds_configurable():
    s = Script()
    ids = s.frame([("a", 0.3, identity(1), box_mask(2, 2)), ("low", 0.1, identity(2), box_mask(30, 2))])
    assert ids == {"a": 1}  # 0.3 > init 0.2 opens a track on the first frame; 0.1 is ignored
    strict = Script(TrackerConfig(init_score=0.5, add_new_score=0.9))
    assert strict.frame([("a", 0.3, identity(1), box_mask(2, 2))]) == {}
    assert strict.frame([("a", 0.8, identity(1), box_mask(2, 2))]) == {"a": 1}  # still empty: init applies
    assert strict.frame([("b", 0.8, identity(2), box_mask(30, 2)), ("a", 0.8, identity(1), box_mask(2, 2))]) == {"a": 1}


def test_momentum_and_memory_bounds():
    s = Script(TrackerConfig(memory_len=4))
    ea = identity(1)
    for t in range(7):
        s.frame([("a", 0.9, ea, box_mask(t, 2))])
    (trk,) = s.tracker.tracklets
    assert len(trk.memory) == 4 and trk.hits == 7
    assert np.allclose(trk.embed, ea, atol=0.1)  # momentum average of noisy copies of ea


def test_long_empty_stretch_drops_tracklets():
    s = Script(debug=True)
    ea = identity(1)
    assert s.frame([("a", 0.9, ea, box_mask(2, 2))]) == {"a": 1}
    for _ in range(50):
        assert s.frame([]) == {}
    assert s.tracker.tracklets == [] and s.tracker.frame == 51
    assert s.frame([("a", 0.9, ea, box_mask(2, 2))]) == {"a": 2}


def test_mask_resolution_change_between_frames():
    tr = IdolTracker(debug=True)
    e = identity(1)[None]
    out = tr.step(np.array([0.9]), np.array([0]), e, box_mask(2, 2)[None])
    big = np.zeros((1, 64, 96), bool)
    big[0, 4:20, 4:20] = True
    out2 = tr.step(np.array([0.9]), np.array([0]), e, big)
    assert out.track_ids.tolist() == out2.track_ids.tolist() == [1]


def test_non_finite_and_malformed_detections():
    tr = IdolTracker(debug=True)
    e = np.stack([identity(1), np.full(D, np.nan, np.float32)])
    out = tr.step(np.array([0.9, 0.9]), np.array([0, 0]), e, np.stack([box_mask(2, 2), box_mask(30, 2)]))
    assert out.track_ids.tolist() == [1]  # the NaN embedding is ignored
    with pytest.raises(EdgevisError, match=r"received scores \(2,\).*embeds \(2, 3\)"):
        tr.step(np.ones(2), np.zeros(2), np.ones((2, 3)), np.ones((3, 4, 4), bool))
    with pytest.raises(EdgevisError, match="embeddings are 8-d, the tracker holds 16-d"):
        tr.step(np.ones(1), np.zeros(1), np.ones((1, 8)), np.ones((1, 4, 4), bool))


def corrupted() -> Script:
    s = Script()
    s.frame([("a", 0.9, identity(1), box_mask(2, 2)), ("b", 0.9, identity(2), box_mask(30, 2))])
    s.tracker.tracklets[1].track_id = s.tracker.tracklets[0].track_id  # corrupted: two tracklets with id 1
    return s


def test_duplicate_ids_from_corrupted_state_are_repaired():
    s = corrupted()
    ids = s.frame([("a", 0.9, identity(1), box_mask(2, 2)), ("b", 0.9, identity(2), box_mask(30, 2))])
    assert len(set(ids.values())) == 2 and ids["a"] == 1
    assert ids["b"] >= 3 and s.tracker.next_id > ids["b"]
    s.tracker.check_invariants()


def test_invariants_checked_in_debug_mode(monkeypatch):
    s = corrupted()
    with pytest.raises(TrackerStateError, match=r"duplicate track ids \[1\].*reset the stream"):
        s.tracker.check_invariants()
    monkeypatch.setenv("EDGEVIS_DEBUG", "1")
    dbg = IdolTracker()
    assert dbg.debug
    dbg.tracklets, dbg.next_id, dbg.dim = s.tracker.tracklets, s.tracker.next_id, D
    with pytest.raises(TrackerStateError, match="duplicate track ids"):
        dbg.step(np.zeros(0), np.zeros(0), np.zeros((0, D)), np.zeros((0, *HW), bool))
    dbg.tracklets[1].track_id = 2
    dbg.tracklets[0].memory = deque([identity(1)] * 21)  # corrupted: no maxlen, too long
    with pytest.raises(TrackerStateError, match="holds 21 memory embeddings, expected at most 10"):
        dbg.check_invariants()


def test_config_rejects_bad_thresholds():
    with pytest.raises(EdgevisError, match=r"match_score = 1.5; expected a value in \[0, 1\]"):
        TrackerConfig(match_score=1.5)
    with pytest.raises(EdgevisError, match="memory_len=0"):
        TrackerConfig(memory_len=0)
