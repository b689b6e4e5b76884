"""`edgevis bench`: FPS and latency through the real StreamRunner, per backend, vs PyTorch eager.

Writes a Markdown table (printed and saved), appends one JSON row per backend to
``reports/bench/<machine>.jsonl`` and draws a PNG (FPS per backend; latency distribution).

Precision (``--precision``): fp32 runs everywhere. The ``trt`` backend builds its engines at the
requested precision (INT8 calibrates on synthetic frames). onnxruntime on the CPU runs fp32 only, and
PyTorch runs fp16 only on CUDA (``--gpu``, :mod:`edgevis.bench.gpu`); asking for those is an error
that says what to run instead. The PyTorch baseline that is always added runs at fp32 when it cannot
run the requested precision; each row records the precision it really ran at.

Sparse models (SpVOS) get two more columns, read from the eager PyTorch run's gate decisions
(:mod:`edgevis.bench.sparsity`): achieved sparsity and FLOPs saved per frame. Other rows show "-".

Without ``--frames`` a full-size model times :data:`DEFAULT_FRAMES` frames (so `make bench` fits in 15
minutes on 2 cores), anything else 100; warm-up is ``min(10, max(2, frames // 4))`` frames.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from edgevis.bench.machine import append_jsonl, describe_machine, machine_id
from edgevis.bench.readme import fmt_sparsity
from edgevis.errors import EdgevisError
from edgevis.models.zoo import build_model
from edgevis.runtime.pipeline import open_backends
from edgevis.runtime.runner import StreamRunner

PRECISIONS = ("fp32", "fp16", "int8")
QUICK = (10, 2)  # (timed frames, warm-up frames) of --quick
WARMUP = 10


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
    masks_ms: float  # source-resolution masks, materialised after each step as a sink would (not in the overhead)
    gflops_per_call: dict[str, float]
    peak_rss_mb: float
    speedup_vs_torch: float | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    timestamp: str = ""
    device: str = "cpu"  # where the model ran: cpu, or cuda (GPU mode)
    peak_gpu_mem_mb: float | None = None  # GPU mode: torch.cuda.max_memory_allocated over the timed steps
    sparsity: float | None = None  # sparse models: share of the sparse convs' dense FLOPs skipped
    flops_saved_gflops: float | None = None  # sparse models: GFLOPs saved per frame (gate cost included)
    flops_saved_pct: float | None = None  # ... as a share of the sparse stage's dense GFLOPs per call
    decision_fractions: dict[str, float] | None = None  # sparse models: REUSE / INTERPOLATE / COMPUTE pixels
    kernels: dict[str, str] | None = None  # GPU mode: what each custom op ran on CUDA (kernel or PyTorch path)


# ---- precision -----------------------------------------------------------------------------------
def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise EdgevisError(f"--precision {precision!r} is unknown; expected one of {', '.join(PRECISIONS)} "
                           "(fp32 runs on every backend)")
    return precision


def precision_problem(backend: str, precision: str, *, cuda: bool) -> str | None:
    """Why ``backend`` cannot run ``precision`` (on the CPU, or on CUDA with ``cuda``), or None if it can."""
    if precision == "fp32" or backend == "trt":
        return None
    if backend == "ort":
        if precision == "fp16":
            return ("onnxruntime's CPU execution provider has few FP16 kernels and wraps the rest in casts, so an "
                    "FP16 model is slower than FP32 on a CPU, not a speedup; run ort at --precision fp32, or FP16 "
                    "on NVIDIA with --backends trt")
        return ("onnxruntime INT8 (static Q/DQ quantisation) is not wired into edgevis bench; run ort at "
                "--precision fp32, or INT8 with --backends trt")
    if backend.startswith("torch"):
        if precision == "int8":
            return "PyTorch eager has no INT8 path in edgevis; run torch at fp32/fp16, or INT8 with --backends trt"
        if not cuda:
            return ("PyTorch FP16 (autocast) runs only on CUDA; on the CPU half-precision convolutions are slow "
                    "emulation; run torch at --precision fp32, or add --gpu on a machine with an NVIDIA GPU")
    return None


def plan_precisions(backends: list[str], precision: str, *, named: Collection[str] = (), cuda: bool = False,
                    baseline: str = "torch") -> dict[str, str]:
    """The precision each backend runs at.

    A backend the user ``named`` that cannot run ``precision`` is an EdgevisError. One that came from
    ``all`` is left out with a printed note, except the ``baseline`` (added so speedups have a
    reference), which falls back to fp32; its row says so.
    """
    check_precision(precision)
    plan: dict[str, str] = {}
    errors = []
    for b in backends:
        why = precision_problem(b, precision, cuda=cuda)
        if why is None:
            plan[b] = precision
        elif b in named:
            errors.append(f"backend {b} at {precision}: {why}")
        elif b == baseline:
            plan[b] = "fp32"
        else:
            print(f"edgevis bench: {b} left out at {precision}: {why}")
    if errors:
        raise EdgevisError(f"--precision {precision} --backends {','.join(named)}: " + "; ".join(errors))
    if set(plan) == {baseline} and len(backends) > 1:
        raise EdgevisError(f"--precision {precision}: no backend on this machine runs it besides the fp32 baseline "
                           f"({', '.join(b for b in backends if b != baseline)} cannot); use --precision fp32")
    return plan


# ---- measuring ---------------------------------------------------------------------------------
def count_gflops(model: Any) -> dict[str, float]:
    """FLOPs of one call of each stage with batch 1 (torch's FlopCounterMode: conv, matmul, attention,
    plus edgevis's custom ops, counted dense: a sparse conv's FLOPs are those of its dense frame)."""
    from torch.utils.flop_counter import FlopCounterMode

    from edgevis.bench.sparsity import custom_op_flops

    out = {}
    for s in model.stages:
        spec = model.iospec(s)
        feeds = spec.example_inputs({"B": 1})
        module = model.stage(s)
        # FlopCounterMode's module tracker hooks autograd: a parameter that requires grad but is used
        # directly (a query embedding's weight, say) trips it under no_grad, so count without grads
        trainable = [p for p in module.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        try:
            with FlopCounterMode(display=False, custom_mapping=custom_op_flops()) as counter, torch.no_grad():
                module(*[feeds[n] for n in spec.input_names])
        finally:
            for p in trainable:
                p.requires_grad_(True)
        out[s] = counter.get_total_flops() / 1e9
    return out


def bench_clip(hw: tuple[int, int], n: int, seed: int = 5) -> Any:
    from edgevis.data.synthetic import make_clip

    return make_clip(seed, num_frames=n, height=hw[0], width=hw[1], num_objects=3)


def policy_options(model: Any, clip: Any) -> dict[str, Any]:
    """Options a policy needs to run at all (SpVOS: first-frame masks, from the clip's ground truth)."""
    options = getattr(model, "check_policy_options", None)
    return options(clip) if options is not None else {}


def measure(runner: StreamRunner, frames: np.ndarray, *, warmup: int, streams: int, label: str,
            cuda: bool = False, probe: Any = None) -> tuple[dict[str, Any], list[float]]:
    """Warm up on ``frames[:warmup]``, then time one step per remaining frame (plus its masks).

    ``cuda``: each step is timed with CUDA events on torch's current stream, synchronised before the
    elapsed time is read; the wall clock is taken between device synchronisations.
    """
    for f in frames[:warmup]:
        runner.step([f] * streams)
    timed = frames[warmup:]
    runner.total_ms = runner.backend_ms = 0.0
    latencies: list[float] = []
    stage_tot: dict[str, float] = {}
    masks_s = 0.0
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    for f in tqdm(timed, desc=label, unit="frame", leave=False):
        if probe is not None:
            probe.before_step()
        if cuda:
            start.record()
        res = runner.step([f] * streams)
        tm = time.perf_counter()
        for r in res:  # what every sink does first: masks at the source resolution
            _ = r.masks
        dt = time.perf_counter() - tm
        if cuda:
            end.record()
            end.synchronize()
            latencies.append(start.elapsed_time(end))  # step + masks, device work included
        else:
            latencies.append(res[0].timings_ms["total"] + 1e3 * dt)  # step + masks
        masks_s += dt
        if probe is not None:
            probe.after_step()
        for k, v in res[0].timings_ms.items():
            if k not in ("total", "overhead"):
                stage_tot[k] = stage_tot.get(k, 0.0) + v
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    n = max(len(timed), 1)
    stats = {
        "fps": len(timed) * streams / wall,
        "stage_ms": {k: v / n for k, v in stage_tot.items()},
        "overhead_pct": 100.0 * runner.overhead_fraction,
        "masks_ms": 1e3 * masks_s / n,
    }
    return stats, latencies


def bench_backend(model: Any, backend: str, frames: np.ndarray, *, warmup: int, streams: int, threads: int,
                  onnx_dir: Path, precision: str = "fp32", options: dict[str, Any] | None = None,
                  probe: Any = None) -> tuple[dict[str, Any], list[float]]:
    runner = StreamRunner(model.policy(**(options or {})),
                          open_backends(model, backend, threads=threads, onnx_dir=onnx_dir, precision=precision),
                          num_streams=streams)
    if backend == "torch":
        torch.set_num_threads(threads)
    try:
        return measure(runner, frames, warmup=warmup, streams=streams, label=f"bench {model.name} [{backend}]",
                       probe=probe)
    finally:
        runner.close()


def make_row(model_name: str, backend: str, precision: str, hw: tuple[int, int], *, streams: int, threads: int,
             frames: int, stats: dict[str, Any], latencies: list[float], gflops: dict[str, float],
             machine: dict[str, Any], stamp: str, sparse: Any = None, **extra: Any) -> BenchRow:
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    return BenchRow(
        model=model_name, backend=backend, precision=precision, resolution=f"{hw[0]}x{hw[1]}", streams=streams,
        threads=threads, frames=frames, fps=stats["fps"], latency_p50_ms=float(p50), latency_p90_ms=float(p90),
        latency_p99_ms=float(p99), runner_overhead_pct=stats["overhead_pct"], stage_ms=stats["stage_ms"],
        masks_ms=stats["masks_ms"], gflops_per_call=gflops,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, machine=machine, timestamp=stamp,
        **(sparse.as_row() if sparse is not None else {}), **extra,
    )


def bench_length(model_name: str, frames: int | None, quick: bool) -> tuple[int, int]:
    """(timed frames, warm-up frames): ``--quick``, ``--frames``, or the model's default."""
    if quick:
        return QUICK
    if frames is not None and frames < 1:
        raise EdgevisError(f"--frames {frames}: expected at least 1 timed frame (or leave it out for the "
                           f"model's default, {DEFAULT_FRAMES.get(model_name, 100)} for {model_name})")
    n = frames or DEFAULT_FRAMES.get(model_name, 100)
    return n, min(WARMUP, max(2, n // 4))  # a short run of a slow model keeps a short warm-up


# Timed frames per full-size model when --frames is not given, so that `make bench` (every full model, torch and
# ort) fits in 15 minutes on 2 cores. Measured per frame, torch + ort, 2 threads, idle 2-core Xeon: mobileinst
# 0.13 s, ookd 1.3 s, recurrent_seqformer 1.5 s, seqformer_r50 2.9 s, spvos 12.4 s (its segment stage decodes all
# K=8 object slots at 480x864). Other models (tiny, toy) time 100 frames.
DEFAULT_FRAMES: dict[str, int] = {
    "mobileinst": 100,
    "ookd": 50,
    "recurrent_seqformer": 50,
    "seqformer_r50": 20,
    "spvos": 10,  # 2 warm-up frames + 10 timed: no dense refresh (every 30) inside the window
}


def run_bench(model_name: str, *, backends: list[str], frames: int | None = None, quick: bool = False,
              streams: int = 1, threads: int = 2, resolution: str | None = None, out_dir: Path = Path("reports"),
              precision: str = "fp32") -> list[BenchRow]:
    from edgevis.bench.sparsity import make_probe

    check_precision(precision)
    model = build_model(model_name)
    hw = model.policy().input_hw(model.stages[0])
    if resolution and resolution != f"{hw[0]}x{hw[1]}":
        raise EdgevisError(f"--resolution {resolution}: {model_name} is exported at {hw[0]}x{hw[1]}; "
                           "other resolutions need a model built at that size (not supported by this model yet)")
    named = [] if backends == ["all"] else list(backends)
    if not named:  # every backend this machine has
        from edgevis.runtime.pipeline import best_backend

        backends = ["torch", "ort"] + (["trt"] if best_backend() == "trt" else [])
    if "torch" not in backends:
        backends = ["torch", *backends]  # the baseline every speedup is measured against
    plan = plan_precisions(backends, precision, named=named)
    n, warmup = bench_length(model_name, frames, quick)
    clip = bench_clip(hw, n + warmup)
    options = policy_options(model, clip)
    machine = describe_machine()
    gflops = count_gflops(model)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows: list[BenchRow] = []
    all_lat: dict[str, list[float]] = {}
    for b, prec in plan.items():
        probe = make_probe(model, b)
        stats, lat = bench_backend(model, b, clip.frames, warmup=warmup, streams=streams, threads=threads,
                                   onnx_dir=Path(out_dir) / "onnx", precision=prec, options=options, probe=probe)
        all_lat[b] = lat
        sparse = probe.summary(gflops.get(probe.stage)) if probe is not None else None
        rows.append(make_row(model_name, b, prec, hw, streams=streams, threads=threads, frames=n, stats=stats,
                             latencies=lat, gflops=gflops, machine=machine, stamp=stamp, sparse=sparse))
    set_speedups(rows, "torch")
    write_reports(rows, all_lat, Path(out_dir), model_name, stamp, baseline="PyTorch eager")
    return rows


def set_speedups(rows: list[BenchRow], baseline: str) -> None:
    base = next((r.fps for r in rows if r.backend == baseline), 0.0)
    for r in rows:
        r.speedup_vs_torch = r.fps / base if base > 0 else None


def write_reports(rows: list[BenchRow], latencies: dict[str, list[float]], out_dir: Path, model_name: str, stamp: str,
                  *, baseline: str) -> Path:
    """JSONL rows (appended), the Markdown table and the PNG under ``out_dir/bench``; prints the table."""
    bench_dir = Path(out_dir) / "bench"
    for r in rows:
        append_jsonl(bench_dir / f"{machine_id(rows[0].machine)}.jsonl", asdict(r))
    table = markdown_table(rows)
    suffix = "-gpu" if rows[0].device != "cpu" else ""
    (bench_dir / f"{model_name}{suffix}-{stamp}.md").write_text(table + "\n")
    plot(rows, latencies, bench_dir / f"{model_name}{suffix}-{stamp}.png")
    print(table)
    best = max(rows, key=lambda r: r.fps)
    print(f"speedup vs {baseline}: "
          + ", ".join(f"{r.backend} {r.speedup_vs_torch:.2f}x" for r in rows if r.speedup_vs_torch is not None)
          + f" (best: {best.backend}); report in {bench_dir}")
    return bench_dir


# ---- rendering ---------------------------------------------------------------------------------
def markdown_table(rows: list[BenchRow]) -> str:
    m = rows[0].machine
    gpu_cols = any(r.peak_gpu_mem_mb is not None for r in rows)
    head = (f"**{rows[0].model}** at {rows[0].resolution}, {rows[0].streams} stream(s), {rows[0].threads} threads, "
            f"{rows[0].frames} frames on {rows[0].device} — machine: {m.get('cpu')} ({m.get('cores')} cores), "
            f"GPU: {m.get('gpu') or 'none'}, torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')}, "
            f"TensorRT {m.get('tensorrt') or 'absent'}, load average {m.get('load_avg_1m')}\n\n")
    cols = ["backend", "precision", "FPS", "speedup vs torch", "p50 ms", "p90 ms", "p99 ms", "stages (ms)",
            "runner overhead", "masks ms", "GFLOPs/call", "sparsity", "FLOPs saved/frame", "peak RSS MB"]
    cols += ["peak GPU MB"] if gpu_cols else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r.stage_ms.items())
        fl = ", ".join(f"{k} {v:.2f}" for k, v in r.gflops_per_call.items())
        sp, saved = fmt_sparsity(r)
        speed = "-" if r.speedup_vs_torch is None else f"{r.speedup_vs_torch:.2f}x"
        cells = [r.backend, r.precision, f"{r.fps:.1f}", speed, f"{r.latency_p50_ms:.1f}", f"{r.latency_p90_ms:.1f}",
                 f"{r.latency_p99_ms:.1f}", stages, f"{r.runner_overhead_pct:.1f}%", f"{r.masks_ms:.2f}", fl, sp,
                 saved, f"{r.peak_rss_mb:.0f}"]
        cells += [("-" if r.peak_gpu_mem_mb is None else f"{r.peak_gpu_mem_mb:.0f}")] if gpu_cols else []
        lines.append("| " + " | ".join(cells) + " |")
    note = ("\n\nFPS and latency percentiles cover the whole loop; runner overhead is the share of a step spent "
            "outside backend calls; masks ms is the upsampling of masks to the source resolution, done on first "
            "access (by a sink) after the step and so outside the runner overhead. GFLOPs/call count custom ops "
            "dense. Sparsity is the share of the sparse convs' dense FLOPs that the gate's decisions skip, and "
            "FLOPs saved is net of the gate (percent: of the sparse stage's dense FLOPs); both are read from the "
            "eager PyTorch run, so other backends show '-' (the portable ONNX form computes the dense conv and "
            "selects, saving nothing).")
    if gpu_cols:
        note += (" Peak GPU MB is torch.cuda.max_memory_allocated (torch's allocator; TensorRT's own engine "
                 "memory is not in it).")
    return head + "\n".join(lines) + note


def plot(rows: list[BenchRow], latencies: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"{r.backend}\n{r.precision}" for r in rows]
    a.bar(labels, [r.fps for r in rows], color="#4c72b0")
    a.set_ylabel("FPS")
    a.set_title(f"{rows[0].model} {rows[0].resolution} ({rows[0].device})")
    b.boxplot([latencies[r.backend] for r in rows], tick_labels=labels)
    b.set_ylabel("latency per step (ms)")
    b.set_title(f"{(rows[0].machine.get('gpu') or rows[0].machine.get('cpu', ''))[:40]}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
