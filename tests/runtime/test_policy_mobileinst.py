"""MobileInst policy: key-frame schedule, kernel reuse, T = 1 == per-frame decoding, association, streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgevis.data.synthetic import make_clip
from edgevis.errors import EdgevisError
from edgevis.models.mobileinst import MobileInst
from edgevis.runtime.pipeline import open_backends
from edgevis.runtime.policies.mobileinst import Detections, MobileInstState, decode_detections
from edgevis.runtime.preprocess import masks_to_source, prepare
from edgevis.runtime.runner import StreamRunner


@pytest.fixture(scope="module")
def model() -> MobileInst:
    """Untrained tiny model whose class/objectness biases are raised so that frames have detections."""
    torch.manual_seed(0)
    m = MobileInst("mobileinst_tiny")
    with torch.no_grad():
        m.net.decoder.cls.bias.fill_(2.0)
        m.net.decoder.obj.bias.fill_(2.0)
    return m


@pytest.fixture(scope="module")
def clip():
    return make_clip(11, num_frames=7, height=200, width=300, num_objects=3)  # not a multiple of 64: letterboxed


def runner(model, n=1, **opts) -> StreamRunner:
    return StreamRunner(model.policy(**opts), open_backends(model, "torch"), num_streams=n)


def per_frame_decode(model, frame: np.ndarray, **opts):
    """Reference: every stage called directly, then decode_detections; no policy state."""
    pol = model.policy()
    x, lb = prepare(frame, pol.hw, pol.pre)
    with torch.no_grad():
        x_mask, x6 = model.stage("frame")(x)
        kernels, logits, obj = model.stage("key")(x_mask, x6)
        masks = model.stage("mask")(kernels, x_mask)[0].numpy()
    dets = decode_detections(logits[0].numpy(), obj[0].numpy(), masks, **opts)
    shown = masks[dets.query]
    keep = (shown > 0).any(axis=(1, 2))
    return masks_to_source(shown[keep], lb), dets.class_index[keep] + 1, dets.score[keep]


def test_key_interval_one_reproduces_per_frame_decoding_exactly(model, clip):
    r = runner(model, key_interval=1, average_scores=False)
    total = 0
    for frame in clip.frames:
        got = r.step([frame])[0]
        masks, classes, scores = per_frame_decode(model, frame)
        assert got.masks.shape == masks.shape and got.masks.shape[1:] == (200, 300)  # cropped back to the source
        np.testing.assert_array_equal(got.masks, masks)
        np.testing.assert_array_equal(got.class_ids, classes)
        np.testing.assert_array_equal(got.scores, scores)
        total += got.num_instances
    assert total > 0, "the test model should detect something"
    # with track-averaged class scores the masks are still exactly the per-frame ones
    r2 = runner(model, key_interval=1)
    for frame in clip.frames[:3]:
        np.testing.assert_array_equal(r2.step([frame])[0].masks, per_frame_decode(model, frame)[0])


def test_key_frames_decode_and_frames_between_reuse_kernels(model, clip):
    r3 = runner(model, key_interval=3)
    r1 = runner(model, key_interval=1)
    key_calls = []
    for t, frame in enumerate(clip.frames):
        a, b = r3.step([frame])[0], r1.step([frame])[0]
        key_calls.append("key" in a.timings_ms)
        assert "frame" in a.timings_ms and "mask" in a.timings_ms
        if t % 3 == 0:  # key frame: same kernels, same decoding
            np.testing.assert_array_equal(a.masks, b.masks)
            kernels_key = r3.states[0].kernels.clone()
            ids_key = r3.states[0].track_ids.copy()
        else:  # kernels and instance list of the key frame are reused
            torch.testing.assert_close(r3.states[0].kernels, kernels_key, rtol=0, atol=0)
            assert set(a.track_ids.tolist()) <= set(ids_key.tolist())
    assert key_calls == [True, False, False, True, False, False, True]


def test_reset_reproduces_frame_zero(model, clip):
    r = runner(model)
    first = r.step([clip.frames[0]])[0]
    for f in clip.frames[1:4]:
        r.step([f])
    r.reset(0)
    again = r.step([clip.frames[0]])[0]
    np.testing.assert_array_equal(first.masks, again.masks)
    np.testing.assert_array_equal(first.track_ids, again.track_ids)


def test_two_streams_batched_match_alone(model, clip):
    other = make_clip(12, num_frames=4, height=200, width=300, num_objects=2)
    a, b, both = runner(model), runner(model), runner(model, n=2)
    for t in range(4):
        ra, rb = a.step([clip.frames[t]])[0], b.step([other.frames[t]])[0]
        out = both.step([clip.frames[t], other.frames[t]])
        for got, ref in ((out[0], ra), (out[1], rb)):
            np.testing.assert_array_equal(got.track_ids, ref.track_ids)
            inter = np.logical_and(got.masks, ref.masks).sum()
            union = np.logical_or(got.masks, ref.masks).sum()
            assert union == 0 or inter / union > 0.99


def _kernels(rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rows.astype(np.float32))[None]  # (1, Q, Dm)


def test_hungarian_association_keeps_ids_and_averages_classes(model):
    pol = model.policy(key_interval=3, match_cost=0.5)
    st = MobileInstState(0)
    rng = np.random.default_rng(0)
    q, dm = 6, 8
    base = rng.normal(size=(q, dm))
    st.kernels = _kernels(base)
    pol._associate(st, Detections(np.array([0, 1, 2]), np.array([[.9, .1], [.2, .8], [.6, .4]], np.float32),
                                  np.array([.9, .8, .7], np.float32)))
    np.testing.assert_array_equal(st.track_ids, [1, 2, 3])
    # next key frame: the same objects now sit in other queries (scaled kernels, cosine 1), plus a new one
    moved = base.copy()
    moved[[3, 4, 5]] = base[[2, 0, 1]] * 3.0
    moved[1] = rng.normal(size=dm)  # unrelated kernel -> new track
    st.kernels = _kernels(moved)
    pol._associate(st, Detections(np.array([4, 5, 3, 1]),
                                  np.array([[.1, .9], [.2, .8], [.3, .7], [.5, .5]], np.float32),
                                  np.array([.5, .6, .7, .4], np.float32)))
    np.testing.assert_array_equal(st.track_ids, [1, 2, 3, 4])
    # track 1: class probs (.9,.1) then (.1,.9) -> tie broken by argmax to class index 0; track 3: (.6,.4)+(.3,.7)
    np.testing.assert_array_equal(st.class_ids, [1, 2, 2, 1])
    np.testing.assert_allclose(st.scores, [(.9 + .5) / 2, (.8 + .6) / 2, (.7 + .7) / 2, .4], rtol=1e-6)


def test_lost_tracks_expire_after_max_misses(model):
    pol = model.policy(max_misses=1)
    st = MobileInstState(0)
    eye = np.eye(4)
    st.kernels = _kernels(eye)
    one = np.array([[.9]], np.float32)
    pol._associate(st, Detections(np.array([0]), one, np.array([.9], np.float32)))
    for _ in range(2):  # two key frames without it
        pol._associate(st, Detections(np.zeros((0,), np.int64), np.zeros((0, 1), np.float32), np.zeros((0,), np.float32)))
    pol._associate(st, Detections(np.array([0]), one, np.array([.9], np.float32)))
    assert st.track_ids.tolist() == [2]  # the old track expired: a new id


def test_bad_key_interval_is_refused(model):
    with pytest.raises(EdgevisError, match="key_interval .* must be >= 1, received 0"):
        model.policy(key_interval=0)
