"""Describe the machine a number came from (CPU, cores, GPU, driver, library versions)."""

from __future__ import annotations

import os
import platform
import re
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
