"""SpVOS policy: first masks and their errors, memory ring schedule, object slots, caches, reset, streams."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from edgevis.data import make_clip, masks_to_labels, write_palette_png
from edgevis.errors import EdgevisError
from edgevis.models.spvos import build_spvos
from edgevis.runtime.pipeline import open_backends
from edgevis.runtime.runner import StreamRunner

H, W = 96, 160  # spvos_tiny's input size


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_spvos("spvos_tiny", tiny=True)


@pytest.fixture(scope="module")
def clip():
    return make_clip(4, num_frames=12, height=H, width=W, num_objects=2)


def runner(model, **opts) -> StreamRunner:
    return StreamRunner(model.policy(**opts), open_backends(model, "torch"))


def first_labels(clip) -> np.ndarray:
    return masks_to_labels(clip.masks[0]).astype(np.int64)


def test_missing_first_mask_is_a_clear_error(model, clip) -> None:
    r = runner(model)
    with pytest.raises(EdgevisError, match=r"needs the first frame's object masks.*--first-mask"):
        r.step([clip.frames[0]])


def test_mask_without_objects_is_a_clear_error(model) -> None:
    with pytest.raises(EdgevisError, match="no objects"):
        model.policy(first_mask=np.zeros((H, W), np.int64))


def test_more_objects_than_k_names_k_and_the_fix(model) -> None:
    labels = np.zeros((H, W), np.int64)
    for i in range(5):
        labels[10 * i: 10 * i + 5, :10] = i + 1
    with pytest.raises(EdgevisError, match=r"5 objects .* K=3 .*max_objects=5"):
        model.policy(first_mask=labels)


def test_first_mask_png_and_track_ids(model, clip, tmp_path: Path) -> None:
    labels = first_labels(clip) * 3  # palette values 3 and 6 become the track ids
    write_palette_png(tmp_path / "m.png", labels.astype(np.uint8))
    r = runner(model, first_mask=str(tmp_path / "m.png"))
    res = r.step([clip.frames[0]])[0]
    assert res.track_ids.tolist() == [3, 6]
    np.testing.assert_array_equal(res.masks, clip.masks[0])  # frame 0 returns the given masks
    res = r.step([clip.frames[1]])[0]
    assert res.track_ids.tolist() == [3, 6] and res.masks.shape == (2, H, W)


def test_wrong_size_mask_is_resized_with_a_warning(model, clip, caplog) -> None:
    small = first_labels(clip)[::2, ::2].copy()
    r = runner(model, first_mask=small)
    with caplog.at_level(logging.WARNING):
        res = r.step([clip.frames[0]])[0]
    assert "resizing the mask" in caplog.text
    assert res.masks.shape == (2, H, W)
    iou = (res.masks & clip.masks[0]).sum() / (res.masks | clip.masks[0]).sum()
    assert iou > 0.8


def test_memory_schedule_ring_and_constant_bytes(model, clip) -> None:
    policy = model.policy(first_mask=first_labels(clip), mem_every=2)
    r = StreamRunner(policy, open_backends(model, "torch"))
    frames = list(clip.frames) * 2  # 24 frames
    valid, sizes = [], []
    for f in frames:
        r.step([f])
        st = r.states[0]
        valid.append(int(st.mem_valid.sum()))
        sizes.append(st.mem_keys.nbytes + st.mem_values.nbytes + sum(c.nbytes for c in st.caches))
    # frames 0, 2, 4, ... go into memory: 1 + frame_index // 2 slots until the 8 slots are full
    assert valid[:4] == [1, 1, 2, 2] and valid[-1] == 8
    assert len(set(sizes)) == 1
    st = r.states[0]
    assert st.inserted == 12 and st.obj_valid.tolist() == [[1.0, 1.0, 0.0]]
    # slot 0 still holds frame 0's key: recompute it
    fresh = StreamRunner(model.policy(first_mask=first_labels(clip)), open_backends(model, "torch"))
    fresh.step([frames[0]])
    torch.testing.assert_close(st.mem_keys[0, 0], fresh.states[0].mem_keys[0, 0])


def test_refresh_makes_the_key_encoder_dense(model, clip) -> None:
    r = runner(model, first_mask=first_labels(clip), refresh=3)
    computed = []
    for f in clip.frames[:7]:
        r.step([f])
        computed.append(all(bool((d == 2).all()) for d in model.net.last_decisions))
    assert computed[0] and computed[3] and computed[6]  # frame 0 and every 3rd frame are dense


def test_reset_reproduces_the_stream(model, clip) -> None:
    r = runner(model, first_mask=first_labels(clip))
    a = [r.step([f])[0].masks for f in clip.frames[:4]]
    r.reset(0)
    b = [r.step([f])[0].masks for f in clip.frames[:4]]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_two_streams_batched_equal_single_streams(model, clip) -> None:
    other = make_clip(9, num_frames=6, height=H, width=W, num_objects=1)
    masks = [first_labels(clip), first_labels(other)]
    pair = StreamRunner(model.policy(first_mask=masks), open_backends(model, "torch"), num_streams=2)
    solo = [runner(model, first_mask=m) for m in masks]
    for t in range(6):
        got = pair.step([clip.frames[t], other.frames[t]])
        for i, c in enumerate((clip, other)):
            want = solo[i].step([c.frames[t]])[0]
            assert got[i].track_ids.tolist() == want.track_ids.tolist()
            assert (got[i].masks == want.masks).mean() > 0.999


def test_auto_first_mask_exercises_the_pipeline(model, clip) -> None:
    r = runner(model, first_mask="auto")
    res = [r.step([f])[0] for f in clip.frames[:3]]
    assert res[0].track_ids.tolist() == [1] and res[0].masks[0, H // 2, W // 2]


def test_cli_run_without_first_mask_is_a_clear_error(clip, tmp_path: Path, capsys) -> None:
    import cv2

    from edgevis.cli import main

    for i, f in enumerate(clip.frames[:2]):
        cv2.imwrite(str(tmp_path / f"{i:05d}.png"), f)
    rc = main(["run", "--model", "spvos_tiny", "--source", str(tmp_path), "--backend", "torch", "--quiet"])
    assert rc == 2
    assert "--first-mask" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["portable", "trt"])
def test_onnxruntime_runner_equals_pytorch_over_50_frames(tmp_path: Path, flavor: str) -> None:
    """Trained spvos_tiny, 50 frames: the label maps of the two runners agree on >= 99.9% of pixels."""
    from edgevis.models.zoo import build_model

    m = build_model("spvos_tiny")
    c = make_clip(21, num_frames=50, height=H, width=W, num_objects=3)
    opts = m.check_policy_options(c)
    ref = StreamRunner(m.policy(**opts), open_backends(m, "torch"))
    got = StreamRunner(m.policy(**opts), open_backends(m, "ort", flavor=flavor, onnx_dir=tmp_path, threads=1))
    agree = []
    for f in c.frames:
        a, b = ref.step([f])[0], got.step([f])[0]
        la = (a.masks * a.track_ids[:, None, None]).sum(0)
        lb = (b.masks * b.track_ids[:, None, None]).sum(0)
        agree.append(float((la == lb).mean()))
    assert float(np.mean(agree)) >= 0.999
