from __future__ import annotations

import json

from edgevis.bench.readme import END, START, latest_rows, update_readme


def _row(model, backend, fps, ts, cpu="Test CPU", frames=100):
    return {"model": model, "backend": backend, "precision": "fp32", "streams": 1, "threads": 2, "fps": fps,
            "frames": frames,
            "resolution": "64x96", "latency_p50_ms": 1.0, "latency_p99_ms": 2.0, "runner_overhead_pct": 3.0,
            "speedup_vs_torch": 1.0, "timestamp": ts, "machine": {"cpu": cpu, "cores": 2, "gpu": None}}


def test_latest_row_per_key_and_readme_block(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    rows = [_row("m", "ort", 10.0, "20260101-000000"), _row("m", "ort", 20.0, "20260102-000000"),
            _row("m", "torch", 5.0, "20260102-000000"), {"kernel": "msda", "ms": 1.0}]
    (bench / "x.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    latest = latest_rows(bench)
    assert [(r["backend"], r["fps"]) for r in latest] == [("ort", 20.0), ("torch", 5.0)]
    # a later torch-only run replaces the whole run (no ort row left from the older one); a quick run does not count
    rows += [_row("m", "torch", 6.0, "20260103-000000"), _row("m", "ort", 99.0, "20260104-000000", frames=10)]
    (bench / "x.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert [(r["backend"], r["fps"]) for r in latest_rows(bench)] == [("torch", 6.0)]
    rows = rows[:4]
    (bench / "x.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## What is verified where\n")
    assert update_readme(readme, bench)
    text = readme.read_text()
    assert "## Performance" in text and START in text and END in text and "| m | 64x96 | ort |" in text
    assert "176 ms" in text  # the papers' reference figures are quoted for scale
    assert not update_readme(readme, bench)  # idempotent
    assert text.index("## Performance") < text.index("## What is verified where")


def test_readme_sparsity_columns(tmp_path):
    from edgevis.bench.readme import render

    sparse = {**_row("spvos", "torch", 5.0, "20260101-000000"), "sparsity": 0.425, "flops_saved_gflops": 3.5,
              "flops_saved_pct": 21.0}
    text = render([sparse, _row("spvos", "ort", 6.0, "20260101-000000")])
    assert "| sparsity | FLOPs saved/frame |" in text
    assert "| 42.5% | 3.50 GFLOPs (21.0%) |" in text
    ort_line = next(ln for ln in text.splitlines() if ln.startswith("| spvos | 64x96 | ort |"))
    assert "| - | - |" in ort_line  # no decisions read back from onnxruntime; older rows render the same
