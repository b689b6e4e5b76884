"""Torch extension around kernel.cu (the same source the TensorRT plugin compiles), built on first use.

Only for GPU tests and eager CUDA runs: :func:`available` is False on machines without CUDA or a
compiler, and the op then runs the fast PyTorch path on the GPU instead. Nothing here is imported
by ``import edgevis``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from edgevis.errors import MissingDependencyError

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
DENSE_ABOVE_GPU = 0.75

_BINDING = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include "tsc_kernel.h"

std::vector<at::Tensor> forward(at::Tensor x, at::Tensor x0, at::Tensor y0, at::Tensor w, at::Tensor b,
                                int64_t stride, int64_t padding, int64_t block, double tau_t, double tau_s,
                                bool force_dense, double dense_above) {
  TORCH_CHECK(x.is_cuda() && x0.is_cuda() && y0.is_cuda() && w.is_cuda() && b.is_cuda(), "all inputs must be CUDA");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf, "float32 or float16 only");
  auto t = x.scalar_type();
  x = x.contiguous(); x0 = x0.to(t).contiguous(); y0 = y0.to(t).contiguous(); w = w.to(t).contiguous(); b = b.to(t).contiguous();
  edgevis::tsc::Params p;
  p.n = x.size(0); p.cin = x.size(1); p.h = x.size(2); p.w = x.size(3); p.cout = w.size(0); p.k = w.size(2);
  p.stride = stride; p.padding = padding; p.block = block; p.tau_t = tau_t; p.tau_s = tau_s;
  p.force_dense = force_dense ? 1 : 0; p.dense_above = dense_above;
  p.dtype = t == at::kHalf ? edgevis::tsc::DType::kFloat16 : edgevis::tsc::DType::kFloat32;
  TORCH_CHECK(edgevis::tsc::validate(p) == 0, "unsupported TripleSparseConv configuration");
  int64_t ho = edgevis::tsc::outSize(p.h, p.k, p.stride, p.padding), wo = edgevis::tsc::outSize(p.w, p.k, p.stride, p.padding);
  TORCH_CHECK(y0.size(2) == ho && y0.size(3) == wo && y0.size(1) == p.cout, "y0 shape does not match");
  auto y = at::empty_like(y0), y0n = at::empty_like(y0), x0n = at::empty_like(x);
  auto d = at::empty({p.n, (ho + block - 1) / block, (wo + block - 1) / block}, x.options().dtype(at::kInt));
  auto ws = at::empty({(int64_t)edgevis::tsc::workspaceSize(p)}, x.options().dtype(at::kByte));
  auto err = edgevis::tsc::enqueue(p, x.data_ptr(), x0.data_ptr(), y0.data_ptr(), w.data_ptr(), b.data_ptr(),
                                   y.data_ptr(), x0n.data_ptr(), y0n.data_ptr(), d.data_ptr<int32_t>(), ws.data_ptr(),
                                   at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "TripleSparseConv kernel failed: ", cudaGetErrorString(err));
  return {y, x0n, y0n, d};
}
"""

_MODULE: Any = None
_FAILED: str | None = None


def load() -> Any:
    """Build (once, cached by torch under ~/.cache/torch_extensions) and return the extension module."""
    global _MODULE, _FAILED
    if _MODULE is not None:
        return _MODULE
    if _FAILED is not None:
        raise MissingDependencyError(_FAILED)
    if not torch.cuda.is_available():
        raise MissingDependencyError("the TripleSparseConv CUDA extension needs a CUDA GPU and a CUDA build of torch")
    try:
        from torch.utils.cpp_extension import load_inline

        _MODULE = load_inline(
            name="edgevis_triple_sparse_conv",
            cpp_sources=[_BINDING],
            cuda_sources=[(HERE / "kernel.cu").read_text()],
            functions=["forward"],
            extra_include_paths=[str(HERE)],
            extra_cuda_cflags=["-O3"],
            verbose=False,
        )
    except (RuntimeError, OSError, ImportError) as e:  # compiler missing, build error
        _FAILED = (f"building the TripleSparseConv CUDA extension failed ({type(e).__name__}: {e}); "
                   "install the CUDA toolkit (nvcc) and ninja, or use the PyTorch path")
        raise MissingDependencyError(_FAILED) from None
    return _MODULE


def available() -> bool:
    """True when the extension is (or can be) built here; logs why not, once."""
    if not torch.cuda.is_available():
        return False
    first_failure = _FAILED is None
    try:
        load()
    except MissingDependencyError as e:
        if first_failure:
            log.warning("%s; using the PyTorch path on the GPU", e)
        return False
    return True


def forward(x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
            stride: int, padding: int, block: int, tau_t: float, tau_s: float, force_dense: bool,
            dense_above: float = DENSE_ABOVE_GPU) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run kernel.cu: (y, x0_new, y0_new, decision)."""
    if bias is None:
        bias = torch.zeros(weight.shape[0], dtype=x.dtype, device=x.device)
    y, x0n, y0n, d = load().forward(x, x0, y0, weight, bias, stride, padding, block, tau_t, tau_s, force_dense,
                                    dense_above)
    return y, x0n, y0n, d
