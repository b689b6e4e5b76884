"""Multi-scale deformable attention (Deformable DETR semantics), the op SeqFormer is built on.

Importing this package registers ``torch.ops.edgevis.ms_deform_attn``. Models call
:func:`ms_deform_attn`, which runs the custom op eagerly and emits the export flavor's ONNX form
during ``torch.onnx.export`` (see :mod:`.op`). Files:

- ``reference.py``: input checks and the grid_sample reference (ground truth);
- ``onnx_forms.py``: the portable gather form and the ``trt`` plugin nodes;
- ``ort_op.py``: onnxruntime Python ops running the ``trt`` nodes on CPU;
- ``kernel.cu`` / ``kernel.h``: the CUDA kernel (FP32/FP16 I/O, FP32 math), shared by
- ``ext.py`` (+ ``ext_binding.cpp``): a torch extension built on demand for GPU tests, and
- ``plugin.cpp``: the TensorRT IPluginV3 ``MSDeformAttn`` (built by ``plugins/CMakeLists.txt``).
"""

from __future__ import annotations

from edgevis.plugins.ms_deform_attn.onnx_forms import (
    BUILTIN_PLUGIN_NAME,
    PLUGIN_NAME,
    msda_builtin_trt_node,
    msda_portable,
    msda_trt_node,
)
from edgevis.plugins.ms_deform_attn.op import ms_deform_attn, ms_deform_attn_op
from edgevis.plugins.ms_deform_attn.reference import check_inputs, level_starts, ms_deform_attn_reference

__all__ = [
    "BUILTIN_PLUGIN_NAME",
    "PLUGIN_NAME",
    "check_inputs",
    "level_starts",
    "ms_deform_attn",
    "ms_deform_attn_op",
    "ms_deform_attn_reference",
    "msda_builtin_trt_node",
    "msda_portable",
    "msda_trt_node",
]
