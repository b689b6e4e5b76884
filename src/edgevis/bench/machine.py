"""Describe the machine a number came from (CPU, cores, GPU, driver, library versions); helpers the
benchmark scripts share (argument parser, median timing, relative error, JSONL rows)."""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from typing import Any


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "gpu": None,
        "driver": None,
        "tensorrt": None,
        # other work on the machine skews timings: every row records the load it was measured under
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        try:
            import subprocess

            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            info["driver"] = out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        import tensorrt  # type: ignore[import-not-found]

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    return info


def machine_id(info: dict[str, Any]) -> str:
    """A file-name-safe short name: cpu/gpu and core count."""
    base = info.get("gpu") or info.get("cpu") or "machine"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", base).strip("-").lower()[:40]
    return f"{slug}-{info.get('cores')}c"


def append_jsonl(path: str | os.PathLike[str], row: dict[str, Any]) -> str:
    """Append one JSON row (a benchmark run) to ``path``, creating folders; returns the path."""
    import json
    from pathlib import Path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as f:
        f.write(json.dumps(row, sort_keys=True, default=str) + "\n")
    return str(p)


def bench_parser(doc: str | None, *, prog: str | None = None, threads: int | str | None = None,
                 threads_help: str | None = None, reps: int | None = None, warmup: int | None = None,
                 out: str | None = None) -> argparse.ArgumentParser:
    """The argument parser the micro-benchmark scripts share: the module doc's first paragraph as the
    description, plus ``--threads``, ``--reps``, ``--warmup`` and ``--out`` for each default given.

    ``threads`` is an int (one thread count) or a string (a comma list the script sweeps, e.g. "1,2").
    Scripts add their own options to the parser returned.
    """
    p = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0].strip() or None)
    if threads is not None:
        p.add_argument("--threads", type=type(threads), default=threads, help=threads_help)
    if reps is not None:
        p.add_argument("--reps", type=int, default=reps)
    if warmup is not None:
        p.add_argument("--warmup", type=int, default=warmup)
    if out is not None:
        p.add_argument("--out", default=out)
    return p


def median_ms(fn: Callable[[], Any], *, warmup: int, iters: int, sync: Callable[[], None] = lambda: None) -> float:
    """Median wall time of ``fn`` in ms over ``iters`` calls after ``warmup`` calls; ``sync`` (a device
    synchronisation, say) runs after the warm-up and inside each timed call."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def relative_error(a: Any, ref: Any) -> float:
    """``||a - ref|| / ||ref||`` over whole tensors (0 for identical outputs; a zero ``ref`` counts as 1e-12)."""
    return float((a - ref).norm() / ref.norm().clamp_min(1e-12))
