from __future__ import annotations

import json

import pytest

from edgevis.bench.report import BenchRow, markdown_table, plan_precisions, precision_problem, run_bench
from edgevis.errors import EdgevisError


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
        assert d["precision"] == "fp32" and d["device"] == "cpu"  # the precision each backend really ran at
        assert d["sparsity"] is None and d["flops_saved_gflops"] is None  # a dense model
        assert d["peak_gpu_mem_mb"] is None and "load_avg_1m" in d["machine"]
    assert data[0]["speedup_vs_torch"] == 1.0
    (png,) = bench.glob("*.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (md,) = bench.glob("*.md")
    text = md.read_text()
    assert "| ort | fp32 |" in text and "| sparsity | FLOPs saved/frame |" in text
    assert "| - | - |" in text  # dense model: no sparsity figures
    assert "peak GPU MB" not in text  # CPU run: no GPU column
    assert "speedup vs PyTorch eager" in capsys.readouterr().out


def test_quick_bench_of_a_sparse_model_reports_sparsity(tmp_path):
    from edgevis.bench.sparsity import sparse_layers
    from edgevis.models.zoo import build_model

    rows = run_bench("spvos_tiny", backends=["torch"], quick=True, out_dir=tmp_path, threads=1)
    (row,) = rows
    assert 0.0 < row.sparsity <= 1.0  # a mostly static synthetic clip: the gate skips work
    assert row.flops_saved_gflops > 0 and 0 < row.flops_saved_pct < 100
    assert sum(row.decision_fractions.values()) == pytest.approx(1.0)
    # the sparse convs (a custom op FlopCounterMode cannot see into) are counted, dense, in encode_key
    dense = sum(2 * y_hw[0] * y_hw[1] * w[0] * w[1] * w[2] * w[3] for _, w, y_hw in sparse_layers(build_model("spvos_tiny")))
    assert row.gflops_per_call["encode_key"] > dense / 1e9
    (md,) = (tmp_path / "bench").glob("*.md")
    assert f"| {100 * row.sparsity:.1f}% | {row.flops_saved_gflops:.2f} GFLOPs" in md.read_text()


def _row(backend, **kw):
    base = dict(model="m", backend=backend, precision="fp32", resolution="64x96", streams=1, threads=2, frames=10,
                fps=10.0, latency_p50_ms=1.0, latency_p90_ms=1.5, latency_p99_ms=2.0, runner_overhead_pct=3.0,
                stage_ms={"s": 1.0}, masks_ms=0.1, gflops_per_call={"s": 1.0}, peak_rss_mb=100.0,
                speedup_vs_torch=1.0, machine={"cpu": "Test CPU", "cores": 2})
    return BenchRow(**{**base, **kw})


def test_markdown_table_sparsity_and_gpu_columns():
    rows = [_row("torch", sparsity=0.4, flops_saved_gflops=1.25, flops_saved_pct=30.0),
            _row("ort"), _row("torch-cuda", device="cuda", peak_gpu_mem_mb=512.0)]
    text = markdown_table(rows)
    lines = [ln for ln in text.splitlines() if ln.startswith("| torch") or ln.startswith("| ort")]
    assert "| 40.0% | 1.25 GFLOPs (30.0%) |" in lines[0]
    assert "| - | - |" in lines[1]  # decisions not read from onnxruntime
    assert "peak GPU MB" in text and lines[2].endswith("| 512 |") and lines[1].endswith("| - |")


def test_precision_rules_per_backend():
    assert precision_problem("torch", "fp32", cuda=False) is None
    assert precision_problem("trt", "int8", cuda=False) is None  # engines are built at any precision
    assert "CUDA" in precision_problem("torch", "fp16", cuda=False)
    assert precision_problem("torch", "fp16", cuda=True) is None  # autocast on a GPU
    assert "not a speedup" in precision_problem("ort", "fp16", cuda=False)
    assert "trt" in precision_problem("ort", "int8", cuda=False)
    # the baseline torch row falls back to fp32 (and says so) when only trt was asked for at fp16
    assert plan_precisions(["torch", "trt"], "fp16", named=["trt"]) == {"torch": "fp32", "trt": "fp16"}
    assert plan_precisions(["torch", "ort"], "fp32", named=["ort"]) == {"torch": "fp32", "ort": "fp32"}


def test_precision_errors_name_backend_and_fix(capsys):
    with pytest.raises(EdgevisError, match=r"--precision 'fp8' is unknown; expected one of fp32, fp16, int8"):
        plan_precisions(["torch"], "fp8")
    with pytest.raises(EdgevisError, match=r"backend ort at fp16: onnxruntime's CPU .* --precision fp32"):
        plan_precisions(["torch", "ort"], "fp16", named=["ort"])
    with pytest.raises(EdgevisError, match=r"backend torch at fp16: PyTorch FP16 .* --gpu"):
        plan_precisions(["torch"], "fp16", named=["torch"])
    # 'all' on a CPU-only machine: ort is left out with a note, and nothing but the baseline would remain
    with pytest.raises(EdgevisError, match="no backend on this machine runs it"):
        plan_precisions(["torch", "ort"], "fp16")
    assert "ort left out at fp16" in capsys.readouterr().out


def test_run_bench_refuses_ort_fp16_before_measuring(tmp_path):
    with pytest.raises(EdgevisError, match="backend ort at fp16"):
        run_bench("toy_convgru", backends=["ort"], precision="fp16", quick=True, out_dir=tmp_path)
    assert not (tmp_path / "bench").exists()  # nothing was run or written


def test_bench_length_defaults_and_bad_frames():
    from edgevis.bench.report import DEFAULT_FRAMES, QUICK, WARMUP, bench_length

    assert bench_length("toy_convgru", None, quick=True) == QUICK
    assert bench_length("toy_convgru", None, quick=False) == (100, WARMUP)
    assert bench_length("toy_convgru", 8, quick=False) == (8, 2)  # a short run keeps a short warm-up
    for name, n in DEFAULT_FRAMES.items():  # full models: frames sized for `make bench`
        assert bench_length(name, None, quick=False)[0] == n
    with pytest.raises(EdgevisError, match=r"--frames 0: expected at least 1 timed frame"):
        bench_length("toy_convgru", 0, quick=False)
