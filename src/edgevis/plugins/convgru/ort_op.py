"""onnxruntime Python op for the ``trt``-flavor node ``edgevis::ConvGRUCell`` (CPU tests of the TensorRT graph).

Registered through :func:`edgevis.plugins.ort_ops.register_ort_op`; imported on demand by
:func:`edgevis.plugins.ort_ops.for_onnxruntime`. It runs the op's torch implementation on the
node's inputs (zr_pre, n_pre, h: FP32) and returns h'. onnxruntime-extensions Python ops have a fixed
signature, so only the FP32 single-output form (``emit_fp16=0``, the form every FP32 export has)
runs here; the ``emit_fp16=1`` form is TensorRT-only and its graph is checked structurally.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edgevis.errors import EdgevisError
from edgevis.plugins.convgru.op import PLUGIN_NAME, check_update_inputs, update_torch
from edgevis.plugins.ort_ops import register_ort_op


@register_ort_op(PLUGIN_NAME, inputs=["float", "float", "float"], outputs=["float"], attrs={"emit_fp16": "int64"})
def convgru_cell_ort(zr_pre: np.ndarray, n_pre: np.ndarray, h: np.ndarray, **attrs: Any) -> np.ndarray:
    if int(attrs.get("emit_fp16", 0)):
        raise EdgevisError(
            f"{PLUGIN_NAME} with emit_fp16=1 has two outputs and runs only in TensorRT; "
            "export the FP32 graph to run it in onnxruntime"
        )
    zr_t, n_t, h_t = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (zr_pre, n_pre, h))
    check_update_inputs(zr_t, n_t, h_t)
    with torch.no_grad():
        return update_torch(zr_t, n_t, h_t).numpy()  # (B, C, H, W)
