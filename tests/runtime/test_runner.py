from __future__ import annotations

import numpy as np
import pytest
import torch

from edgevis.errors import EdgevisError
from edgevis.runtime.backends import OrtBackend, TorchBackend
from edgevis.runtime.pipeline import open_backends
from edgevis.runtime.preprocess import prepare
from edgevis.runtime.runner import StreamRunner


def torch_runner(model, n=1):
    return StreamRunner(model.policy(), open_backends(model, "torch"), num_streams=n)


def test_streaming_equals_clip(toy, frames):
    runner = torch_runner(toy)
    for f in frames:
        runner.step([f])
    spec = toy.iospec("frame")
    clip = torch.cat([prepare(f, (64, 96), spec.preprocess)[0] for f in frames])[None]  # (1, T, H, W, 3)
    logits, scores, h_clip = toy.net(clip, spec.init_state({"B": 1})["h"])
    assert logits.shape[:2] == scores.shape[:2] == (1, len(frames))
    torch.testing.assert_close(scores, logits.amax(dim=(3, 4)))
    torch.testing.assert_close(runner.states[0].h, h_clip, rtol=0, atol=1e-6)


def test_reset_reproduces_frame0(toy, frames):
    runner = torch_runner(toy)
    first = runner.step([frames[0]])[0]
    for f in frames[1:5]:
        runner.step([f])
    runner.reset(0)
    again = runner.step([frames[0]])[0]
    assert again.index == 0
    np.testing.assert_array_equal(first.masks, again.masks)
    np.testing.assert_array_equal(first.track_ids, again.track_ids)


def test_two_streams_interleaved_match_alone(toy, frames):
    a_alone, b_alone = torch_runner(toy), torch_runner(toy)
    ra = [a_alone.step([f])[0] for f in frames]
    rb = [b_alone.step([f])[0] for f in frames[::-1]]
    both = torch_runner(toy, n=2)
    for t, (fa, fb) in enumerate(zip(frames, frames[::-1])):
        out = both.step([fa, fb])
        assert [r.stream for r in out] == [0, 1]
        np.testing.assert_array_equal(out[0].masks, ra[t].masks)
        np.testing.assert_array_equal(out[1].masks, rb[t].masks)
    torch.testing.assert_close(both.states[0].h, a_alone.states[0].h, rtol=0, atol=1e-6)
    torch.testing.assert_close(both.states[1].h, b_alone.states[0].h, rtol=0, atol=1e-6)


def test_stream_without_frame_keeps_state(toy, frames):
    runner = torch_runner(toy, n=2)
    runner.step([frames[0], frames[0]])
    h1 = runner.states[1].h.clone()
    out = runner.step([frames[1], None])
    assert len(out) == 1 and out[0].stream == 0
    assert torch.equal(runner.states[1].h, h1) and runner.states[1].index == 1


def test_resolution_change_resets_stream(toy, frames):
    runner = torch_runner(toy)
    runner.step([frames[0]])
    runner.step([frames[1]])
    bigger = np.zeros((60, 100, 3), np.uint8)
    res = runner.step([bigger])[0]
    assert res.reset and res.index == 0 and res.masks.shape[1:] == (60, 100)


def test_grayscale_and_rgba_frames_accepted(toy):
    runner = torch_runner(toy)
    gray = np.full((48, 80), 128, np.uint8)
    rgba = np.full((48, 80, 4), 128, np.uint8)
    assert runner.step([gray])[0].source_hw == (48, 80)
    assert runner.step([rgba])[0].source_hw == (48, 80)


def test_timings_per_stage(toy, frames):
    res = torch_runner(toy).step([frames[0]])[0]
    assert set(res.timings_ms) >= {"frame", "total", "overhead"}
    assert res.timings_ms["total"] >= res.timings_ms["frame"] > 0


def test_wrong_frame_count_is_clear(toy, frames):
    with pytest.raises(EdgevisError, match="2 frames for 1 streams"):
        torch_runner(toy).step([frames[0], frames[1]])


def test_ort_runner_matches_torch_over_frames(toy, frames, tmp_path):
    ort_backends = open_backends(toy, "ort", onnx_dir=tmp_path, threads=1)
    assert isinstance(ort_backends["frame"], OrtBackend)
    r_ort = StreamRunner(toy.policy(), ort_backends, num_streams=2)
    r_pt = torch_runner(toy, n=2)
    for f in frames:
        a, b = r_ort.step([f, f[::-1].copy()]), r_pt.step([f, f[::-1].copy()])
        for x, y in zip(a, b):
            assert (x.masks != y.masks).mean() < 1e-3
    torch.testing.assert_close(r_ort.states[0].h, r_pt.states[0].h, rtol=0, atol=1e-4)


def test_torch_backend_rejects_bad_feed(toy):
    b = TorchBackend(toy.stage("frame"), toy.iospec("frame"))
    feeds = toy.iospec("frame").example_inputs()
    feeds["h"] = feeds["h"].double()
    with pytest.raises(EdgevisError, match=r"input 'h': received dtype float64, expected float32"):
        b(feeds)


def test_backend_checks_each_feed_signature_once_and_still_rejects_bad_feeds(toy, monkeypatch):
    spec = toy.iospec("frame")
    b = TorchBackend(toy.stage("frame"), spec)
    calls = []
    real = spec.validate
    monkeypatch.setattr(spec, "validate", lambda feeds: calls.append(1) or real(feeds))
    feeds = spec.example_inputs()
    b(feeds)
    b(spec.example_inputs(seed=1))  # same names, shapes and dtypes: not re-checked
    assert len(calls) == 1
    bad = dict(feeds, h=feeds["h"][..., :-1])
    with pytest.raises(EdgevisError, match=r"input 'h': received shape"):
        b(bad)
    with pytest.raises(EdgevisError, match=r"input 'h': received list"):
        b(dict(feeds, h=[0.0]))


def test_plain_outputs_are_brought_to_the_host_and_states_stay_put():
    from edgevis.runtime.policy import to_host

    y, h = torch.ones(2), torch.empty(2, device="meta")  # "meta" stands in for a device tensor
    out = to_host({"y": y, "h_out": h}, frozenset({"h_out"}))
    assert out["y"] is y and out["h_out"] is h  # host tensors untouched; state never copied
    with pytest.raises((NotImplementedError, RuntimeError)):  # a plain device output is copied to the host
        to_host({"y": h}, frozenset())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_backend_runner_keeps_state_on_device(toy, frames):
    runner = StreamRunner(toy.policy(), open_backends(toy, "torch", device="cuda"))
    res = runner.step([frames[0]])[0]
    assert res.masks.dtype == bool and runner.states[0].h.device.type == "cuda"
