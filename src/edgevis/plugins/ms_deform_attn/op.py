"""``torch.ops.edgevis.ms_deform_attn`` and the one public function models call.

Eager (and torch.compile): :func:`ms_deform_attn` calls the custom op, which runs the CUDA kernel
when the extension is loaded (:func:`edgevis.plugins.ms_deform_attn.ext.load`) and the PyTorch
reference otherwise. During ONNX export it emits the current flavor's form instead:

- ``portable``: :func:`~edgevis.plugins.ms_deform_attn.onnx_forms.msda_portable` (standard ops);
- ``trt``: one ``edgevis::MSDeformAttn`` node, or TensorRT's built-in
  ``MultiscaleDeformableAttnPlugin_TRT`` with ``export_flavor("trt", msda_builtin=True)``.

``spatial_shapes`` is data to torch.export, so the export path needs the level shapes as static
Python ints: pass ``shapes=((H0, W0), (H1, W1), ...)`` (models know them from the input size).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from edgevis.errors import SpecError
from edgevis.plugins.flavor import current_flavor, exporting, flavor_option
from edgevis.plugins.ms_deform_attn.onnx_forms import msda_builtin_trt_node, msda_portable, msda_trt_node
from edgevis.plugins.ms_deform_attn.reference import (
    Shapes,
    _is_concrete,
    check_inputs,
    level_starts,
    ms_deform_attn_reference,
    normalize_shapes,
)


@torch.library.custom_op("edgevis::ms_deform_attn", mutates_args=())
def ms_deform_attn_op(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """(B, S, M, D), (L, 2), (L,), (B, Q, M, L, P, 2), (B, Q, M, L, P) -> (B, Q, M*D)."""
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if value.is_cuda:
        from edgevis.plugins import kernels
        from edgevis.plugins.ms_deform_attn import ext

        kernel = ext.loaded() if kernels.enabled() else None
        if kernel is not None:
            return kernel.forward(
                value.contiguous(),
                spatial_shapes.to(device=value.device, dtype=torch.int64).contiguous(),
                level_start_index.to(device=value.device, dtype=torch.int64).contiguous(),
                sampling_locations.contiguous(),
                attention_weights.contiguous(),
            )
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


@ms_deform_attn_op.register_fake
def _fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):  # noqa: ANN001, ANN202
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if exporting():  # the custom op has no ONNX translation: the public function must emit the form
        raise SpecError(_NEEDS_SHAPES)
    B, _, M, D = value.shape
    return value.new_empty((B, sampling_locations.shape[1], M * D))


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN202
    value, spatial_shapes, level_start_index, loc, weights = ctx.saved_tensors
    with torch.enable_grad():
        v, lo, w = (t.detach().requires_grad_(True) for t in (value, loc, weights))
        out = ms_deform_attn_reference(v, spatial_shapes, level_start_index, lo, w)
        gv, gl, gw = torch.autograd.grad(out, (v, lo, w), grad)
    return gv, None, None, gl, gw


ms_deform_attn_op.register_autograd(_backward, setup_context=_setup_context)


_NEEDS_SHAPES = (
    "ms_deform_attn: exporting to ONNX needs the level shapes as Python ints, but received only a traced "
    "spatial_shapes tensor; call edgevis.plugins.ms_deform_attn.ms_deform_attn(..., "
    "shapes=((H0, W0), (H1, W1), ...)) rather than torch.ops.edgevis.ms_deform_attn"
)


def _static_shapes(spatial_shapes: torch.Tensor | None, shapes: Sequence[Sequence[int]] | None) -> Shapes:
    if shapes is not None:
        return normalize_shapes(shapes)
    if spatial_shapes is not None and _is_concrete(spatial_shapes):
        return normalize_shapes(spatial_shapes.tolist())
    raise SpecError(_NEEDS_SHAPES)


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor | None,
    level_start_index: torch.Tensor | None,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    shapes: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """Multi-scale deformable attention; returns (B, Q, M*D).

    ``spatial_shapes``/``level_start_index`` may be None when ``shapes`` is given (they are then
    built from it). Pass ``shapes`` whenever the call may be exported to ONNX.
    """
    if exporting():
        static = _static_shapes(spatial_shapes, shapes)
        check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, static)
        if current_flavor() == "trt":
            form = msda_builtin_trt_node if flavor_option("msda_builtin", False) else msda_trt_node
            return form(value, static, sampling_locations, attention_weights)
        return msda_portable(value, static, sampling_locations, attention_weights)
    if spatial_shapes is None or level_start_index is None:
        if shapes is None:
            raise SpecError(
                "ms_deform_attn: received spatial_shapes=None or level_start_index=None and no shapes; "
                "pass the (L, 2) and (L,) int64 tensors, or shapes=((H0, W0), ...)"
            )
        static = normalize_shapes(shapes)
        if spatial_shapes is None:
            spatial_shapes = torch.tensor(static, dtype=torch.int64, device=value.device)  # (L, 2)
        if level_start_index is None:
            level_start_index = torch.tensor(level_starts(static), dtype=torch.int64, device=value.device)  # (L,)
    elif shapes is not None:
        static = normalize_shapes(shapes)
        if _is_concrete(spatial_shapes) and [tuple(r) for r in spatial_shapes.tolist()] != list(static):
            raise SpecError(
                f"ms_deform_attn: spatial_shapes {spatial_shapes.tolist()} disagrees with shapes {list(static)}; "
                "pass the same level sizes to both"
            )
    return torch.ops.edgevis.ms_deform_attn(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
