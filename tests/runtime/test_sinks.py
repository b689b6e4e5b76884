"""Sinks: JSON Lines durability, YouTube-VIS format and RLE round trip, annotated video, annotate()."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgevis.errors import EdgevisError
from edgevis.runtime.results import FrameResult, rle_encode
from edgevis.runtime.sinks import (
    JsonlSink,
    MultiSink,
    VideoSink,
    WindowSink,
    YtvisResultsSink,
    annotate,
    open_sinks,
    track_color,
    ytvis_from_jsonl,
)

H, W = 24, 32


def rle_decode(rle: dict) -> np.ndarray:
    """Independent COCO uncompressed RLE decoder: alternating 0/1 runs, column-major."""
    h, w = rle["size"]
    flat = np.zeros(h * w, dtype=bool)
    pos, val = 0, False
    for c in rle["counts"]:
        flat[pos : pos + c] = val
        pos += c
        val = not val
    assert pos == h * w
    return flat.reshape((w, h)).T


def _result(index: int, stream: int = 0, reset: bool = False) -> FrameResult:
    masks = np.zeros((2, H, W), bool)  # (N, H, W)
    masks[0, 2 : 10 + index, 3:12] = True
    masks[1, 15:20, 20 + index : 30] = True
    return FrameResult(
        stream=stream,
        index=index,
        masks=masks,
        track_ids=np.array([3, 7], np.int64),
        class_ids=np.array([2, 5], np.int64),
        scores=np.array([0.87, 0.5], np.float32),
        timings_ms={"frame": 1.5, "total": 2.0},
        source_hw=(H, W),
        reset=reset,
    )


@pytest.mark.parametrize("shape", [(5, 7), (1, 1), (3, 4)])
def test_rle_round_trip(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    for fill in (0.0, 0.4, 1.0):
        m = rng.random(shape) < fill
        rle = rle_encode(m)
        assert rle["size"] == list(shape) and sum(rle["counts"]) == m.size
        np.testing.assert_array_equal(rle_decode(rle), m)
    m = np.zeros((3, 4), bool)
    m[0, 0] = m[2, 3] = True
    assert rle_encode(m)["counts"] == [0, 1, 10, 1]  # starts with a zero-length background run


def test_jsonl_lines_survive_a_crash(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    sink = JsonlSink(p)
    for i in range(3):
        sink.write(None, _result(i))
    lines = p.read_text().splitlines()  # not closed: as if the process died here
    assert len(lines) == 3
    d = json.loads(lines[2])
    assert d["index"] == 2 and d["stream"] == 0 and d["source_hw"] == [H, W] and d["timings_ms"]["total"] == 2.0
    inst = d["instances"][0]
    assert (inst["track_id"], inst["class_id"], inst["score"]) == (3, 2, pytest.approx(0.87))
    np.testing.assert_array_equal(rle_decode(inst["segmentation"]), _result(2).masks[0])
    sink.close()
    assert len(p.read_text().splitlines()) == 3


def test_ytvis_results_format_and_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "results.json"
    sink = YtvisResultsSink(p, category_offset=1)
    for i in range(3):
        sink.write(None, _result(i))
    r = _result(3)
    sink.write(
        None,
        FrameResult(
            stream=0,
            index=3,
            masks=r.masks[:1],
            track_ids=r.track_ids[:1],
            class_ids=r.class_ids[:1],
            scores=r.scores[:1],
            source_hw=(H, W),
        ),
    )
    sink.write(None, _result(0, stream=1))
    assert not p.exists()  # written only at close, atomically
    sink.close()
    res = json.loads(p.read_text())
    assert not list(tmp_path.glob(".*tmp*"))
    assert len(res) == 4 and {tuple(sorted(e)) for e in res} == {("category_id", "score", "segmentations", "video_id")}
    t3 = next(e for e in res if e["video_id"] == 1 and e["category_id"] == 3)
    t7 = next(e for e in res if e["video_id"] == 1 and e["category_id"] == 6)
    assert len(t3["segmentations"]) == 4 and t3["score"] == pytest.approx(0.87)
    assert t7["segmentations"][3] is None  # track 7 absent in frame 3
    for i in range(4):
        np.testing.assert_array_equal(rle_decode(t3["segmentations"][i]), _result(i).masks[0])
    assert [e["video_id"] for e in res].count(2) == 2  # stream 1 is video 2, with its own two tracks


def test_ytvis_reset_starts_new_tracks_and_rebuild_from_jsonl(tmp_path: Path) -> None:
    jp = tmp_path / "r.jsonl"
    js = JsonlSink(jp)
    for i in range(4):
        js.write(None, _result(i, reset=(i == 2)))
    with open(jp, "a") as f:
        f.write('{"stream": 0, "ind')  # a partial line from a crash
    n = ytvis_from_jsonl(jp, tmp_path / "y.json")
    res = json.loads((tmp_path / "y.json").read_text())
    assert n == 4 and len(res) == 4  # 2 tracks before the reset, 2 after
    before = [e for e in res if e["segmentations"][0] is not None]
    assert len(before) == 2 and all(e["segmentations"][2] is None for e in before)


def test_annotate_changes_pixels_only_near_masks() -> None:
    img = np.full((120, 200, 3), 100, np.uint8)
    masks = np.zeros((1, 120, 200), bool)  # (N, H, W)
    masks[0, 60:100, 20:60] = True
    r = FrameResult(
        stream=0,
        index=0,
        masks=masks,
        track_ids=np.array([3]),
        class_ids=np.array([2]),
        scores=np.array([0.87], np.float32),
    )
    out = annotate(img, r)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (img == 100).all()  # the input is not modified
    changed = np.any(out != img, axis=2)
    assert changed[masks[0]].all()
    assert not changed[:55].any() and not changed[80:, 70:].any()  # far from the mask and its label
    expected = np.round(0.5 * 100 + 0.5 * np.asarray(track_color(3), float))
    np.testing.assert_allclose(out[90, 40], expected, atol=1)  # blended in the track colour
    with_fps = annotate(img, r, fps=12.5)
    assert changed.sum() < np.any(with_fps != img, axis=2).sum()  # the FPS overlay drew something more
    with pytest.raises(EdgevisError, match="masks are 120x200 but the image is 10x10"):
        annotate(np.zeros((10, 10, 3), np.uint8), r)


def test_video_sink_writes_readable_mp4(tmp_path: Path) -> None:
    p = tmp_path / "out.mp4"
    sink = VideoSink(p, fps=10)
    for i in range(6):
        sink.write(np.full((H, W, 3), 30 * i, np.uint8), _result(i), fps=10.0)
    sink.write(np.zeros((H * 2, W * 2, 3), np.uint8), FrameResult.empty(0, 6, (H * 2, W * 2)))  # resized to fit
    sink.write(np.zeros((H, W, 3), np.uint8), _result(0, stream=1))
    sink.close()
    cap = cv2.VideoCapture(str(p))
    n = 0
    while True:
        ok, f = cap.read()
        if not ok:
            break
        assert f.shape == (H, W, 3)
        n += 1
    assert n == 7
    assert cv2.VideoCapture(str(tmp_path / "out_stream1.mp4")).read()[0]


def test_window_sink_needs_a_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(EdgevisError, match="--show needs a display but DISPLAY is not set.*--save"):
        WindowSink()


def test_open_sinks_writes_all_outputs(tmp_path: Path) -> None:
    sinks = open_sinks(save=tmp_path / "v.mp4", json=tmp_path / "r.jsonl")
    assert isinstance(sinks, MultiSink) and len(sinks.sinks) == 3
    with sinks:
        for i in range(2):
            sinks.write(np.zeros((H, W, 3), np.uint8), _result(i), fps=5.0)
    assert (tmp_path / "v.mp4").stat().st_size > 0
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2
    assert len(json.loads((tmp_path / "r.ytvis.json").read_text())) == 2
    with pytest.raises(EdgevisError, match="folder .*missing does not exist"):
        open_sinks(save=tmp_path / "missing" / "v.mp4")
