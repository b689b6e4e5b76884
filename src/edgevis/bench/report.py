"""`edgevis bench`: FPS and latency through the real StreamRunner, per backend, vs PyTorch eager.

Writes a Markdown table (printed and saved), appends one JSON row per backend to
``reports/bench/<machine>.jsonl`` and draws a PNG (FPS per backend; latency distribution).
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from edgevis.bench.machine import describe_machine, machine_id
from edgevis.errors import EdgevisError
from edgevis.models.zoo import build_model
from edgevis.runtime.pipeline import open_backends
from edgevis.runtime.runner import StreamRunner


@dataclass
class BenchRow:
    model: str
    backend: str
    precision: str
    resolution: str
    streams: int
    threads: int
    frames: int
    fps: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    runner_overhead_pct: float
    stage_ms: dict[str, float]
    gflops_per_call: dict[str, float]
    peak_rss_mb: float
    speedup_vs_torch: float | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    timestamp: str = ""


def count_gflops(model: Any) -> dict[str, float]:
    """FLOPs of one call of each stage with batch 1 (torch's FlopCounterMode: conv, matmul, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    for s in model.stages:
        spec = model.iospec(s)
        feeds = spec.example_inputs({"B": 1})
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.stage(s)(*[feeds[n] for n in spec.input_names])
        out[s] = counter.get_total_flops() / 1e9
    return out


def bench_frames(hw: tuple[int, int], n: int, seed: int = 5) -> np.ndarray:
    from edgevis.data.synthetic import make_clip

    return make_clip(seed, num_frames=n, height=hw[0], width=hw[1], num_objects=3).frames


def bench_backend(model: Any, backend: str, frames: np.ndarray, *, warmup: int, streams: int, threads: int,
                  onnx_dir: Path) -> tuple[dict[str, Any], list[float]]:
    runner = StreamRunner(model.policy(), open_backends(model, backend, threads=threads, onnx_dir=onnx_dir),
                          num_streams=streams)
    if backend == "torch":
        torch.set_num_threads(threads)
    for f in frames[:warmup]:
        runner.step([f] * streams)
    runner.total_ms = runner.backend_ms = 0.0
    latencies: list[float] = []
    stage_tot: dict[str, float] = {}
    t0 = time.perf_counter()
    for f in tqdm(frames, desc=f"bench {model.name} [{backend}]", unit="frame", leave=False):
        res = runner.step([f] * streams)
        latencies.append(res[0].timings_ms["total"])
        for k, v in res[0].timings_ms.items():
            if k not in ("total", "overhead"):
                stage_tot[k] = stage_tot.get(k, 0.0) + v
    wall = time.perf_counter() - t0
    stats = {
        "fps": len(frames) * streams / wall,
        "stage_ms": {k: v / len(frames) for k, v in stage_tot.items()},
        "overhead_pct": 100.0 * runner.overhead_fraction,
    }
    runner.close()
    return stats, latencies


def run_bench(model_name: str, *, backends: list[str], frames: int = 100, quick: bool = False, streams: int = 1,
              threads: int = 2, resolution: str | None = None, out_dir: Path = Path("reports"),
              precision: str = "fp32") -> list[BenchRow]:
    model = build_model(model_name)
    hw = model.policy().input_hw(model.stages[0])
    if resolution and resolution != f"{hw[0]}x{hw[1]}":
        raise EdgevisError(f"--resolution {resolution}: {model_name} is exported at {hw[0]}x{hw[1]}; "
                           "other resolutions need a model built at that size (not supported by this model yet)")
    if backends == ["all"]:  # every backend this machine has
        from edgevis.runtime.pipeline import best_backend

        backends = ["torch", "ort"] + (["trt"] if best_backend() == "trt" else [])
    if "torch" not in backends:
        backends = ["torch", *backends]  # the baseline every speedup is measured against
    n, warmup = (10, 2) if quick else (frames, 10)
    clip = bench_frames(hw, n + warmup)
    machine = describe_machine()
    gflops = count_gflops(model)
    bench_dir = Path(out_dir) / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows: list[BenchRow] = []
    all_lat: dict[str, list[float]] = {}
    for b in backends:
        stats, lat = bench_backend(model, b, clip, warmup=warmup, streams=streams, threads=threads,
                                   onnx_dir=Path(out_dir) / "onnx")
        all_lat[b] = lat
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        rows.append(BenchRow(
            model=model_name, backend=b, precision=precision, resolution=f"{hw[0]}x{hw[1]}", streams=streams,
            threads=threads, frames=n, fps=stats["fps"], latency_p50_ms=float(p50), latency_p90_ms=float(p90),
            latency_p99_ms=float(p99), runner_overhead_pct=stats["overhead_pct"], stage_ms=stats["stage_ms"],
            gflops_per_call=gflops, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            machine=machine, timestamp=stamp,
        ))
    base = next(r.fps for r in rows if r.backend == "torch")
    for r in rows:
        r.speedup_vs_torch = r.fps / base if base > 0 else None
    with open(bench_dir / f"{machine_id(machine)}.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps(asdict(r)) + "\n")
    table = markdown_table(rows)
    (bench_dir / f"{model_name}-{stamp}.md").write_text(table + "\n")
    plot(rows, all_lat, bench_dir / f"{model_name}-{stamp}.png")
    print(table)
    best = max(rows, key=lambda r: r.fps)
    print("speedup vs PyTorch eager: " + ", ".join(f"{r.backend} {r.speedup_vs_torch:.2f}x" for r in rows)
          + f" (best: {best.backend}); report in {bench_dir}")
    return rows


def markdown_table(rows: list[BenchRow]) -> str:
    m = rows[0].machine
    head = (f"**{rows[0].model}** at {rows[0].resolution}, {rows[0].streams} stream(s), {rows[0].threads} threads, "
            f"{rows[0].frames} frames — machine: {m.get('cpu')} ({m.get('cores')} cores), GPU: {m.get('gpu') or 'none'}, "
            f"torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')}, TensorRT {m.get('tensorrt') or 'absent'}\n\n")
    lines = ["| backend | FPS | speedup vs torch | p50 ms | p90 ms | p99 ms | stages (ms) | runner overhead | GFLOPs/call | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r.stage_ms.items())
        fl = ", ".join(f"{k} {v:.2f}" for k, v in r.gflops_per_call.items())
        lines.append(f"| {r.backend} | {r.fps:.1f} | {r.speedup_vs_torch:.2f}x | {r.latency_p50_ms:.1f} | "
                     f"{r.latency_p90_ms:.1f} | {r.latency_p99_ms:.1f} | {stages} | {r.runner_overhead_pct:.1f}% | "
                     f"{fl} | {r.peak_rss_mb:.0f} |")
    return head + "\n".join(lines)


def plot(rows: list[BenchRow], latencies: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.bar([r.backend for r in rows], [r.fps for r in rows], color="#4c72b0")
    a.set_ylabel("FPS")
    a.set_title(f"{rows[0].model} {rows[0].resolution}")
    b.boxplot([latencies[r.backend] for r in rows], tick_labels=[r.backend for r in rows])
    b.set_ylabel("latency per step (ms)")
    b.set_title(f"{rows[0].machine.get('cpu', '')[:40]}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
