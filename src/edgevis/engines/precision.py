"""Precision plans for TensorRT 10 and 11, and the ONNX rewrites TensorRT 11 needs.

Which nodes stay FP32 (:func:`sensitive_nodes`), whatever the generation:

- **GRU state**: the recurrent update that produces a state output (the ``ConvGRUCell`` plugin node,
  or in a plain graph the element-wise cone ``(1 - z) * h + z * n`` walked back from each state
  output until a Conv/MatMul), and element-wise ops reading a state input. A long stream then
  accumulates its state in FP32 and does not drift.
- **deformable-attention coordinate math**: what feeds the sampling locations and attention weights
  of an ``MSDeformAttn`` / ``MultiscaleDeformableAttnPlugin_TRT`` node (walked back through cheap ops),
  plus nodes whose exporter name scope mentions ``sampling_offsets``, ``reference_points``,
  ``sampling_locations`` or ``attention_weights``. The plugin itself reads FP16 values and
  accumulates in FP32.
- **softmax**: ``Softmax`` / ``LogSoftmax``.

How each generation applies it (:func:`make_plan`):

- TensorRT 10.x: builder flags (FP16; INT8 + FP16 with an entropy calibrator fed real frames),
  ``OBEY_PRECISION_CONSTRAINTS`` and ``layer.precision = float32`` on the listed layers; FP32 builds
  clear TF32 so they match PyTorch FP32.
- TensorRT 11.x (strongly typed networks, no precision flags, no calibrators): FP16 converts the
  ONNX first (:func:`convert_fp16`: NVIDIA ModelOpt AutoCast when installed, else edgevis' own
  converter; graph I/O and the listed nodes stay FP32); INT8 inserts explicit Q/DQ with
  onnxruntime's ``quantize_static`` (QDQ format), leaving the listed nodes unquantised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgevis.errors import EdgevisError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto enums

SOFTMAX_OPS = ("Softmax", "LogSoftmax")
GRU_PLUGINS = ("ConvGRUCell",)
MSDA_PLUGINS = ("MSDeformAttn", "MultiscaleDeformableAttnPlugin_TRT")
MSDA_COORD_INPUTS = (3, 4)  # sampling_locations, attention_weights
MSDA_SCOPES = ("sampling_offsets", "reference_points", "sampling_locations", "attention_weights")
# ops a "cone" walks through: element-wise maths and pure data movement (never Conv/MatMul/Gemm)
CHEAP_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sigmoid", "Tanh", "Relu", "Exp", "Log", "Sqrt", "Pow", "Clip",
    "Min", "Max", "Where", "Reciprocal", "Softmax", "Slice", "Split", "Identity", "Cast", "Reshape", "Squeeze",
    "Unsqueeze", "Transpose", "Concat", "Expand", "Tile", "Flatten", "Floor", "Ceil", "Round", "HardSigmoid",
})
# nodes never computed in FP16 by the converter (float-typed outputs from attributes, or fp32-only inputs)
NEVER_FP16_OPS = frozenset({"Range", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                            "EyeLike", "NonMaxSuppression"})
KEEP_FP32_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}  # roi / scales stay float32
FP16_MAX = 65504.0


class PrecisionError(EdgevisError):
    """A precision plan or ONNX rewrite cannot be made."""


# ---- which nodes stay FP32 ---------------------------------------------------------------------
def _scope(node: Any) -> str:
    meta = {p.key: p.value for p in node.metadata_props}
    return f"{node.name} {meta.get('namespace', '')}"


def _producers(graph: Any) -> dict[str, Any]:
    return {o: n for n in graph.node for o in n.output if o}


def _consumers(graph: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _cone(graph: Any, starts: Iterable[str], producers: dict[str, Any]) -> list[Any]:
    """Nodes reached walking back from tensors ``starts`` through CHEAP_OPS only."""
    seen: dict[str, Any] = {}
    stack = list(starts)
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen or node.op_type not in CHEAP_OPS:
            continue
        seen[node.name] = node
        stack.extend(i for i in node.input if i)
    return list(seen.values())


def sensitive_nodes(model: Any, state_pairs: Iterable[tuple[str, str]] = ()) -> dict[str, str]:
    """Node name -> why it stays FP32 (see the module doc). ``state_pairs``: (name_in, name_out)."""
    g = model.graph
    prod, cons = _producers(g), _consumers(g)
    keep: dict[str, str] = {}
    for n in g.node:
        if n.op_type in SOFTMAX_OPS:
            keep[n.name] = "softmax"
        elif n.op_type in GRU_PLUGINS:
            keep[n.name] = "GRU state"
        elif any(s in _scope(n) for s in MSDA_SCOPES):
            keep[n.name] = "deformable-attention coordinate math"
    for n in g.node:
        if n.op_type in MSDA_PLUGINS:
            coords = [n.input[i] for i in MSDA_COORD_INPUTS if i < len(n.input)]
            for m in _cone(g, coords, prod):
                keep.setdefault(m.name, "deformable-attention coordinate math")
    pairs = list(state_pairs)
    for m in _cone(g, [out for _, out in pairs], prod):
        keep.setdefault(m.name, "GRU state")
    for name_in, _ in pairs:
        for m in cons.get(name_in, []):
            if m.op_type in CHEAP_OPS and m.op_type not in ("Concat",):
                keep.setdefault(m.name, "GRU state")
    return dict(sorted(keep.items()))


# ---- plans -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrecisionPlan:
    precision: str
    trt_major: int
    strongly_typed: bool
    flags: tuple[str, ...] = ()  # trt.BuilderFlag members to set
    clear_flags: tuple[str, ...] = ()  # ... and to clear
    fp32_nodes: dict[str, str] = field(default_factory=dict)  # node -> reason
    onnx_rewrite: str | None = None  # None | "fp16" | "qdq"
    calibrator: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flags"], d["clear_flags"] = list(self.flags), list(self.clear_flags)
        return d

    def describe(self) -> str:
        how = (f"ONNX rewrite '{self.onnx_rewrite}' + strongly typed" if self.strongly_typed
               else f"flags {'+'.join(self.flags) or 'none'}")
        return f"{self.precision} on TensorRT {self.trt_major}: {how}; {len(self.fp32_nodes)} nodes kept FP32"


def make_plan(model: Any, precision: str, trt_version: str, state_pairs: Iterable[tuple[str, str]] = ()) -> PrecisionPlan:
    """The precision plan for ``model`` (an onnx.ModelProto) on TensorRT ``trt_version``."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision '{precision}' is unknown; expected one of {', '.join(PRECISIONS)}")
    major = int(str(trt_version).split(".")[0])
    if major < 10:
        raise PrecisionError(f"TensorRT {trt_version} is too old: edgevis needs TensorRT 10 or later (JetPack 6)")
    keep = sensitive_nodes(model, state_pairs) if precision != "fp32" else {}
    if major >= 11:
        rewrite = {"fp32": None, "fp16": "fp16", "int8": "qdq"}[precision]
        return PrecisionPlan(precision, major, True, fp32_nodes=keep, onnx_rewrite=rewrite)
    if precision == "fp32":
        return PrecisionPlan(precision, major, False, clear_flags=("TF32",))
    flags = ("FP16",) if precision == "fp16" else ("INT8", "FP16")
    if keep:
        flags += ("OBEY_PRECISION_CONSTRAINTS",)
    return PrecisionPlan(precision, major, False, flags=flags, fp32_nodes=keep, calibrator=precision == "int8")


