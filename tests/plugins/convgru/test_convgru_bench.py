"""The ConvGRU benchmark scripts run end to end on tiny settings and write their JSON rows (no timing asserts)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from edgevis.bench import convgru_drift, convgru_update


def test_drift_script_writes_row_and_fp32_state_helps(tmp_path: Path) -> None:
    out = tmp_path / "drift.jsonl"
    argv = ["--frames", "12", "--height", "12", "--width", "16", "--hid", "8", "--check-frames", "2", "--out", str(out)]
    convgru_drift.main(argv)
    row = json.loads(out.read_text().splitlines()[-1])
    assert row["bench"] == "convgru_drift" and row["machine"]["cores"] >= 1
    err_b, err_c = row["errors_at"]["b"], row["errors_at"]["c"]
    assert set(err_b) == {"1", "10"} and 0 < err_b["10"] < 1e-2 and err_c["10"] > 0
    assert row["emulation_vs_real_fp16_b"] < 1e-3  # rounding emulation agrees with real CPU FP16 convs


def test_scene_is_deterministic_and_moves() -> None:
    a, b = convgru_drift.TexturedScene(10, 12, seed=3), convgru_drift.TexturedScene(10, 12, seed=3)
    f0, f1 = a.frame(0), a.frame(1)
    assert f0.shape == (1, 3, 10, 12) and torch.equal(f0, b.frame(0))
    assert 0 < (f1 - f0).abs().mean().item() < f0.abs().mean().item()  # small motion between frames


def test_update_bench_writes_rows(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(convgru_update, "SHAPES", ((1, 8, 5, 7),))
    out = tmp_path / "update.jsonl"
    convgru_update.main(["--reps", "2", "--no-compile", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert {r["impl"] for r in rows if r["device"] == "cpu"} == {"unfused", "op"}
    assert all(r["ms"] > 0 and r["gbps"] > 0 for r in rows)
