from __future__ import annotations

import json

from edgevis.bench.report import run_bench


def test_quick_bench_writes_table_row_and_plot(tmp_path, capsys):
    rows = run_bench("toy_convgru", backends=["ort"], quick=True, out_dir=tmp_path, threads=1)
    assert [r.backend for r in rows] == ["torch", "ort"]  # the PyTorch baseline is always measured
    bench = tmp_path / "bench"
    (jsonl,) = bench.glob("*.jsonl")
    data = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert {d["backend"] for d in data} == {"torch", "ort"}
    for d in data:
        assert d["frames"] == 10 and d["fps"] > 0 and d["machine"]["cores"] >= 1
        assert d["latency_p50_ms"] <= d["latency_p99_ms"] and d["gflops_per_call"]["frame"] > 0
    assert data[0]["speedup_vs_torch"] == 1.0
    (png,) = bench.glob("*.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (md,) = bench.glob("*.md")
    assert "| ort |" in md.read_text()
    assert "speedup vs PyTorch eager" in capsys.readouterr().out
