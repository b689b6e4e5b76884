"""The two ONNX forms of a ConvGRU cell, and running them in onnxruntime.

- ``portable``: standard ops only (Conv, Slice, Sigmoid, Tanh, Mul, Sub, Add); stock onnxruntime, ARM too.
- ``trt``: the convs and the reset gating as native ops, plus one ``edgevis::ConvGRUCell`` node
  (inputs ``zr_pre``, ``n_pre``, ``h``; output ``h'``; attributes plugin_namespace, plugin_version,
  emit_fp16). TensorRT builds it from libedgevis_plugins.so; onnxruntime runs it on CPU through the
  Python op in :mod:`edgevis.plugins.convgru.ort_op`.

The exported graph is one frame: inputs ``x`` (B, in_ch, H, W) and state ``h`` (B, hid_ch, H, W),
output ``h_out``; its IOSpec (a state pair h -> h_out, zeros init) is stored in the metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgevis.errors import EdgevisError
from edgevis.plugins.convgru.reference import STATE_DTYPE, ConvGRUCell
from edgevis.plugins.flavor import check_flavor, export_flavor
from edgevis.spec import IOSpec, StateSpec, TensorSpec, dtype_name

ORT_IR_VERSION = 10  # onnxruntime 1.2x-1.3x accept IR <= 10/11; 10 is safe for every supported release


def cell_iospec(cell: ConvGRUCell, batch: int, height: int, width: int, model: str = "convgru_cell") -> IOSpec:
    """IOSpec of the one-frame graph: input ``x``, state pair ``h`` -> ``h_out`` (FP32, zeros)."""
    return IOSpec(
        model=model,
        stage="frame",
        inputs=[TensorSpec("x", dtype_name(torch.empty(0, dtype=cell.dtype)), (batch, cell.in_ch, height, width))],
        outputs=[],
        states=[StateSpec("h", "h_out", (batch, cell.hid_ch, height, width), "float32", "zeros")],
        dims={},
        tolerances={"h_out": 1e-5},
    )


def export_cell(
    cell: ConvGRUCell, path: str | Path, flavor: str, batch: int = 1, height: int = 16, width: int = 16
) -> Any:
    """Export one frame of ``cell`` to ``path`` in ``flavor``; returns the saved ``onnx.ModelProto``."""
    import onnx

    check_flavor(flavor)
    if height < 1 or width < 1 or batch < 1:
        raise EdgevisError(f"export_cell: batch={batch}, height={height}, width={width}; all must be >= 1")
    x = torch.randn(batch, cell.in_ch, height, width, dtype=cell.dtype)  # (B, in, H, W)
    h = torch.zeros(batch, cell.hid_ch, height, width, dtype=STATE_DTYPE)  # (B, hid, H, W)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cell = cell.eval()
    with torch.no_grad(), export_flavor(flavor):
        torch.onnx.export(
            cell,
            (x, h),
            str(path),
            dynamo=True,
            input_names=["x", "h"],
            output_names=["h_out"],
            external_data=False,
            opset_version=18,
            verbose=False,
        )
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, ORT_IR_VERSION)
    cell_iospec(cell, batch, height, width).write_onnx(proto)
    onnx.save(proto, str(path))
    return proto


def ort_session(model: str | Path | Any) -> Any:
    """onnxruntime CPU session for either flavor (trt-flavor nodes run through the Python ops)."""
    import onnx
    import onnxruntime as ort

    from edgevis.plugins.ort_ops import extensions_library_path, for_onnxruntime

    proto = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    proto, needs_ext = for_onnxruntime(proto)
    so = ort.SessionOptions()
    if needs_ext:
        so.register_custom_ops_library(extensions_library_path())
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One frame through an exported cell: returns h_out (B, hid, H, W)."""
    out = session.run(["h_out"], {"x": x.detach().cpu().numpy(), "h": h.detach().cpu().numpy()})[0]
    return torch.from_numpy(out)
