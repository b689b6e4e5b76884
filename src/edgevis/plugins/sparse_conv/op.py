"""``torch.ops.edgevis.triple_sparse_conv`` and :func:`triple_sparse_conv`, the one function models call.

Eager: CPU tensors run the fast gather-GEMM path (fast.py) directly, without the custom-op dispatch
(per-layer overhead matters for small maps); CUDA tensors run the CUDA kernel
through the torch extension (ext.py) when it builds, else the same fast path on the GPU.
While exporting, the flavor picks the ONNX form (onnx_forms.py).
"""

from __future__ import annotations

import logging

import torch

from edgevis.plugins.flavor import current_flavor, exporting
from edgevis.plugins.sparse_conv.fast import triple_sparse_conv_fast
from edgevis.plugins.sparse_conv.onnx_forms import portable_form, trt_form
from edgevis.plugins.sparse_conv.reference import check_config, out_size

log = logging.getLogger(__name__)
Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _cuda_impl(x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               kw: dict) -> Outputs | None:
    from edgevis.plugins import kernels
    from edgevis.plugins.sparse_conv import ext

    if not kernels.enabled() or not ext.available():
        return None
    return ext.forward(x, x0, y0, weight, bias, **kw)


@torch.library.custom_op("edgevis::triple_sparse_conv", mutates_args=())
def _triple_sparse_conv_op(x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, weight: torch.Tensor,
                           bias: torch.Tensor | None, stride: int, padding: int, block: int, tau_t: float,
                           tau_s: float, force_dense: bool) -> Outputs:
    kw = dict(stride=stride, padding=padding, block=block, tau_t=tau_t, tau_s=tau_s, force_dense=force_dense)
    out = _cuda_impl(x, x0, y0, weight, bias, kw) if x.is_cuda else None
    if out is None:
        y, x0_new, _, d = triple_sparse_conv_fast(x, x0, y0, weight, bias, **kw)
        out = (y, x0_new, y.clone(), d)  # custom-op outputs may not alias each other
    return out


@_triple_sparse_conv_op.register_fake
def _(x, x0, y0, weight, bias, stride, padding, block, tau_t, tau_s, force_dense):  # noqa: ANN001
    n = x.shape[0]
    ho, wo = y0.shape[-2], y0.shape[-1]
    dec = x.new_empty((n, (ho + block - 1) // block, (wo + block - 1) // block), dtype=torch.int32)
    return torch.empty_like(y0), torch.empty_like(x), torch.empty_like(y0), dec


def triple_sparse_conv(
    x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
    stride: int = 1, padding: int = 1, block: int = 8, tau_t: float = 0.05, tau_s: float = 0.0,
    force_dense: bool = False,
) -> Outputs:
    """Triple-gated sparse conv with explicit caches: ``(y, x0_new, y0_new, decision)``.

    ``x, x0``: (N, Cin, H, W); ``y0``: (N, Cout, Ho, Wo); ``weight``: (Cout, Cin, k, k), k in {1, 3};
    ``decision``: (N, ceil(Ho/block), ceil(Wo/block)) int32, 0=REUSE 1=INTERPOLATE 2=COMPUTE.
    A dense frame: ``force_dense=True`` or ``x0`` filled with -inf. Definition: reference.py.
    """
    check_config(weight.shape[-1], stride, padding, block, tau_t, tau_s)
    if not exporting():
        x0, y0, force_dense = fit_caches(x, x0, y0, weight, stride, padding, force_dense)
    kw = dict(stride=stride, padding=padding, block=block, tau_t=float(tau_t), tau_s=float(tau_s),
              force_dense=bool(force_dense))
    if exporting():
        return trt_form(x, x0, y0, weight, bias, **kw) if current_flavor() == "trt" else portable_form(
            x, x0, y0, weight, bias, **kw)
    if not x.is_cuda and not torch.compiler.is_compiling() and not (torch.is_grad_enabled() and x.requires_grad):
        # eager CPU: call the fast path directly (no custom-op dispatch, no defensive copy of y);
        # y0_new is y itself, as documented
        return triple_sparse_conv_fast(x, x0, y0, weight, bias, **kw)
    return tuple(torch.ops.edgevis.triple_sparse_conv(x, x0, y0, weight, bias, *kw.values()))  # type: ignore[return-value]


def fit_caches(x: torch.Tensor, x0: torch.Tensor | None, y0: torch.Tensor | None, weight: torch.Tensor, stride: int,
               padding: int, force_dense: bool = False) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Caches that fit ``x``: missing or mismatched ones (a resolution change, a new batch size) are
    replaced by fresh ones and the frame is made dense, with a logged note instead of an error."""
    n, _, h, w = x.shape
    k = weight.shape[-1]
    want_y = (n, weight.shape[0], *output_hw(h, w, k, stride, padding))
    if x0 is not None and y0 is not None and tuple(x0.shape) == tuple(x.shape) and tuple(y0.shape) == want_y:
        return x0, y0, force_dense
    if x0 is not None or y0 is not None:
        log.warning("TripleSparseConv: caches x0 %s / y0 %s do not match input %s (expected y0 %s); "
                    "resetting them and computing this frame densely",
                    None if x0 is None else list(x0.shape), None if y0 is None else list(y0.shape),
                    list(x.shape), list(want_y))
    return x.detach().clone(), x.new_zeros(want_y), True


def output_hw(h: int, w: int, kernel_size: int, stride: int, padding: int) -> tuple[int, int]:
    return out_size(h, kernel_size, stride, padding), out_size(w, kernel_size, stride, padding)
