"""ConvGRU recurrent state update (issue 4): reference cell, custom op, ONNX forms, CUDA kernel, TensorRT plugin.

The cell (recurrent SeqFormer encoder, [our design] in SEEDS.md)::

    zr = conv_zr([x, h]);  z, r = sigmoid(zr[:, :C]), sigmoid(zr[:, C:])
    n  = tanh(conv_n([x, r * h]));  h' = (1 - z) * h + z * n

How it is cut for deployment (our design):

- The two gate convs stay ordinary convolutions (native ONNX ``Conv`` in both flavors; dense kxk or
  depthwise-separable kxk + 1x1).
- The reset gating ``r * h`` feeds ``conv_n`` and so cannot be fused into the final update; it is
  plain ops (Slice, Sigmoid, Mul) that TensorRT fuses on its own.
- The state update is one fused op, ``edgevis::convgru_update(zr_pre, n_pre, h) -> h'``, which reads
  z in place from the (B, 2C, H, W) gate tensor. In the ``trt`` ONNX flavor it is one node
  ``edgevis::ConvGRUCell`` (inputs zr_pre, n_pre, h; output h'; attribute ``emit_fp16``: 1 adds a
  second FP16 output, the copy of h' the next FP16 layer reads). The hidden state is an explicit
  graph input and output, and stays FP32 even when the convs run FP16, so long streams do not drift
  (see ``python -m edgevis.bench.convgru_drift``).

Importing this package registers ``torch.ops.edgevis.convgru_update`` and
``torch.ops.edgevis.convgru_update_fp16``; it builds nothing and needs no GPU.
"""

from edgevis.plugins.convgru.op import PLUGIN_NAME, check_update_inputs, convgru_update, convgru_update_fp16
from edgevis.plugins.convgru.reference import ConvGRUCell, gru_update_reference, reset_gate

__all__ = [
    "PLUGIN_NAME",
    "ConvGRUCell",
    "check_update_inputs",
    "convgru_update",
    "convgru_update_fp16",
    "gru_update_reference",
    "reset_gate",
]
