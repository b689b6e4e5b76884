"""onnxruntime Python op for ``edgevis::TripleSparseConv`` (the trt-flavor node), run with the fast path."""

from __future__ import annotations

import numpy as np
import torch

from edgevis.plugins.ort_ops import register_ort_op
from edgevis.plugins.sparse_conv.fast import triple_sparse_conv_fast


@register_ort_op(
    "TripleSparseConv",
    inputs=["float", "float", "float", "float", "float"],
    outputs=["float", "float", "float", "int32"],
    attrs={"stride": "int64", "padding": "int64", "block": "int64", "tau_t": "float", "tau_s": "float",
           "force_dense": "int64"},
)
def triple_sparse_conv_ort(x: np.ndarray, x0: np.ndarray, y0: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                           **attrs: object) -> tuple[np.ndarray, ...]:
    t = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (x, x0, y0, weight, bias)]
    y, x0_new, _, d = triple_sparse_conv_fast(
        *t, stride=int(attrs.get("stride", 1)), padding=int(attrs.get("padding", 1)), block=int(attrs.get("block", 8)),
        tau_t=float(attrs.get("tau_t", 0.05)), tau_s=float(attrs.get("tau_s", 0.0)),
        force_dense=bool(attrs.get("force_dense", 0)),
    )
    y_np = y.contiguous().numpy()
    return y_np, x0_new.contiguous().numpy(), y_np.copy(), d.numpy().astype(np.int32)
