"""``edgevis::convgru_update``: the fused ConvGRU state update as a torch.library custom op.

Inputs (all NCHW, contiguous or not):
- ``zr_pre`` (B, 2C, H, W): gate pre-activations, z channels first, then r (only z is read here);
- ``n_pre``  (B, C, H, W): candidate pre-activation ``conv_n([x, r*h])``, same dtype as ``zr_pre``;
- ``h``      (B, C, H, W): the hidden state, FP32 (FP16 only in an all-FP16 run).

Output: ``h' = (1 - sigmoid(z_pre)) * h + sigmoid(z_pre) * tanh(n_pre)`` in ``h``'s dtype, computed
in FP32. ``convgru_update_fp16`` also returns an FP16 copy of ``h'`` for the next FP16 layer, written
by the same pass (TensorRT: ``emit_fp16=1``, a second output).

Models call :func:`convgru_update` / :func:`convgru_update_fp16`. In eager mode they run the custom
op (CPU: a 3-pass torch implementation; CUDA: the fused kernel of ``kernel.cu`` through
:mod:`edgevis.plugins.convgru.ext`). While ``torch.onnx`` exports they emit the ONNX form of the
current flavor: ``portable`` = standard ops, ``trt`` = one ``edgevis::ConvGRUCell`` node.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from edgevis.errors import EdgevisError
from edgevis.plugins.convgru.reference import gru_update_reference
from edgevis.plugins.flavor import current_flavor, exporting, plugin_attrs

PLUGIN_NAME = "ConvGRUCell"
_FLOAT_DTYPES = (torch.float32, torch.float16)


def check_update_inputs(zr_pre: Tensor, n_pre: Tensor, h: Tensor) -> None:
    """Raise :class:`EdgevisError` naming the shapes/dtypes when the three inputs do not fit together."""
    for name, t in (("zr_pre", zr_pre), ("n_pre", n_pre), ("h", h)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            got = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise EdgevisError(f"convgru_update: {name} is {got}; expected a 4-D (B, C, H, W) tensor")
        if t.dtype not in _FLOAT_DTYPES:
            raise EdgevisError(f"convgru_update: {name} has dtype {t.dtype}; expected float32 or float16")
    # no int(): during export the batch is symbolic and must stay dynamic
    b, c, hh, ww = h.shape
    zs, ns, hs = list(zr_pre.shape), list(n_pre.shape), list(h.shape)
    if (tuple(zr_pre.shape[1:]) != (2 * c, hh, ww) or tuple(n_pre.shape[1:]) != (c, hh, ww)
            or zr_pre.shape[0] != b or n_pre.shape[0] != b):
        raise EdgevisError(
            f"convgru_update: zr_pre {zs}, n_pre {ns}, h {hs}; expected zr_pre [B, 2C, H, W] = {[b, 2 * c, hh, ww]} "
            f"and n_pre [B, C, H, W] = {hs} for h [B, C, H, W] = {hs}"
        )
    if zr_pre.dtype != n_pre.dtype:
        raise EdgevisError(
            f"convgru_update: zr_pre is {zr_pre.dtype} but n_pre is {n_pre.dtype}; both come from the gate convs "
            "and must share a dtype"
        )
    if h.dtype == torch.float16 and zr_pre.dtype != torch.float16:
        raise EdgevisError(
            f"convgru_update: h is float16 but the activations are {zr_pre.dtype}; keep h in float32 "
            "(the mixed-precision state) or run everything in float16"
        )


# ---- CPU / generic implementation ------------------------------------------------------------
def update_torch(zr_pre: Tensor, n_pre: Tensor, h: Tensor) -> Tensor:
    """The op's generic implementation: 3 passes (sigmoid, tanh, lerp) instead of the 6 of the plain formula.

    ``lerp(h, n, z) = h + z * (n - h)`` equals the reference to a few ulp (tests: <= 1e-6 abs in FP32).
    """
    c = h.shape[1]
    math_dtype = torch.promote_types(h.dtype, torch.float32)
    z = torch.sigmoid(zr_pre[:, :c].to(math_dtype))  # (B, C, H, W)
    n = torch.tanh(n_pre.to(math_dtype))  # (B, C, H, W)
    return torch.lerp(h.to(math_dtype), n, z).to(h.dtype)


_WARNED: set[str] = set()


def _cuda_kernel(zr_pre: Tensor, n_pre: Tensor, h: Tensor, emit_fp16: bool) -> tuple[Tensor, Tensor | None] | None:
    """Run the fused CUDA kernel, or return None: kernels switched off (:mod:`edgevis.plugins.kernels`), or
    it cannot be built (with one warning naming why)."""
    from edgevis.errors import MissingDependencyError
    from edgevis.plugins import kernels
    from edgevis.plugins.convgru import ext

    if not kernels.enabled():
        return None
    try:
        return ext.convgru_update_cuda(zr_pre, n_pre, h, emit_fp16=emit_fp16)
    except MissingDependencyError as e:
        if "ext" not in _WARNED:
            _WARNED.add("ext")
            warnings.warn(f"edgevis::convgru_update runs the torch fallback on CUDA: {e}", stacklevel=3)
        return None


@torch.library.custom_op("edgevis::convgru_update", mutates_args=())
def _convgru_update_op(zr_pre: Tensor, n_pre: Tensor, h: Tensor) -> Tensor:
    return update_torch(zr_pre, n_pre, h)


@_convgru_update_op.register_kernel("cuda")
def _convgru_update_cuda(zr_pre: Tensor, n_pre: Tensor, h: Tensor) -> Tensor:
    got = _cuda_kernel(zr_pre, n_pre, h, emit_fp16=False) if h.dtype == torch.float32 else None
    return got[0] if got is not None else update_torch(zr_pre, n_pre, h)


@_convgru_update_op.register_fake
def _convgru_update_fake(zr_pre: Tensor, n_pre: Tensor, h: Tensor) -> Tensor:
    return torch.empty_like(h)


@torch.library.custom_op("edgevis::convgru_update_fp16", mutates_args=())
def _convgru_update_fp16_op(zr_pre: Tensor, n_pre: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    out = update_torch(zr_pre, n_pre, h)
    return out, out.to(torch.float16)


@_convgru_update_fp16_op.register_kernel("cuda")
def _convgru_update_fp16_cuda(zr_pre: Tensor, n_pre: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    got = _cuda_kernel(zr_pre, n_pre, h, emit_fp16=True) if h.dtype == torch.float32 else None
    if got is not None and got[1] is not None:
        return got[0], got[1]
    out = update_torch(zr_pre, n_pre, h)
    return out, out.to(torch.float16)


@_convgru_update_fp16_op.register_fake
def _convgru_update_fp16_fake(zr_pre: Tensor, n_pre: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(h), torch.empty_like(h, dtype=torch.float16)


# ---- autograd ----------------------------------------------------------------------------------
def update_backward(zr_pre: Tensor, n_pre: Tensor, h: Tensor, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``h' = (1 - z) * h + z * n`` (``z = sigmoid(zr_pre[:, :C])``, ``n = tanh(n_pre)``).

    d/dh = 1 - z; d/dz_pre = (n - h) * z * (1 - z); d/dn_pre = z * (1 - n^2); the r half of ``zr_pre``
    is not read, so its gradient is zero. Math in ``h``'s dtype promoted to at least FP32; each
    gradient is returned in its input's dtype.
    """
    c = h.shape[1]
    math_dtype = torch.promote_types(h.dtype, torch.float32)
    z = torch.sigmoid(zr_pre[:, :c].to(math_dtype))  # (B, C, H, W)
    n = torch.tanh(n_pre.to(math_dtype))  # (B, C, H, W)
    g = grad.to(math_dtype)
    gz = g * (n - h.to(math_dtype)) * z * (1.0 - z)  # (B, C, H, W)
    g_zr = torch.cat([gz, torch.zeros_like(gz)], dim=1).to(zr_pre.dtype)  # (B, 2C, H, W)
    g_n = (g * z * (1.0 - n * n)).to(n_pre.dtype)
    g_h = (g * (1.0 - z)).to(h.dtype)
    return g_zr, g_n, g_h


