"""Custom ops: one folder per op (reference, torch custom op, ONNX forms, CUDA kernel, TensorRT plugin).

Importing ``edgevis.plugins.<op>`` registers ``torch.ops.edgevis.<op>``. The registry below is a
plain dict so tools (``make plugins``, the engine builder, the checks) can enumerate the ops.
"""

from __future__ import annotations

# folder -> TensorRT plugin name (the op_type of the trt-flavor node)
PLUGINS: dict[str, str] = {
    "ms_deform_attn": "MSDeformAttn",
    "convgru": "ConvGRUCell",
    "sparse_conv": "TripleSparseConv",
}
