"""Single-step parity through polygraphy's Python API, and polygraphy-compatible reference files.

Runners (each one polygraphy ``BaseRunner``; :class:`polygraphy.comparator.Comparator` runs them):
- :class:`TorchRunner`: the stage's nn.Module (the reference);
- onnxruntime: polygraphy's ``OnnxrtRunner`` over a session edgevis builds itself, so ``trt``-flavor
  plugin nodes run through :func:`edgevis.plugins.ort_ops.for_onnxruntime` + onnxruntime-extensions;
- TensorRT: polygraphy's ``TrtRunner`` on the edgevis-built engine, added when TensorRT and a GPU exist.

Feeds are real: the feed dicts the stage received while the PyTorch runner processed the clip
(real frames and real recurrent state). The inputs and the PyTorch outputs are saved with
polygraphy's JSON format so a Jetson can run
``polygraphy run <onnx> --trt --load-inputs inputs.json --load-outputs outputs.json``.
"""

from __future__ import annotations

import functools
import shlex
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from edgevis.check.tolerances import tolerance
from edgevis.runtime.backends.torch_backend import TorchBackend
from edgevis.spec import DTYPES, IOSpec


class TorchRunner(BaseRunner):
    """A polygraphy runner over an edgevis stage module (the PyTorch reference)."""

    def __init__(self, module: torch.nn.Module, spec: IOSpec, name: str = "pytorch") -> None:
        super().__init__(name=name, prefix="pytorch-runner")
        self.module, self.spec = module, spec
        self.backend: TorchBackend | None = None

    def activate_impl(self) -> None:
        self.backend = TorchBackend(self.module, self.spec)

    def get_input_metadata_impl(self) -> TensorMetadata:
        meta = TensorMetadata()
        for t in self.spec.input_specs:
            meta.add(t.name, np.dtype(DTYPES[t.dtype][1]), [d if isinstance(d, int) else -1 for d in t.shape])
        return meta

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict:
        assert self.backend is not None
        t0 = time.perf_counter()
        out = self.backend({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed_dict.items()})
        self.inference_time = time.perf_counter() - t0
        return OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in out.items())

    def deactivate_impl(self) -> None:
        self.backend = None


def ort_session(onnx_path: Path, threads: int = 2) -> Any:
    """An onnxruntime session that can run both flavors (plugin nodes through Python custom ops)."""
    import onnx
    import onnxruntime as ort

    from edgevis.plugins.ort_ops import extensions_library_path, for_onnxruntime

    model, needs_ext = for_onnxruntime(onnx.load(str(onnx_path)))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if needs_ext:
        so.register_custom_ops_library(extensions_library_path())
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_runner(onnx_path: Path, name: str = "onnxruntime") -> BaseRunner:
    from polygraphy.backend.onnxrt import OnnxrtRunner

    return OnnxrtRunner(functools.partial(ort_session, Path(onnx_path)), name=name)


def trt_runner(model: Any, stage: str, onnx_path: Path, precision: str = "fp32") -> BaseRunner | None:
    """polygraphy's TrtRunner on the edgevis engine, or None where TensorRT or a GPU is missing."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from edgevis.engines.build import build_stage
    from edgevis.engines.cache import DEFAULT_ENGINE_DIR, Environment

    res = build_stage(trt, Path(onnx_path), precision, Environment.detect(trt.__version__), DEFAULT_ENGINE_DIR)
    return TrtRunner(EngineFromBytes(res.path.read_bytes()), name=f"tensorrt-{precision}")


def pick_feeds(calls: list[dict[str, torch.Tensor]], n: int = 3) -> list[OrderedDict]:
    """Up to ``n`` recorded feed dicts spread over the clip (first, middle, last)."""
    if not calls:
        return []
    idx = sorted({0, len(calls) // 2, len(calls) - 1})[:n]
    return [OrderedDict((k, v.numpy().copy()) for k, v in calls[i].items()) for i in idx]


def polygraphy_command(onnx_path: Path, inputs: Path, outputs: Path, spec: IOSpec, atol: dict[str, float]) -> str:
    """The plain ``polygraphy run`` line that checks an engine on a Jetson against these references."""
    shapes = " ".join(f"{t.name}:{list(t.resolve({**spec.dims, 'B': 1}))}".replace(" ", "") for t in spec.input_specs)
    tol = " ".join(f"{k}:{v:g}" for k, v in atol.items())
    plugins = "--plugins build/plugins/libedgevis_plugins.so " if ".trt." in Path(onnx_path).name else ""
    return (f"polygraphy run {shlex.quote(str(onnx_path))} --trt {plugins}--trt-min-shapes {shapes} "
            f"--trt-opt-shapes {shapes} --trt-max-shapes {shapes} --load-inputs {shlex.quote(str(inputs))} "
            f"--load-outputs {shlex.quote(str(outputs))} --atol {tol} --rtol 0")


def single_step(model: Any, stage: str, onnx_path: Path, feeds: list[OrderedDict], save_inputs: Path | None = None,
                save_outputs: Path | None = None, with_trt: bool = True) -> dict[str, Any]:
    """Compare PyTorch, onnxruntime (and TensorRT if present) on ``feeds``; returns a JSON-able report."""
    from polygraphy.comparator import Comparator, CompareFunc, RunResults
    from polygraphy.json import save_json
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR
    spec = model.iospec(stage)
    runners = [TorchRunner(model.stage(stage), spec), ort_runner(onnx_path)]
    extra = trt_runner(model, stage, onnx_path) if with_trt else None
    if extra is not None:
        runners.append(extra)
    results = Comparator.run(runners, data_loader=feeds)
    atol = {n: tolerance(model.name, spec, n) for n in spec.output_names}
    acc = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=0.0,
                                                                               check_error_stat="max"))
    errors: dict[str, dict[str, float]] = {}
    # polygraphy >= 0.50 returns AccuracyResults (one AccuracyResult per compare func), older ones one AccuracyResult
    for result in (acc if not hasattr(acc, "items") else [acc]):
        for (_, other), iters in result.items():
            for it in iters:
                for name, res in it.items():
                    prev = errors.setdefault(other, {}).get(name, 0.0)
                    errors[other][name] = max(prev, float(res.max_absdiff))
    ok = bool(acc)
    report: dict[str, Any] = {"check": "single_step", "stage": stage, "onnx": str(onnx_path),
                              "runners": [r.name for r in runners], "iterations": len(feeds),
                              "max_abs_error": errors, "tolerances": atol, "pass": ok}
    if save_inputs is not None and save_outputs is not None:
        save_inputs.parent.mkdir(parents=True, exist_ok=True)
        save_outputs.parent.mkdir(parents=True, exist_ok=True)
        save_json([dict(f) for f in feeds], str(save_inputs), description="edgevis check inputs")
        ref = RunResults()
        ref.add([dict(it) for it in results[runners[0].name]], runner_name=runners[0].name)
        ref.save(str(save_outputs))
        report["inputs_json"], report["outputs_json"] = str(save_inputs), str(save_outputs)
        report["polygraphy_command"] = polygraphy_command(onnx_path, save_inputs, save_outputs, spec, atol)
    return report
