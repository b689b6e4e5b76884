"""Shared by the plugin tests: the nvcc compile check every kernel.cu must pass."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

PLUGIN_SRC = Path(__file__).resolve().parents[2] / "src" / "edgevis" / "plugins"
NVCC = shutil.which("nvcc") or ("/usr/local/bin/nvcc" if Path("/usr/local/bin/nvcc").exists() else None)


@pytest.fixture
def compile_kernel(tmp_path: Path) -> Callable[[str], Path]:
    """``compile_kernel(op)``: the acceptance command, ``nvcc -c plugins/<op>/kernel.cu`` standalone (no
    TensorRT or torch headers) for sm_87 (Jetson Orin) and sm_90 (Hopper); asserts it builds and returns
    the object file. Skips where nvcc is missing."""
    if NVCC is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")

    def build(op: str) -> Path:
        obj = tmp_path / f"{op}.o"
        cmd = [NVCC, "-c", str(PLUGIN_SRC / op / "kernel.cu"), "-o", str(obj), "-I", str(PLUGIN_SRC),
               "-I", str(PLUGIN_SRC / op), "-gencode", "arch=compute_87,code=sm_87",
               "-gencode", "arch=compute_90,code=sm_90", "-Xcompiler", "-fPIC"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert obj.stat().st_size > 0
        return obj

    return build