def layer_matches(layer_name: str, node_names: Iterable[str]) -> str | None:
    """The ONNX node a TensorRT layer came from (the parser names layers after nodes, maybe suffixed)."""
    for n in node_names:
        if layer_name == n or layer_name.startswith((n + "_", n + ".", n + "/", n + " ")):
            return n
    return None


def apply_plan(trt: Any, network: Any, config: Any, plan: PrecisionPlan) -> list[str]:
    """TensorRT 10: set flags and pin the plan's layers to FP32. Returns the pinned layer names."""
    for f in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, f))
    for f in plan.clear_flags:
        if hasattr(trt.BuilderFlag, f):
            config.clear_flag(getattr(trt.BuilderFlag, f))
    pinned = []
    if plan.strongly_typed or not plan.fp32_nodes:
        return pinned
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer_matches(layer.name, plan.fp32_nodes) is None:
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    return pinned


# ---- FP16 ONNX conversion (TensorRT 11) --------------------------------------------------------
def _tensor_to_fp16(t: Any) -> Any:
    from onnx import numpy_helper

    arr = np.clip(numpy_helper.to_array(t), -FP16_MAX, FP16_MAX).astype(np.float16)
    return numpy_helper.from_array(arr, t.name)


def convert_fp16(model: Any, keep_fp32: Iterable[str], converter: str = "auto") -> tuple[Any, str]:
    """FP16 copy of ``model`` with graph I/O and the ``keep_fp32`` nodes in FP32. Returns (model, converter).

    ``converter``: "auto" (ModelOpt AutoCast if importable, else "edgevis"), "modelopt", "edgevis".
    (onnxconverter-common 1.16's ``convert_float_to_float16`` was tried: with onnx 1.23 it changes
    graph output types and leaves Cast targets at FP32, so edgevis converts by itself.)
    """
    keep = set(keep_fp32)
    if converter in ("auto", "modelopt"):
        try:
            from modelopt.onnx.autocast import convert_to_f16  # type: ignore[import-not-found]
        except ImportError:
            if converter == "modelopt":
                raise PrecisionError("NVIDIA ModelOpt is not installed; `pip install nvidia-modelopt[onnx]` or use "
                                     "converter 'edgevis'") from None
        else:
            ops = sorted({n.op_type for n in model.graph.node if n.name in keep})
            out = convert_to_f16(model, low_precision_type="fp16", keep_io_types=True, op_block_list=ops)
            _check_io_kept(model, out)
            return out, "modelopt-autocast"
    if converter not in ("auto", "modelopt", "edgevis"):
        raise PrecisionError(f"FP16 converter '{converter}' is unknown; expected auto, modelopt or edgevis")
    out = _convert_fp16_edgevis(model, keep)
    _check_io_kept(model, out)
    return out, "edgevis"


