"""The SpVOS study (edgevis.bench.spvos) on spvos_tiny with a few short clips: what it measures, not how fast."""

from __future__ import annotations

import json

import pytest
import torch

from edgevis.bench import spvos
from edgevis.bench.machine import relative_error

SHORT = ["--clips", "1", "--frames", "8", "--threads", "1"]


def test_relative_error_is_zero_for_equal_tensors_and_scales_with_the_difference():
    ref = torch.ones(2, 3, 4)
    assert relative_error(ref.clone(), ref) == 0.0
    assert relative_error(ref * 1.1, ref) == pytest.approx(0.1, rel=1e-5)


def test_zero_threshold_computes_everything_and_matches_dense(tmp_path):
    """rel tau 0: every block COMPUTEs, so the sparse stage is the dense one: no error, all J&F kept."""
    out = tmp_path / "spvos.jsonl"
    doc = spvos.main([*SHORT, "--rel-t", "0", "--memory-frames", "40", "--out", str(out)])
    row = doc["rows"][0]
    for name in ("synthetic", "static", "camera"):
        r = row[name]
        assert r["compute"] == 1.0 and r["reuse"] == 0.0
        assert r["key_err"] < 1e-5 and r["qval_err"] < 1e-5
        assert r["flops_saved"] <= 0.0  # the gate costs something and skips nothing
    for name in ("synthetic", "static"):
        assert row[name]["JF_sparse"] == pytest.approx(row[name]["JF_dense"], abs=1e-6)
    assert doc["memory"]["constant_after_ring_full"] and doc["memory"]["frames"] == 40
    assert json.loads(out.read_text().splitlines()[-1])["rows"][0]["rel_t"] == 0.0


def test_huge_threshold_reuses_between_dense_frames_and_shows_the_error(tmp_path):
    doc = spvos.main([*SHORT, "--rel-t", "1000", "--memory-frames", "0", "--out", str(tmp_path / "s.jsonl")])
    r = doc["rows"][0]["synthetic"]
    # refresh 10 over 8 frames: frame 0 dense, frames 1..7 reused entirely
    assert r["reuse"] == pytest.approx(7 / 8)
    assert r["flops_saved"] > 0.5 and r["key_err"] > 0.0
    assert doc["memory"] == {}


def test_untrained_mode_reports_no_accuracy_and_no_memory(tmp_path):
    doc = spvos.main([*SHORT, "--rel-t", "1.0", "--untrained", "--out", str(tmp_path / "s.jsonl")])
    assert doc["untrained"] and doc["memory"] == {}
    for name in ("synthetic", "static", "camera"):
        r = doc["rows"][0][name]
        assert "JF_dense" not in r and 0.0 <= r["key_err"] and r["flops_dense_M"] > 0
