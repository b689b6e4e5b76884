"""torch -> ONNX for one stage: export, simplify, check, stamp the IOSpec, verify parity.

``export_stage`` is the only way edgevis writes ONNX. Each file is single (no external data),
carries its IOSpec in ``metadata_props`` and has passed an onnxruntime-vs-PyTorch parity check
with the per-output tolerances of the IOSpec before this function returns.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgevis.errors import EdgevisError
from edgevis.plugins.flavor import check_flavor, export_flavor
from edgevis.spec import IOSpec

log = logging.getLogger(__name__)
# torch's exporter warns about every torchvision op it cannot register; edgevis does not use torchvision
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

OPSET = 18
IR_VERSION = 10  # onnxruntime >= 1.16 and TensorRT 10 read IR 10
DEFAULT_TOLERANCE = 1e-4
MAX_BATCH = 16  # upper bound of the dynamic stream dimension "B"


class ExportError(EdgevisError):
    """Export or its parity check failed."""


@dataclass
class ExportReport:
    path: Path
    spec: IOSpec
    flavor: str
    simplified: bool
    max_abs_error: dict[str, float] = field(default_factory=dict)
    plugin_nodes: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        worst = max(self.max_abs_error.values(), default=0.0)
        nodes = ", ".join(f"{k} x{v}" for k, v in self.plugin_nodes.items()) or "none"
        return (f"{self.spec.key} [{self.flavor}] -> {self.path} (simplified: {self.simplified}; plugin nodes: {nodes}; "
                f"parity max abs err {worst:.2e})")


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over the state dict: tells whether an ONNX on disk was made from these weights."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _dynamic_shapes(spec: IOSpec) -> tuple[dict[int, Any], ...] | None:
    batch = torch.export.Dim("B", min=1, max=MAX_BATCH)
    shapes = tuple({i: batch for i, d in enumerate(t.shape) if d == "B"} for t in spec.input_specs)
    return shapes if any(shapes) else None


def _simplify(model: Any) -> tuple[Any, bool]:
    try:
        import onnxsim

        with contextlib.redirect_stdout(io.StringIO()):
            simplified, ok = onnxsim.simplify(model)
        if ok:
            return simplified, True
        log.warning("onnxsim could not validate the simplified graph; keeping the unsimplified one")
    except Exception as e:  # onnxsim cannot run graphs with plugin nodes; that is expected for flavor trt
        log.info("onnxsim skipped (%s: %s); keeping the exporter's optimised graph", type(e).__name__, str(e)[:100])
    return model, False


def _user_error_in_chain(e: BaseException) -> EdgevisError | None:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, EdgevisError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def count_plugin_nodes(model: Any) -> dict[str, int]:
    from edgevis.plugins.ort_ops import plugin_ops_in

    ops = plugin_ops_in(model)
    return {op: sum(1 for n in model.graph.node if n.op_type == op) for op in sorted(ops)}


def export_stage(
    model: Any,
    stage: str,
    path: str | Path,
    flavor: str = "portable",
    *,
    parity: bool = True,
    simplify: bool = True,
    **flavor_options: Any,
) -> ExportReport:
    """Export ``model``'s ``stage`` to ``path`` in ``flavor`` ('portable' or 'trt')."""
    import onnx

    check_flavor(flavor)
    spec = model.iospec(stage)
    module = model.stage(stage).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dyn = _dynamic_shapes(spec)
    feeds = spec.example_inputs({"B": 2} if dyn else None, seed=0)
    args = tuple(feeds[n] for n in spec.input_names)
    tmp = path.with_suffix(".tmp.onnx")
    try:
        with export_flavor(flavor, **flavor_options), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(tmp), dynamo=True, input_names=spec.input_names, output_names=spec.output_names,
                dynamic_shapes=dyn, external_data=False, opset_version=OPSET, verbose=False,
            )
        proto = onnx.load(str(tmp))
    except Exception as e:
        cause = _user_error_in_chain(e)
        if cause is not None:  # torch.onnx wraps errors raised by our ops at trace time
            raise cause from None
        raise ExportError(f"exporting {spec.key} ({flavor}) failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    finally:
        tmp.unlink(missing_ok=True)
    simplified = False
    if simplify and not count_plugin_nodes(proto):
        proto, simplified = _simplify(proto)
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    spec.write_onnx(proto)
    meta = {"edgevis.flavor": flavor, "edgevis.weights": weights_fingerprint(module)}
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    part = path.with_suffix(".part")
    onnx.save(proto, str(part))
    os.replace(part, path)
    report = ExportReport(path, spec, flavor, simplified, plugin_nodes=count_plugin_nodes(proto))
    if parity:
        report.max_abs_error = check_parity(module, spec, path)
    return report


def check_parity(module: torch.nn.Module, spec: IOSpec, path: Path, seed: int = 1) -> dict[str, float]:
    """onnxruntime vs PyTorch on fresh inputs; raises ExportError past the IOSpec tolerances."""
    from edgevis.runtime.backends import OrtBackend, TorchBackend

    feeds = spec.example_inputs(seed=seed)
    ref = TorchBackend(module, spec)(feeds)
    got = OrtBackend(path)(feeds)
    errors, bad = {}, []
    for name in spec.output_names:
        a, b = ref[name].float(), got[name].float()
        err = float((a - b).abs().max()) if a.numel() else 0.0
        errors[name] = err
        tol = spec.tolerances.get(name, DEFAULT_TOLERANCE)
        if not err <= tol:
            bad.append(f"{name}: max abs err {err:.3g} > {tol:g}")
    if bad:
        raise ExportError(f"{path}: onnxruntime disagrees with PyTorch for {spec.key}: " + "; ".join(bad))
    return errors


def read_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
