"""The two ONNX forms of the triple-gated sparse convolution.

- ``trt``: one ``edgevis::TripleSparseConv`` node; inputs ``x, x0, y0, weight, bias`` (bias is zeros
  when the conv has none), outputs ``y, x0_new, y0_new, decision`` (decision int32, (N, nbh, nbw)).
  Attributes: ``plugin_namespace``, ``plugin_version``, ``stride``, ``padding``, ``block`` (ints),
  ``tau_t``, ``tau_s`` (floats), ``force_dense`` (int 0/1). TensorRT builds it from
  ``libedgevis_plugins.so`` (plugin.cpp); onnxruntime runs it through ort_op.py.
- ``portable``: standard ONNX ops (dense conv, stride-2 lattice conv, gathers, max-pools, Where).
  It computes the full conv every frame and *selects*, so it is exactly as correct as the reference
  but **not faster than the dense layer** (it is slower: it also runs the gate and the lattice conv).
  It exists so the same stage graph runs on any onnxruntime (ARM included) with identical state I/O.
"""

from __future__ import annotations

import torch

from edgevis.plugins.flavor import plugin_attrs
from edgevis.plugins.sparse_conv.reference import triple_sparse_conv_reference

PLUGIN_NAME = "TripleSparseConv"


def trt_form(x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             *, stride: int, padding: int, block: int, tau_t: float, tau_s: float,
             force_dense: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Emit the ``edgevis::TripleSparseConv`` plugin node (call only while exporting)."""
    if bias is None:
        bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)  # (Cout,)
    n = x.shape[0]
    ho, wo = y0.shape[-2], y0.shape[-1]
    dec_shape = (n, (ho + block - 1) // block, (wo + block - 1) // block)
    attrs = plugin_attrs(stride=int(stride), padding=int(padding), block=int(block), tau_t=float(tau_t),
                         tau_s=float(tau_s), force_dense=int(bool(force_dense)))
    y, x0_new, y0_new, dec = torch.onnx.ops.symbolic_multi_out(
        f"edgevis::{PLUGIN_NAME}",
        (x, x0, y0, weight, bias),
        attrs,
        dtypes=(y0.dtype, x.dtype, y0.dtype, torch.int32),
        shapes=(tuple(y0.shape), tuple(x.shape), tuple(y0.shape), dec_shape),
        version=1,
    )
    return y, x0_new, y0_new, dec


def portable_form(x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None, *, stride: int, padding: int, block: int, tau_t: float, tau_s: float,
                  force_dense: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standard-ops form: the reference (dense compute + select), traced as is."""
    return triple_sparse_conv_reference(x, x0, y0, weight, bias, stride=stride, padding=padding, block=block,
                                        tau_t=tau_t, tau_s=tau_s, force_dense=force_dense)
