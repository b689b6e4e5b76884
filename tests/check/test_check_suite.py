from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from edgevis.check import tolerances as T
from edgevis.check.drift import drift_report
from edgevis.check.polygraphy import pick_feeds, single_step
from edgevis.engines.calibration import record_feeds
from edgevis.export.onnx_export import export_stage


@pytest.fixture(scope="module")
def _setup(tmp_path_factory):
    """The tests/conftest.py toy (64x96) and frames, exported and recorded once for this file."""
    from edgevis.models.toy import ToyConfig, ToyModel

    torch.manual_seed(0)
    toy = ToyModel("toy_convgru", ToyConfig(height=64, width_px=96))
    rng = np.random.default_rng(0)
    base = (np.linspace(0, 255, 80)[None, :, None] * np.ones((48, 1, 3))).astype(np.uint8)
    frames = []
    for t in range(12):
        f = base.copy()
        f[10:26, 5 + 4 * t : 21 + 4 * t] = (40, 200, 90)
        frames.append(np.clip(f.astype(int) + rng.integers(-5, 6, f.shape), 0, 255).astype(np.uint8))
    path = export_stage(toy, "frame", tmp_path_factory.mktemp("chk") / "frame.trt.onnx", "trt").path
    return toy, record_feeds(toy, frames)["frame"], path


@pytest.fixture
def toy_setup(_setup):
    toy, calls, path = _setup
    return copy.deepcopy(toy), calls, path  # tests may perturb the weights


def test_recorded_feeds_are_real_frames_and_carried_state(toy_setup):
    toy, calls, _ = toy_setup
    assert len(calls) == 12 and calls[0]["image"].shape == (1, 64, 96, 3)
    assert torch.count_nonzero(calls[0]["h"]) == 0 and torch.count_nonzero(calls[5]["h"]) > 0
    # the state fed at frame t is what PyTorch returned at frame t-1
    out = toy.stage("frame")(calls[4]["image"], calls[4]["h"])
    assert torch.allclose(out[-1], calls[5]["h"])  # outputs: logits, scores, h_out


def test_single_step_through_polygraphy_writes_loadable_references(toy_setup, tmp_path):
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    toy, calls, path = toy_setup
    rep = single_step(toy, "frame", path, pick_feeds(calls), tmp_path / "in.json", tmp_path / "out.json")
    assert rep["pass"] and rep["runners"] == ["pytorch", "onnxruntime"] and rep["iterations"] == 3
    assert 0 <= rep["max_abs_error"]["onnxruntime"]["h_out"] < 1e-4
    feeds = load_json(str(tmp_path / "in.json"))
    assert len(feeds) == 3 and set(feeds[0]) == {"image", "h"}
    ref = RunResults.load(str(tmp_path / "out.json"))
    assert list(ref.keys()) == ["pytorch"] and set(ref["pytorch"][0]) == {"logits", "scores", "h_out"}
    cmd = rep["polygraphy_command"]
    assert cmd.startswith(f"polygraphy run {path} --trt") and "--load-inputs" in cmd and "h_out:0.0001" in cmd


def test_tolerance_table_overrides_and_failing_parity(toy_setup, monkeypatch):
    toy, calls, path = toy_setup
    spec = toy.iospec("frame")
    assert T.tolerance("toy_convgru", spec, "logits") == 1e-4
    assert T.tolerance("toy_convgru", spec, "logits", "drift") == pytest.approx(1e-3)
    monkeypatch.setitem(T.TOLERANCES, "toy_convgru", {"logits": 0.0, "drift:h_out": 0.0})
    assert T.tolerance("toy_convgru", spec, "h_out", "drift") == 0.0
    with torch.no_grad():  # make onnxruntime and PyTorch disagree: perturb the torch weights after export
        toy.net.head.bias.add_(0.01)
    rep = single_step(toy, "frame", path, pick_feeds(calls, 1))
    assert not rep["pass"] and rep["max_abs_error"]["onnxruntime"]["logits"] == pytest.approx(0.01, rel=1e-3)


def test_drift_free_running_and_teacher_forced(toy_setup, tmp_path):
    toy, calls, path = toy_setup
    rep = drift_report(toy, "frame", "trt", path, calls, tmp_path / "d.png")
    assert rep["pass"] and rep["stateful"] and rep["frames"] == 12
    for key in ("free_running", "teacher_forced"):
        assert set(rep["per_frame"][key]) == {"logits", "scores", "h_out"} and len(rep["per_frame"][key]["h_out"]) == 12
    assert rep["final_free_running_error"]["h_out"] < 1e-4
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    json.dumps(rep)


def test_drift_detects_a_state_that_compounds(toy_setup):
    toy, calls, path = toy_setup
    with torch.no_grad():  # a tiny weight change in the recurrence: free-running error grows, forced stays flat
        toy.net.candidate.bias.add_(1e-3)
    rep = drift_report(toy, "frame", "trt", path, calls)
    free, forced = rep["per_frame"]["free_running"]["h_out"], rep["per_frame"]["teacher_forced"]["h_out"]
    assert free[-1] > forced[-1] and free[-1] > free[0]


def test_models_names_lists(capsys):
    from edgevis.cli import main

    assert main(["models", "--names", "--tiny"]) == 0
    tiny = capsys.readouterr().out.split()
    assert "toy_convgru" in tiny and all(n == "toy_convgru" or n.endswith("_tiny") for n in tiny)
    assert main(["models", "--names", "--full"]) == 0
    assert "toy_convgru" not in capsys.readouterr().out.split()


@pytest.mark.slow
def test_edgevis_check_runs_all_three(tmp_path, capsys):
    from edgevis.cli import main

    rc = main(["check", "--model", "toy_convgru", "--frames", "3", "--flavors", "trt", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "single-step" in out and "drift" in out and "agreement" in out and "polygraphy run" in out
    for name in ("toy_convgru.frame.trt.single.json", "toy_convgru.frame.trt.drift.json",
                 "toy_convgru.frame.trt.drift.png", "toy_convgru.trt.json", "toy_convgru.summary.txt"):
        assert (tmp_path / name).is_file(), name
