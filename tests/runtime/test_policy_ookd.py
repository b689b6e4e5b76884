"""OOKD policy in the StreamRunner: scripted detections through a fake backend, and the real tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgevis.errors import EdgevisError
from edgevis.models.ookd import ookd
from edgevis.runtime.backends.base import Backend
from edgevis.runtime.pipeline import open_backends
from edgevis.runtime.runner import StreamRunner
from edgevis.runtime.tracker import TrackerStateError

K, E = 10, 32
MASK_HW = (32, 56)  # stride 4 of 128x224


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ookd("ookd_tiny", tiny=True)


def one_hot(k: int) -> torch.Tensor:
    e = torch.zeros(E)
    e[k] = 4.0
    return e


class ScriptedBackend(Backend):
    """Returns scripted detections: ``script(call_index, stream_in_batch) -> [(score, label, k, (x, y))]``
    (embedding one_hot(k), an 8x8 box mask at (x, y) on the stride-4 grid); other rows score 0."""

    kind = "scripted"

    def __init__(self, spec, script) -> None:
        super().__init__(spec)
        self.script, self.calls, self.batches = script, 0, []

    def _run(self, feeds, dims):
        b = dims["B"]
        self.batches.append(b)
        logits = torch.full((b, K), -20.0)
        labels = torch.zeros((b, K), dtype=torch.int64)
        embeds = torch.zeros((b, K, E))
        masks = torch.full((b, K, *MASK_HW), -5.0)
        for i in range(b):
            for r, (score, label, k, (x, y)) in enumerate(self.script(self.calls, i)):
                logits[i, r] = float(np.log(score / (1 - score)))
                labels[i, r], embeds[i, r] = label, one_hot(k)
                masks[i, r, y : y + 8, x : x + 8] = 5.0
        self.calls += 1
        return {"logits": logits, "scores": logits.sigmoid(), "labels": labels, "boxes": torch.zeros((b, K, 4)),
                "embeds": embeds, "masks": masks}


def scripted_runner(model, script, n=1, **opts):
    backend = ScriptedBackend(model.iospec("frame"), script)
    return StreamRunner(model.policy(**opts), {"frame": backend}, num_streams=n), backend


def frame(h=256, w=448):
    return np.full((h, w, 3), 90, np.uint8)


def crossing(t, _i):
    return [(0.9, 2, 0, (2 + 3 * t, 10)), (0.8, 4, 1, (46 - 3 * t, 20))]


def test_scripted_tracks_through_runner(model):
    r, _ = scripted_runner(model, crossing)
    for _t in range(12):
        res = r.step([frame()])[0]
        assert res.masks.shape == (2, 256, 448) and res.masks.dtype == bool
        assert res.track_ids.tolist() == [1, 2] and res.class_ids.tolist() == [3, 5]
        assert np.allclose(res.scores, [0.9, 0.8], atol=1e-6)
        assert abs(int(res.masks[0].sum()) - 64 * 64) < 150  # 8x8 at stride 4 of a half-size input: ~64x64 pixels
    assert "frame" in res.timings_ms


def test_streams_batched_and_isolated(model):
    def script(t, i):
        return crossing(t, i) if i == 0 else [(0.7, 1, 5, (20, 20))]

    r, backend = scripted_runner(model, script, n=2)
    for _ in range(3):
        a, b = r.step([frame(), frame()])
        assert a.track_ids.tolist() == [1, 2] and b.track_ids.tolist() == [1]
    assert backend.batches == [2, 2, 2]  # one call per step for both streams


def test_long_empty_stretch_then_return(model):
    def script(t, _i):
        return [] if 2 <= t < 40 else [(0.9, 0, 0, (10, 10))]

    r, _ = scripted_runner(model, script, debug=True)
    ids = [r.step([frame()])[0].track_ids.tolist() for _ in range(42)]
    assert ids[:2] == [[1], [1]] and all(x == [] for x in ids[2:40]) and ids[40:] == [[2], [2]]
    assert len(r.states[0].tracker.tracklets) == 1


def test_resolution_change_resets_the_stream(model):
    r, _ = scripted_runner(model, lambda t, i: [(0.9, 0, t % 2, (10, 10))] if t < 3 else [(0.9, 0, 3, (30, 10))])
    for _ in range(3):
        r.step([frame()])
    assert r.states[0].tracker.next_id > 2  # the embedding flips each frame: new ids
    res = r.step([frame(240, 320)])[0]
    assert res.reset and res.track_ids.tolist() == [1] and res.masks.shape[1:] == (240, 320)


def test_corrupted_state_repaired_or_reported(model):
    def script(t, _i):
        return [(0.9, 0, 0, (2, 2)), (0.9, 0, 1, (40, 20))]

    r, _ = scripted_runner(model, script)
    r.step([frame()])
    trk = r.states[0].tracker
    trk.tracklets[1].track_id = trk.tracklets[0].track_id  # corrupted: duplicate ids
    ids = r.step([frame()])[0].track_ids.tolist()
    assert len(set(ids)) == 2
    r, _ = scripted_runner(model, script, debug=True)
    r.step([frame()])
    r.states[0].tracker.tracklets[1].track_id = 1
    with pytest.raises(TrackerStateError, match="duplicate track ids"):
        r.step([frame()])


def test_policy_options(model):
    p = model.policy(match_score=0.7, max_unseen=3)
    assert p.tracker_cfg.match_score == 0.7 and p.new_state(0).tracker.cfg.max_unseen == 3
    with pytest.raises(EdgevisError, match=r"unknown options \['bogus'\]"):
        model.policy(bogus=1)


def test_real_tiny_model_runner(model):
    from edgevis.data.synthetic import make_clip

    clip = make_clip(5, num_frames=4, height=128, width=224, num_objects=2)
    opts = {"init_score": 0.0, "add_new_score": 0.0}  # untrained weights score ~0.01: let detections through
    r = StreamRunner(model.policy(**opts), open_backends(model, "torch"))
    first = [r.step([f])[0] for f in clip.frames]
    for res in first:
        assert res.masks.shape[1:] == (128, 224) and len(set(res.track_ids.tolist())) == len(res.track_ids)
        assert ((res.class_ids >= 1) & (res.class_ids <= 42)).all()
    assert first[0].num_instances > 0
    r.reset(0)
    again = r.step([clip.frames[0]])[0]
    assert again.track_ids.tolist() == first[0].track_ids.tolist() and np.array_equal(again.masks, first[0].masks)
