from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edgevis.cli import main


@pytest.fixture
def small_video(tmp_path):
    path = tmp_path / "clip.mp4"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 64))
    for t in range(8):
        f = np.full((64, 96, 3), 90, np.uint8)
        f[10:30, 5 + 5 * t : 25 + 5 * t] = (20, 220, 60)
        w.write(f)
    w.release()
    return path


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "toy_convgru" in out and "frame" in out


def test_unknown_model_suggests_closest(capsys):
    assert main(["run", "--model", "toy_convgruu", "--source", "whatever.mp4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown model 'toy_convgruu'" in err and "did you mean 'toy_convgru'" in err
    assert len(err.splitlines()) == 1


def _file(d, name, data):
    p = d / name
    if data is not None:
        p.write_bytes(data)
    return p


@pytest.mark.parametrize("kind, expect", [
    ("missing", "does not exist"), ("empty", "empty"), ("garbage", "decod"), ("camera", "camera 57"),
])
def test_bad_sources_one_line_errors(tmp_path, capsys, kind, expect):
    src = {
        "missing": lambda: _file(tmp_path, "missing.mp4", None),
        "empty": lambda: _file(tmp_path, "empty.mp4", b""),
        "garbage": lambda: _file(tmp_path, "junk.mp4", np.random.default_rng(0).bytes(20000)),
        "camera": lambda: "57",
    }[kind]()
    assert main(["run", "--model", "toy_convgru", "--source", str(src), "--json", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err.lower() and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_run_file_writes_video_json_and_fps_line(tmp_path, small_video, capsys):
    out_json, out_mp4 = tmp_path / "r.jsonl", tmp_path / "r.mp4"
    rc = main(["run", "--model", "toy_convgru", "--source", str(small_video), "--backend", "torch",
               "--json", str(out_json), "--save", str(out_mp4), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "8 frames" in out and "FPS" in out
    lines = out_json.read_text().splitlines()
    assert len(lines) == 8 and json.loads(lines[0])["index"] == 0
    cap = cv2.VideoCapture(str(out_mp4))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 8


def test_two_sources_are_two_streams(tmp_path, small_video, capsys):
    out_json = tmp_path / "r.jsonl"
    rc = main(["run", "--model", "toy_convgru", "--source", str(small_video), "--source", str(small_video),
               "--backend", "torch", "--json", str(out_json), "--quiet"])
    assert rc == 0
    streams = [json.loads(line)["stream"] for line in out_json.read_text().splitlines()]
    assert streams.count(0) == 8 and streams.count(1) == 8


def test_help_names_the_pipeline(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for verb in ("export", "build", "run", "check", "bench", "models", "demo"):
        assert verb in out
