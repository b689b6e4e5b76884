"""Run ``trt``-flavor graphs in onnxruntime on CPU through Python custom ops.

TensorRT builds ``edgevis::<Plugin>`` nodes from ``libedgevis_plugins.so``. To test that exact
graph on a machine without TensorRT, each plugin also registers an onnxruntime-extensions Python
op implementing the node with the op's PyTorch reference. onnxruntime-extensions serves Python ops
only in its own domain (``ai.onnx.contrib``), so :func:`for_onnxruntime` returns an in-memory copy of
the graph with the ``edgevis`` domain renamed; the file on disk, the one TensorRT gets, is unchanged.

A plugin registers its op with :func:`register_ort_op` in its ``ort_op.py`` module; every such
module is listed in :data:`ORT_OP_MODULES` and imported lazily by :func:`load_ort_ops`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from edgevis.errors import MissingDependencyError
from edgevis.plugins.flavor import PLUGIN_DOMAIN

ORT_PYOP_DOMAIN = "ai.onnx.contrib"

# op_type -> module that registers it (imported on demand).
ORT_OP_MODULES: dict[str, str] = {
    "MSDeformAttn": "edgevis.plugins.ms_deform_attn.ort_op",
    "MultiscaleDeformableAttnPlugin_TRT": "edgevis.plugins.ms_deform_attn.ort_op",
    "ConvGRUCell": "edgevis.plugins.convgru.ort_op",
    "TripleSparseConv": "edgevis.plugins.sparse_conv.ort_op",
}
_REGISTERED: dict[str, Callable[..., Any]] = {}


def _extensions() -> Any:
    try:
        import onnxruntime_extensions
    except ImportError:
        raise MissingDependencyError(
            "running a trt-flavor graph in onnxruntime needs onnxruntime-extensions; "
            "install it with `pip install onnxruntime-extensions` or export with --flavor portable"
        ) from None
    return onnxruntime_extensions


def register_ort_op(op_type: str, inputs: list[str], outputs: list[str], attrs: dict[str, str]) -> Callable:
    """Decorator registering ``fn(*numpy_inputs, **attrs)`` as the onnxruntime Python op ``op_type``.

    ``inputs``/``outputs`` are dtype names (``"float"``, ``"int64"``...); ``attrs`` maps attribute
    name to ``"int64"``, ``"float"`` or ``"string"``. Registering the same op twice is a no-op.
    """
    ext = _extensions()
    D = ext.PyCustomOpDef
    types = {"float": D.dt_float, "float16": D.dt_float16, "int64": D.dt_int64, "int32": D.dt_int32,
             "bool": D.dt_bool, "uint8": D.dt_uint8, "string": D.dt_string}

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if op_type in _REGISTERED:
            return _REGISTERED[op_type]
        ext.onnx_op(
            op_type=op_type,
            inputs=[types[t] for t in inputs],
            outputs=[types[t] for t in outputs],
            attrs={k: types[v] for k, v in attrs.items()},
        )(fn)
        _REGISTERED[op_type] = fn
        return fn

    return wrap


def plugin_ops_in(model: Any) -> set[str]:
    """op_types of the nodes in ``model`` that need edgevis (or TensorRT built-in) plugins."""
    return {n.op_type for n in model.graph.node if n.domain == PLUGIN_DOMAIN or n.op_type in ORT_OP_MODULES}


def load_ort_ops(op_types: set[str] | None = None) -> None:
    for op in sorted(op_types if op_types is not None else ORT_OP_MODULES):
        if op not in ORT_OP_MODULES:
            raise MissingDependencyError(
                f"the graph has plugin node '{op}' but edgevis has no onnxruntime implementation for it; "
                f"known plugin ops: {sorted(ORT_OP_MODULES)}"
            )
        importlib.import_module(ORT_OP_MODULES[op])


def for_onnxruntime(model: Any) -> tuple[Any, bool]:
    """Copy of ``model`` whose plugin nodes onnxruntime can run; returns (model, needs_extensions)."""
    ops = plugin_ops_in(model)
    if not ops:
        return model, False
    load_ort_ops(ops)
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for node in m.graph.node:
        if node.domain == PLUGIN_DOMAIN or node.op_type in ORT_OP_MODULES:
            node.domain = ORT_PYOP_DOMAIN
    opsets = {o.domain: o.version for o in m.opset_import}
    del m.opset_import[:]
    for dom, ver in opsets.items():
        if dom in (PLUGIN_DOMAIN, "trt"):
            continue
        m.opset_import.add(domain=dom, version=ver)
    m.opset_import.add(domain=ORT_PYOP_DOMAIN, version=1)
    return m, True


def extensions_library_path() -> str:
    return _extensions().get_library_path()
