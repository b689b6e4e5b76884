"""TrtBackend: a TensorRT engine as a backend.

- The engine file is checked against its JSON sidecar (size, sha256, GPU, TensorRT version, IOSpec)
  before TensorRT deserialises it (:func:`edgevis.engines.cache.check_engine`), so a truncated,
  corrupt or foreign engine is a one-line error, never a crash.
- ``execute_async_v3`` runs on torch's current CUDA stream; tensor addresses are ``data_ptr()`` s of
  torch tensors the backend owns (inputs are copied in, host or device, without a sync).
- State pairs ping-pong between two device buffers: phase p reads ``S[p]`` and writes ``S[1-p]``,
  and the state output returned is ``S[1-p]`` itself, so feeding it back next call costs no copy and
  never leaves the GPU. A returned state tensor stays valid until the call after next (clone it to
  keep it longer). Plain outputs are returned as fresh tensors.
- With ``cuda_graphs=True`` each (B, phase) is captured into a CUDA graph after one eager warm-up
  call and replayed afterwards; if capture fails (an engine with data-dependent shapes, a plugin that
  synchronises, ...) the backend logs once and stays eager.

TensorRT is imported lazily; constructing the backend without it raises one clear error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgevis.errors import MissingDependencyError, SpecError
from edgevis.runtime.backends.base import Backend
from edgevis.spec import DTYPES, IOSpec

log = logging.getLogger(__name__)

TRT_INSTALL_HINT = (
    "TensorRT is not installed: on Jetson it ships with JetPack 6 (python3-libnvinfer); on a desktop GPU run "
    "`pip install 'edgevis[trt]'` (tensorrt>=10.1). Without it use --backend ort."
)


def import_tensorrt():  # noqa: ANN201 - returns the tensorrt module
    try:
        import tensorrt  # type: ignore[import-not-found]
    except ImportError:
        raise MissingDependencyError(TRT_INSTALL_HINT) from None
    return tensorrt


@dataclass
class _Buffers:
    """Static device buffers for one batch size B."""

    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    states: list[dict[str, torch.Tensor]]  # [phase] -> name_in -> (B, ...) tensor
    phase: int = 0
    warm: set[int] = field(default_factory=set)  # phases that ran eagerly at least once


class TrtBackend(Backend):
    kind = "trt"

    def __init__(self, engine_path: str | Path, spec: IOSpec | None = None, *, expect_model: str | None = None,
                 expect_stage: str | None = None, cuda_graphs: bool = True, device: int = 0) -> None:
        from edgevis.engines.cache import EngineError, Environment, check_engine, foreign_reason

        self.path = Path(engine_path)
        file_spec, doc = check_engine(self.path, None, expect_model, expect_stage)  # before importing TensorRT
        if spec is not None and spec.to_json() != file_spec.to_json():
            raise EngineError(f"{self.path}: the IOSpec passed differs from the one the engine was built with; "
                              "rebuild the engine (`edgevis build`) or drop the spec argument")
        super().__init__(file_spec)
        trt = import_tensorrt()
        why = foreign_reason(doc, Environment.detect(trt.__version__, device))
        if why:
            raise EngineError(f"{self.path} is foreign: {why}; rebuild it on this machine with `edgevis build`")
        from edgevis.engines.build import trt_logger
        from edgevis.engines.plugins import load_plugins

        load_plugins(trt, trt_logger(trt), doc.get("plugin_ops", []))
        self.trt = trt
        self.device = torch.device("cuda", device)
        self.max_batch = int(doc.get("settings", {}).get("max_batch", 16))
        self.precision = doc.get("key", {}).get("precision", "?")
        self.runtime = trt.Runtime(trt_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EngineError(f"TensorRT could not deserialise {self.path}; rebuild it with `edgevis build`")
        self._check_io()
        self.context = self.engine.create_execution_context()
        self.use_graphs = cuda_graphs
        self._buffers: dict[int, _Buffers] = {}
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}

    def _check_io(self) -> None:
        from edgevis.engines.cache import EngineError

        trt = self.trt
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if n not in ins]
        if sorted(ins) != sorted(self.spec.input_names) or sorted(outs) != sorted(self.spec.output_names):
            raise EngineError(f"{self.path}: engine tensors in {ins} / out {outs} disagree with its IOSpec "
                              f"{self.spec.input_names} / {self.spec.output_names}; rebuild it")

    # ---- buffers ---------------------------------------------------------------------------
    def _alloc(self, b: int) -> _Buffers:
        dims = {**self.spec.dims, "B": b}

        def empty(t: Any) -> torch.Tensor:
            return torch.empty(t.resolve(dims), dtype=DTYPES[t.dtype][0], device=self.device)

        return _Buffers(
            inputs={t.name: empty(t) for t in self.spec.inputs},
            outputs={t.name: empty(t) for t in self.spec.outputs},
            states=[{s.name_in: empty(s.tensor_in) for s in self.spec.states} for _ in range(2)],
        )

    def _bind(self, buf: _Buffers, phase: int) -> None:
        ctx = self.context
        for name, x in buf.inputs.items():
            ctx.set_input_shape(name, tuple(x.shape))
            ctx.set_tensor_address(name, x.data_ptr())
        for s in self.spec.states:
            x_in, x_out = buf.states[phase][s.name_in], buf.states[1 - phase][s.name_in]
            ctx.set_input_shape(s.name_in, tuple(x_in.shape))
            ctx.set_tensor_address(s.name_in, x_in.data_ptr())
            ctx.set_tensor_address(s.name_out, x_out.data_ptr())
        for name, y in buf.outputs.items():
            ctx.set_tensor_address(name, y.data_ptr())

    # ---- run -------------------------------------------------------------------------------
    def _run(self, feeds: dict[str, torch.Tensor], dims: dict[str, int]) -> dict[str, torch.Tensor]:
        from edgevis.engines.cache import EngineError

        b = int(dims.get("B", self.spec.dims.get("B", 1)))
        if b > self.max_batch:
            raise SpecError(f"stage {self.spec.key}: received B={b} streams, the engine's profile allows at most "
                            f"{self.max_batch}; rebuild with a larger max batch")
        buf = self._buffers.get(b) or self._buffers.setdefault(b, self._alloc(b))
        p = buf.phase
        for t in self.spec.inputs:
            buf.inputs[t.name].copy_(feeds[t.name], non_blocking=True)
        for s in self.spec.states:
            x, dst = feeds[s.name_in], buf.states[p][s.name_in]
            if x.data_ptr() != dst.data_ptr():  # not our own last output: a reset or a re-batched stream
                dst.copy_(x, non_blocking=True)
        stream = torch.cuda.current_stream(self.device)
        graph = self._graphs.get((b, p)) if self.use_graphs else None
        if graph is not None:
            graph.replay()
        else:
            self._bind(buf, p)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise EngineError(f"TensorRT failed to run {self.spec.key} (execute_async_v3 returned False)")
            if self.use_graphs and p in buf.warm:
                self._capture(buf, b, p)
            buf.warm.add(p)
        buf.phase = 1 - p
        out = {n: y.clone() for n, y in buf.outputs.items()}
        out.update({s.name_out: buf.states[1 - p][s.name_in] for s in self.spec.states})
        return {n: out[n] for n in self.spec.output_names}

    def _capture(self, buf: _Buffers, b: int, p: int) -> None:
        try:
            g = torch.cuda.CUDAGraph()
            self._bind(buf, p)
            with torch.cuda.graph(g):
                if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
                    raise RuntimeError("execute_async_v3 returned False during capture")
            self._graphs[(b, p)] = g
        except Exception as e:  # the engine cannot be captured: stay eager
            log.warning("%s: CUDA graph capture failed (%s: %s); running without CUDA graphs",
                        self.spec.key, type(e).__name__, str(e)[:120])
            self.use_graphs = False
            self._graphs.clear()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "engine": str(self.path), "precision": self.precision,
                "tensorrt": self.trt.__version__, "cuda_graphs": self.use_graphs}

    def close(self) -> None:
        self._graphs = {}
        self._buffers = {}
        self.context = None
        self.engine = None
