"""SeqFormer runner policy: ring buffer + padding, decode schedule, cross-window linking, streams, reset."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from edgevis.errors import EdgevisError
from edgevis.models.recurrent_seqformer import recurrent_seqformer
from edgevis.models.seqformer import seqformer
from edgevis.runtime.pipeline import open_backends
from edgevis.runtime.policies.seqformer import SeqFormerPolicy, SeqFormerState, WindowFrame, padded_window
from edgevis.runtime.preprocess import letterbox_geometry
from edgevis.runtime.runner import StreamRunner


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return recurrent_seqformer("recurrent_seqformer_tiny", tiny=True)


@pytest.fixture(scope="module")
def clip_frames():
    from edgevis.data.synthetic import make_clip

    return list(make_clip(7, num_frames=7, height=96, width=160, num_objects=2).frames)


def runner(model, n=1, **opts):
    return StreamRunner(model.policy(**opts), open_backends(model, "torch"), num_streams=n)


def test_padded_window_repeats_first_frame():
    buf = deque(WindowFrame(i, torch.full((1, 1, 1), float(i)), torch.zeros(1)) for i in range(2))
    assert [f.index for f in padded_window(buf, 5)] == [0, 0, 0, 0, 1]
    buf.extend(WindowFrame(i, torch.zeros(1), torch.zeros(1)) for i in range(2, 7))
    assert [f.index for f in padded_window(buf, 5)] == [2, 3, 4, 5, 6]


def test_results_every_frame_at_source_resolution(model, clip_frames):
    r = runner(model)
    for f in clip_frames[:3]:
        res = r.step([f])[0]
        assert res.masks.shape == (model.cfg.top_k, 96, 160) and res.masks.dtype == bool
        assert len(set(res.track_ids.tolist())) == len(res.track_ids)
        assert "frame" in res.timings_ms and "clip" in res.timings_ms
    st = r.states[0]
    assert len(st.buffer) == 3 and st.hidden is not None and len(st.hidden) == 4


def test_identical_frames_keep_track_ids(model, clip_frames):
    r = runner(seqformer("seqformer_tiny", tiny=True))
    ids = [r.step([clip_frames[0]])[0].track_ids for _ in range(4)]
    for later in ids[1:]:  # a still scene: the same instances link to the same tracks
        assert set(later.tolist()) == set(ids[0].tolist())


def test_decode_every_s_frames_holds_results(model, clip_frames):
    r = runner(model, decode_every=3)
    out = [r.step([f])[0] for f in clip_frames[:5]]
    decoded = ["clip" in o.timings_ms for o in out]
    assert decoded == [True, False, False, True, False]
    np.testing.assert_array_equal(out[1].masks, out[0].masks)
    np.testing.assert_array_equal(out[2].track_ids, out[0].track_ids)


def test_two_streams_match_alone_and_reset(model, clip_frames):
    a, b = runner(model), runner(model)
    ra = [a.step([f])[0] for f in clip_frames[:4]]
    rb = [b.step([f])[0] for f in clip_frames[:4][::-1]]
    both = runner(model, n=2)
    for t, (fa, fb) in enumerate(zip(clip_frames[:4], clip_frames[:4][::-1])):
        oa, ob = both.step([fa, fb])
        np.testing.assert_array_equal(oa.track_ids, ra[t].track_ids)
        np.testing.assert_array_equal(ob.track_ids, rb[t].track_ids)
        assert (oa.masks == ra[t].masks).mean() > 0.999 and (ob.masks == rb[t].masks).mean() > 0.999
    both.reset(0)
    again = both.step([clip_frames[0], None])[0]
    assert again.index == 0
    assert (again.masks == ra[0].masks).mean() > 0.999
    np.testing.assert_array_equal(again.track_ids, ra[0].track_ids)


def _fake_out(order, k=4, t=3, h=8, w=8):
    """Clip outputs with K instances: instance j is a horizontal band j with embedding e_j; rows permuted by ``order``."""
    masks = np.full((k, t, h, w), -5.0, np.float32)
    emb = np.eye(k, 16, dtype=np.float32)
    for j in range(k):
        masks[j, :, 2 * j : 2 * j + 2] = 5.0
    o = np.asarray(order)
    return {
        "scores": torch.from_numpy(np.linspace(0.9, 0.6, k, dtype=np.float32))[None],
        "labels": torch.from_numpy(o.astype(np.int64))[None],
        "queries": torch.from_numpy(np.arange(k, dtype=np.int64))[None],  # slots do not follow instances here
        "embed": torch.from_numpy(emb[o])[None],
        "masks": torch.from_numpy(masks[o])[None],
    }


def test_linking_follows_instances_across_windows(model):
    pol = SeqFormerPolicy(model)
    st = SeqFormerState(0)
    st.letterbox = letterbox_geometry((32, 32), (32, 32))
    window = [WindowFrame(i, torch.zeros(1), torch.zeros(1)) for i in range(3)]
    pol._link(st, window, _fake_out([0, 1, 2, 3]))
    first = dict(zip(st.held.labels.tolist(), st.held.track_ids.tolist()))  # label j == instance j
    window2 = [WindowFrame(i, torch.zeros(1), torch.zeros(1)) for i in range(1, 4)]
    pol._link(st, window2, _fake_out([2, 0, 3, 1]))  # same instances, shuffled query order
    second = dict(zip(st.held.labels.tolist(), st.held.track_ids.tolist()))
    assert first == second and sorted(first.values()) == [1, 2, 3, 4]


def test_bad_options(model):
    with pytest.raises(EdgevisError, match="decode_every=0"):
        model.policy(decode_every=0)
    with pytest.raises(EdgevisError, match="takes T=5 frames"):
        model.policy(window=3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["recurrent_seqformer_tiny", "seqformer_tiny"])
def test_onnxruntime_streaming_equals_torch(name, tmp_path):
    from edgevis.check.runner_parity import run_check

    assert run_check(name, frames=30, out_dir=tmp_path / "check", flavors=("portable",))


def test_assignment_leaves_weak_pairs_unmatched():
    from edgevis.runtime.policies.seqformer import assign_with_unmatched

    rows, cols = assign_with_unmatched(np.array([[1.0, 0.9], [0.95, -np.inf], [-np.inf, -np.inf]]))
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0)]
    rows, cols = assign_with_unmatched(np.array([[0.1, 2.0], [-np.inf, 1.5]]))  # one strong pair beats two weak
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 1)]