def _check_io_kept(before: Any, after: Any) -> None:
    def io(m: Any) -> list[tuple[str, int]]:
        return [(v.name, v.type.tensor_type.elem_type) for v in (*m.graph.input, *m.graph.output)]

    if io(before) != io(after):
        raise PrecisionError(f"FP16 conversion changed the graph I/O: {io(before)} -> {io(after)}")


def _convert_fp16_edgevis(model: Any, keep: set[str]) -> Any:
    """Float initializers/Constants -> FP16, Casts at the boundaries of kept nodes and graph I/O."""
    import onnx
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    try:
        m = onnx.shape_inference.infer_shapes(m)
    except Exception as e:  # custom ops can stop inference; the exporter's value_info is then enough
        log.debug("shape inference skipped: %s", e)
    g = m.graph
    types: dict[str, int] = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    inits = {t.name: t for t in g.initializer}
    types.update({name: t.data_type for name, t in inits.items()})
    cons = _consumers(g)

    def low(n: Any) -> bool:
        if n.name in keep or n.op_type in NEVER_FP16_OPS or n.domain not in ("", "ai.onnx"):
            return False
        if n.op_type in ("Constant", "ConstantOfShape"):  # a constant feeding a kept node stays exact
            return all(low(c) for o in n.output for c in cons.get(o, []))
        return True

    is_low = {n.name: low(n) for n in g.node}
    cur = dict(types)
    new_nodes: list[Any] = []
    casts: dict[tuple[str, int], str] = {}
    fp16_inits: dict[str, str] = {}

    def cast(name: str, to: int) -> str:
        if (name, to) not in casts:
            out = f"{name}__{'fp16' if to == FLOAT16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"edgevis_cast_{out}"))
            cur[out] = to
            casts[(name, to)] = out
        return casts[(name, to)]

    for node in list(g.node):
        lo = is_low[node.name]
        for i, name in enumerate(node.input):
            t = cur.get(name)
            if not name or t not in (FLOAT, FLOAT16):
                continue
            want = FLOAT16 if lo and i not in KEEP_FP32_INPUTS.get(node.op_type, ()) else FLOAT
            if t == want:
                continue
            if name in inits and want == FLOAT16:
                if name not in fp16_inits:
                    t16 = _tensor_to_fp16(inits[name])
                    t16.name = f"{name}__fp16"
                    g.initializer.append(t16)
                    fp16_inits[name] = t16.name
                node.input[i] = fp16_inits[name]
            else:
                node.input[i] = cast(name, want)
        if lo:
            for a in node.attribute:
                if node.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
                    a.i = FLOAT16
                elif node.op_type in ("Constant", "ConstantOfShape") and a.name == "value" and a.t.data_type == FLOAT:
                    a.t.CopyFrom(_tensor_to_fp16(a.t))
            if node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
                node.attribute.append(helper.make_attribute("value", helper.make_tensor("value", FLOAT16, [1], [0.0])))
        new_nodes.append(node)
        float_in = any(cur.get(i) in (FLOAT, FLOAT16) for i in node.input)
        for o in node.output:
            t = types.get(o, FLOAT if float_in else 0)
            cur[o] = FLOAT16 if (lo and t == FLOAT) else t
    # graph outputs keep FP32: rename an FP16 producer's output and cast back
    tail = []
    for out in g.output:
        if cur.get(out.name) == FLOAT16:
            inner = f"{out.name}__fp16_out"
            for n in new_nodes:
                n.output[:] = [inner if o == out.name else o for o in n.output]
                n.input[:] = [inner if i == out.name else i for i in n.input]
            tail.append(helper.make_node("Cast", [inner], [out.name], to=FLOAT, name=f"edgevis_cast_{out.name}_out"))
    del g.node[:]
    g.node.extend(new_nodes + tail)
    used = {i for n in g.node for i in n.input}
    kept_inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    outputs = {o.name for o in g.output}
    vis = [v for v in g.value_info if v.name not in outputs]
    for v in vis:
        if v.name in cur and cur[v.name] in (FLOAT, FLOAT16):
            v.type.tensor_type.elem_type = cur[v.name]
    del g.value_info[:]
    g.value_info.extend(vis)
    return m