def _save_inputs(ctx, inputs, output) -> None:  # noqa: ANN001
    ctx.save_for_backward(*inputs)


def _update_grad(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # noqa: ANN001
    return update_backward(*ctx.saved_tensors, grad)


def _update_fp16_grad(ctx, grad: Tensor | None, grad16: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:  # noqa: ANN001
    zr_pre, n_pre, h = ctx.saved_tensors
    total = torch.zeros_like(h, dtype=torch.float32) if grad is None else grad.float()
    if grad16 is not None:  # the FP16 copy is out.to(float16): its gradient flows straight to out
        total = total + grad16.float()
    return update_backward(zr_pre, n_pre, h, total)


_convgru_update_op.register_autograd(_update_grad, setup_context=_save_inputs)
_convgru_update_fp16_op.register_autograd(_update_fp16_grad, setup_context=_save_inputs)


# ---- what models call ------------------------------------------------------------------------
def _trt_node(zr_pre: Tensor, n_pre: Tensor, h: Tensor, emit_fp16: bool) -> Tensor | tuple[Tensor, Tensor]:
    attrs = plugin_attrs(emit_fp16=int(emit_fp16))
    if not emit_fp16:
        return torch.onnx.ops.symbolic(
            f"edgevis::{PLUGIN_NAME}", (zr_pre, n_pre, h), attrs, dtype=h.dtype, shape=h.shape, version=1
        )
    out, out16 = torch.onnx.ops.symbolic_multi_out(
        f"edgevis::{PLUGIN_NAME}",
        (zr_pre, n_pre, h),
        attrs,
        dtypes=(h.dtype, torch.float16),
        shapes=(h.shape, h.shape),
        version=1,
    )
    return out, out16


def convgru_update(zr_pre: Tensor, n_pre: Tensor, h: Tensor) -> Tensor:
    """h' = (1 - sigmoid(zr_pre[:, :C])) * h + sigmoid(zr_pre[:, :C]) * tanh(n_pre); see the module doc."""
    check_update_inputs(zr_pre, n_pre, h)
    if exporting():
        if current_flavor() == "trt":
            return _trt_node(zr_pre, n_pre, h, emit_fp16=False)
        return gru_update_reference(zr_pre, n_pre, h)
    return torch.ops.edgevis.convgru_update(zr_pre, n_pre, h)


def convgru_update_fp16(zr_pre: Tensor, n_pre: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """As :func:`convgru_update` (FP32 ``h``), plus an FP16 copy of h' for the next FP16 layer."""
    check_update_inputs(zr_pre, n_pre, h)
    if h.dtype != torch.float32:
        raise EdgevisError(f"convgru_update_fp16: h is {h.dtype}; the FP16 copy is only for an FP32 state")
    if exporting():
        if current_flavor() == "trt":
            return _trt_node(zr_pre, n_pre, h, emit_fp16=True)
        out = gru_update_reference(zr_pre, n_pre, h)
        return out, out.to(torch.float16)
    out, out16 = torch.ops.edgevis.convgru_update_fp16(zr_pre, n_pre, h)
    return out, out16
