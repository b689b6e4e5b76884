"""The fused CUDA kernel for torch tensors, built on demand.

``kernel.cu`` is the single kernel source shared with the TensorRT plugin. This module compiles it
with ``nvcc -shared`` into a small library (cached by source hash and GPU architecture) the first time
a CUDA tensor needs it, and calls its C launcher through ctypes with the tensors' data pointers on
torch's current stream. No torch C++ headers are involved, so the build takes seconds, and the same
build path is checked on CPU-only machines (nvcc present, no GPU).

Nothing here runs at import: ``import edgevis.plugins.convgru`` works without CUDA or nvcc.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from edgevis.errors import EdgevisError, MissingDependencyError

HERE = Path(__file__).resolve().parent
SOURCES = (HERE / "kernel.cu", HERE / "kernel.h")
ACT_DTYPES = {torch.float32: 0, torch.float16: 1}  # EdgevisActDtype in kernel.h
_LIBS: dict[str, ctypes.CDLL] = {}


def find_nvcc() -> str:
    """Path of nvcc: ``$CUDA_HOME/bin/nvcc`` or the first on PATH; MissingDependencyError if none."""
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if not found:
        raise MissingDependencyError(
            "building the ConvGRU CUDA kernel needs nvcc; install the CUDA toolkit or set CUDA_HOME"
        )
    return found


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEVIS_EXT_CACHE", Path.home() / ".cache" / "edgevis" / "ext"))


def _arch_flags(archs: Sequence[str]) -> list[str]:
    flags = []
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    return flags + ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]  # PTX for newer GPUs


def build(archs: Sequence[str] | None = None, out_dir: Path | None = None) -> Path:
    """Compile kernel.cu into a shared library for ``archs`` (default: the current GPU); returns its path."""
    if archs is None:
        if not torch.cuda.is_available():
            raise MissingDependencyError(
                "the ConvGRU CUDA kernel needs a CUDA GPU (torch.cuda.is_available() is False)"
            )
        major, minor = torch.cuda.get_device_capability()
        archs = [f"{major}{minor}"]
    archs = sorted(set(archs))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES) + ",".join(archs).encode()).hexdigest()[:16]
    out_dir = out_dir or cache_dir()
    lib = out_dir / f"libedgevis_convgru_{digest}.so"
    if lib.is_file():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    nvcc = find_nvcc()
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_lib = Path(tmp) / lib.name
        cmd = [
            nvcc,
            "-shared",
            "-O3",
            "-std=c++17",
            "-Xcompiler",
            "-fPIC",
            *_arch_flags(archs),
            "-I",
            str(HERE),
            str(SOURCES[0]),
            "-o",
            str(tmp_lib),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise MissingDependencyError(
                f"nvcc failed to build the ConvGRU kernel (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}; "
                f"command: {' '.join(cmd)}"
            )
        os.replace(tmp_lib, lib)  # atomic: concurrent builders never see a half-written library
    return lib


def load(archs: Sequence[str] | None = None) -> ctypes.CDLL:
    """Build (once) and load the kernel library; the C launcher gets its ctypes signature here."""
    path = str(build(archs))
    if path not in _LIBS:
        lib = ctypes.CDLL(path)
        fn = lib.edgevis_convgru_update
        fn.restype = ctypes.c_int
        fn.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
        ]
        _LIBS[path] = lib
    return _LIBS[path]


def convgru_update_cuda(
    zr_pre: Tensor, n_pre: Tensor, h: Tensor, emit_fp16: bool = False, out: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """Fused update on CUDA tensors: returns ``(h' FP32, h' FP16 or None)``.

    zr_pre (B, 2C, H, W) and n_pre (B, C, H, W) FP32 or FP16; h (B, C, H, W) FP32. ``out`` may be
    ``h`` itself for an in-place update (the state then stays in the same buffer across frames).
    """
    tensors = {"zr_pre": zr_pre, "n_pre": n_pre, "h": h}
    for name, t in tensors.items():
        if not t.is_cuda or t.device != h.device:
            raise EdgevisError(f"convgru_update_cuda: {name} is on {t.device}, expected CUDA tensors on {h.device}")
    if h.dtype != torch.float32 or zr_pre.dtype not in ACT_DTYPES or n_pre.dtype != zr_pre.dtype:
        raise EdgevisError(
            f"convgru_update_cuda: zr_pre {zr_pre.dtype}, n_pre {n_pre.dtype}, h {h.dtype}; expected FP32 or FP16 "
            "activations (both the same) and an FP32 h"
        )
    b, c, hh, ww = (int(s) for s in h.shape)
    if list(zr_pre.shape) != [b, 2 * c, hh, ww] or list(n_pre.shape) != [b, c, hh, ww]:
        raise EdgevisError(
            f"convgru_update_cuda: zr_pre {list(zr_pre.shape)}, n_pre {list(n_pre.shape)}, h {list(h.shape)}; "
            f"expected zr_pre {[b, 2 * c, hh, ww]} and n_pre {[b, c, hh, ww]}"
        )
    fn = load().edgevis_convgru_update
    zr_pre, n_pre, h = zr_pre.contiguous(), n_pre.contiguous(), h.contiguous()
    if out is None:
        out = torch.empty_like(h)  # (B, C, H, W) FP32
    elif out.shape != h.shape or out.dtype != torch.float32 or not out.is_contiguous() or out.device != h.device:
        raise EdgevisError(
            f"convgru_update_cuda: out {list(out.shape)} {out.dtype}; expected a contiguous FP32 {list(h.shape)}"
        )
    out16 = torch.empty(h.shape, dtype=torch.float16, device=h.device) if emit_fp16 else None  # (B, C, H, W)
    if out.numel() == 0:
        return out, out16
    stream = torch.cuda.current_stream(h.device).cuda_stream
    with torch.cuda.device(h.device):
        rc = fn(
            zr_pre.data_ptr(),
            n_pre.data_ptr(),
            ACT_DTYPES[zr_pre.dtype],
            h.data_ptr(),
            out.data_ptr(),
            out16.data_ptr() if out16 is not None else None,
            b,
            c,
            hh * ww,
            stream,
        )
    if rc != 0:
        raise EdgevisError(
            f"the ConvGRU CUDA kernel failed with CUDA error {rc} for h {list(h.shape)}; "
            "a driver older than the nvcc used to build it also shows here (rebuild with a matching CUDA_HOME)"
        )
    return out, out16
