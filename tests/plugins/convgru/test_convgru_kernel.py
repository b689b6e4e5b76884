"""ConvGRU CUDA kernel: nvcc compile checks (CPU machines with nvcc), GPU parity (CUDA machines only)."""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from edgevis.plugins import PLUGINS
from edgevis.plugins.convgru import ext, gru_update_reference

ROOT = Path(__file__).resolve().parents[3]
PLUGIN_DIR = ROOT / "src" / "edgevis" / "plugins"
OP_DIR = PLUGIN_DIR / "convgru"
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH (CUDA toolkit not installed)")
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)


def test_kernel_compiles_for_orin_and_hopper(compile_kernel) -> None:
    """The acceptance command: kernel.cu alone, no TensorRT or torch headers, sm_87 + sm_90."""
    obj = compile_kernel("convgru")
    nm = shutil.which("nm")
    if nm:
        syms = subprocess.run([nm, str(obj)], capture_output=True, text=True).stdout
        assert " T edgevis_convgru_update" in syms  # the C launcher the plugin and ext.py call


@needs_nvcc
def test_ext_library_builds_and_rejects_bad_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch-side build path (nvcc -shared + ctypes) works without a GPU; bad sizes never launch."""
    monkeypatch.setenv("EDGEVIS_EXT_CACHE", str(tmp_path))
    lib = ext.load(archs=["87"])
    assert ext.build(archs=["87"]).parent == tmp_path
    invalid_value = 1  # cudaErrorInvalidValue
    assert lib.edgevis_convgru_update(None, None, 0, None, None, None, 1, 1, 1, None) == invalid_value
    assert lib.edgevis_convgru_update(1, 1, 7, 1, 1, None, 1, 1, 1, None) == invalid_value  # unknown act dtype


def test_plugin_source_matches_python_names() -> None:
    src = (OP_DIR / "plugin.cpp").read_text()
    assert f'kPluginName = "{PLUGINS["convgru"]}"' in src
    assert 'kPluginNamespace = "edgevis"' in src and 'kPluginVersion = "1"' in src
    assert 'kEmitFp16 = "emit_fp16"' in src and "REGISTER_TENSORRT_PLUGIN(ConvGRUCellCreator)" in src
    assert "#if defined(EDGEVIS_TENSORRT_PLUGIN)" in src
    assert not re.search(r"#include\s*[<\"](NvInfer|torch)", (OP_DIR / "kernel.cu").read_text())


# ---- GPU ------------------------------------------------------------------------------------
def _gpu_inputs(b: int, c: int, h: int, w: int, act: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cuda").manual_seed(0)
    zr = (torch.randn(b, 2 * c, h, w, device="cuda", generator=g) * 3).to(act)
    n = (torch.randn(b, c, h, w, device="cuda", generator=g) * 3).to(act)
    st = torch.randn(b, c, h, w, device="cuda", generator=g)
    return zr, n, st


@pytest.mark.gpu
@needs_cuda
@needs_nvcc
@pytest.mark.parametrize("act", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (2, 3, 7, 5), (3, 5, 9, 13), (1, 64, 45, 80)])
def test_kernel_matches_reference(act: torch.dtype, shape: tuple[int, int, int, int]) -> None:
    zr, n, h = _gpu_inputs(*shape, act)
    out, out16 = ext.convgru_update_cuda(zr, n, h, emit_fp16=True)
    want = gru_update_reference(zr.float(), n.float(), h)
    assert out.dtype == torch.float32 and out16 is not None and out16.dtype == torch.float16
    assert (out - want).abs().max().item() <= 1e-5
    assert torch.equal(out16, out.half())


@pytest.mark.gpu
@needs_cuda
@needs_nvcc
def test_kernel_unaligned_and_in_place() -> None:
    zr, n, h = _gpu_inputs(2, 3, 5, 7, torch.float32)  # C*H*W = 105: scalar tail, unaligned batch rows
    want = gru_update_reference(zr, n, h)
    buf = torch.empty(h.numel() + 1, device="cuda")[1:].view_as(h)  # misaligned output pointer
    out, _ = ext.convgru_update_cuda(zr, n, h, out=buf)
    assert (out - want).abs().max().item() <= 1e-5
    state = h.clone()
    ext.convgru_update_cuda(zr, n, state, out=state)  # in place: the state stays in its buffer
    assert (state - want).abs().max().item() <= 1e-5


@pytest.mark.gpu
@needs_cuda
@needs_nvcc
def test_custom_op_uses_kernel_on_cuda() -> None:
    zr, n, h = _gpu_inputs(1, 8, 6, 6, torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the op warns when it falls back to torch ops
        out = torch.ops.edgevis.convgru_update(zr, n, h)
    assert out.is_cuda and (out - gru_update_reference(zr.float(), n.float(), h)).abs().max().item() <= 1e-5
