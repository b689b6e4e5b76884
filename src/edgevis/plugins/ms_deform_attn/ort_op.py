"""onnxruntime (CPU) Python ops for the ``trt``-flavor MSDA nodes, computed with the PyTorch reference.

Registers ``MSDeformAttn`` (edgevis plugin: int64 shape inputs, output [B, Q, M*D]) and
``MultiscaleDeformableAttnPlugin_TRT`` (TensorRT built-in: int32 shape inputs, output [B, Q, M, D]).
Imported by :func:`edgevis.plugins.ort_ops.load_ort_ops`; see that module for how graphs are run.
"""

from __future__ import annotations

import numpy as np
import torch

from edgevis.plugins.ms_deform_attn.onnx_forms import BUILTIN_PLUGIN_NAME, PLUGIN_NAME
from edgevis.plugins.ms_deform_attn.reference import check_inputs, ms_deform_attn_reference
from edgevis.plugins.ort_ops import register_ort_op


def _run(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> np.ndarray:  # noqa: ANN001
    args = [
        torch.from_numpy(np.ascontiguousarray(a))
        for a in (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    ]
    check_inputs(*args)
    return ms_deform_attn_reference(*args).numpy()  # (B, Q, M*D)


@register_ort_op(
    PLUGIN_NAME,
    inputs=["float", "int64", "int64", "float", "float"],
    outputs=["float"],
    attrs={"plugin_namespace": "string", "plugin_version": "string", "num_levels": "int64", "num_points": "int64"},
)
def msdeformattn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, **attrs):  # noqa: ANN001, ANN201
    return _run(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


@register_ort_op(
    BUILTIN_PLUGIN_NAME,
    inputs=["float", "int32", "int32", "float", "float"],
    outputs=["float"],
    attrs={"plugin_namespace": "string", "plugin_version": "string"},
)
def multiscale_deformable_attn_plugin_trt(
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, **attrs
):  # noqa: ANN001, ANN201
    B, _, M, D = value.shape
    out = _run(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    return out.reshape(B, out.shape[1], M, D)  # (B, Q, M, D), the built-in plugin's layout
