"""Compile-check the TensorRT plugin sources (plugins/<op>/plugin.cpp) with g++ -fsyntax-only.

The plugins are only ever built by plugins/CMakeLists.txt against a real TensorRT, which CI does not
have. This test catches API drift (override signatures, const/noexcept, field and enum names) as soon
as TensorRT headers are available:

  EDGEVIS_TRT_INCLUDE=<dir with NvInfer.h>   explicit header directory (checked first)
  $TENSORRT_ROOT/include                     a TensorRT tarball
  /usr/include/{x86_64,aarch64}-linux-gnu    the Debian/JetPack packages (libnvinfer-headers-dev)

CUDA headers (cuda_runtime_api.h) come from $CUDA_HOME/include, $CUDA_PATH/include or /usr/local/cuda*.
Skips, with the reason, when g++, the TensorRT headers or the CUDA headers are missing. Downloads nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parents[2] / "src" / "edgevis" / "plugins"
OPS = ("ms_deform_attn", "convgru", "sparse_conv")


def _trt_include() -> Path | None:
    candidates: list[Path] = []
    if os.environ.get("EDGEVIS_TRT_INCLUDE"):
        candidates.append(Path(os.environ["EDGEVIS_TRT_INCLUDE"]))
    if os.environ.get("TENSORRT_ROOT"):
        candidates.append(Path(os.environ["TENSORRT_ROOT"]) / "include")
    candidates += [Path("/usr/include/x86_64-linux-gnu"), Path("/usr/include/aarch64-linux-gnu"), Path("/usr/include")]
    return next((c for c in candidates if (c / "NvInfer.h").is_file()), None)


def _cuda_include() -> Path | None:
    candidates = [Path(os.environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates.append(Path("/usr/local/cuda/include"))
    candidates += sorted(Path("/usr/local").glob("cuda-*/include"), reverse=True)
    candidates.append(Path("/usr/include"))
    return next((c for c in candidates if (c / "cuda_runtime_api.h").is_file()), None)


def _trt_version(include: Path) -> str:
    header = include / "NvInferVersion.h"
    if not header.is_file():
        return "unknown"
    defines = dict(re.findall(r"^#define\s+(\w+)\s+(\w+)", header.read_text(errors="replace"), re.M))

    def resolve(name: str) -> str:
        value = defines.get(name, "?")
        return defines.get(value, value)  # TensorRT >= 10.11 defines NV_TENSORRT_MAJOR via TRT_MAJOR_ENTERPRISE

    return ".".join(resolve(f"NV_TENSORRT_{part}") for part in ("MAJOR", "MINOR", "PATCH"))


GXX = shutil.which("g++")
TRT_INCLUDE = _trt_include()
CUDA_INCLUDE = _cuda_include()

needs_gxx = pytest.mark.skipif(GXX is None, reason="g++ not found")
needs_trt_headers = pytest.mark.skipif(
    TRT_INCLUDE is None,
    reason="no TensorRT headers (NvInfer.h): set EDGEVIS_TRT_INCLUDE or TENSORRT_ROOT, or install libnvinfer-headers-dev",
)
needs_cuda_headers = pytest.mark.skipif(
    CUDA_INCLUDE is None, reason="no CUDA headers (cuda_runtime_api.h): set CUDA_HOME"
)


@needs_gxx
@needs_trt_headers
@needs_cuda_headers
@pytest.mark.parametrize("op", OPS)
def test_plugin_compiles_cleanly(op: str) -> None:
    assert TRT_INCLUDE is not None and CUDA_INCLUDE is not None and GXX is not None
    cmd = [
        GXX, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
        "-DEDGEVIS_TENSORRT_PLUGIN=1",  # as plugins/CMakeLists.txt defines it
        "-isystem", str(TRT_INCLUDE), "-isystem", str(CUDA_INCLUDE),
        "-I", str(PLUGINS), "-I", str(PLUGINS / op),
        str(PLUGINS / op / "plugin.cpp"),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, (
        f"{op}/plugin.cpp does not compile against TensorRT {_trt_version(TRT_INCLUDE)} headers in {TRT_INCLUDE}:\n"
        + res.stderr[-4000:]
    )


def test_every_plugin_source_is_checked() -> None:
    assert sorted(p.parent.name for p in PLUGINS.glob("*/plugin.cpp")) == sorted(OPS)
