"""OrtBackend: onnxruntime with IO binding.

Inputs are bound from the torch tensors' memory and outputs are written straight into torch
tensors allocated from the IOSpec, so a state output can be fed back as the next call's input
without a copy. ``trt``-flavor graphs run through onnxruntime-extensions Python ops
(:mod:`edgevis.plugins.ort_ops`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgevis.errors import MissingDependencyError, SpecError
from edgevis.runtime.backends.base import Backend
from edgevis.spec import DTYPES, IOSpec


def session_options(threads: int | None = None, spinning: bool = True) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if not spinning:  # better for 1-4 core phones and shared machines
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def check_providers(requested: list[str]) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [p for p in requested if p not in available]
    if missing:
        raise MissingDependencyError(
            f"onnxruntime provider(s) {missing} are not available in this onnxruntime build; available: {available}. "
            "Install onnxruntime-gpu for CUDAExecutionProvider, or drop --providers to use the CPU."
        )
    return requested


class OrtBackend(Backend):
    kind = "ort"

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        spinning: bool = True,
        expect_model: str | None = None,
        expect_stage: str | None = None,
    ) -> None:
        import onnx
        import onnxruntime as ort

        from edgevis.plugins.ort_ops import extensions_library_path, for_onnxruntime

        self.path = Path(path)
        spec = IOSpec.from_onnx(self.path, expect_model=expect_model, expect_stage=expect_stage)
        super().__init__(spec)
        model, needs_ext = for_onnxruntime(onnx.load(str(self.path)))
        so = session_options(threads, spinning)
        if needs_ext:
            so.register_custom_ops_library(extensions_library_path())
        self.providers = check_providers(providers or ["CPUExecutionProvider"])
        self.session = ort.InferenceSession(model.SerializeToString(), so, providers=self.providers)
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        if names_in != spec.input_names or names_out != spec.output_names:
            raise SpecError(
                f"{self.path}: graph inputs {names_in} / outputs {names_out} disagree with its IOSpec "
                f"{spec.input_names} / {spec.output_names}; re-export the model"
            )
        self.threads = threads
        self._inputs, self._outputs = spec.input_specs, spec.output_specs  # built once, not per call
        self._out_names = spec.output_names

    def _run(self, feeds: dict[str, torch.Tensor], dims: dict[str, int]) -> dict[str, torch.Tensor]:
        io = self.session.io_binding()
        keep = []  # keep contiguous copies alive until the run ends
        for t in self._inputs:
            x = feeds[t.name].contiguous()
            keep.append(x)
            io.bind_input(t.name, x.device.type, x.device.index or 0, DTYPES[t.dtype][1], tuple(x.shape), x.data_ptr())
        dims = {**self.spec.dims, **dims}
        outputs: dict[str, torch.Tensor] = {}
        device = next(iter(feeds.values())).device if feeds else torch.device("cpu")
        for t in self._outputs:
            try:
                shape = t.resolve(dims)
            except SpecError:  # a dim not fixed by the inputs: let onnxruntime allocate
                io.bind_output(t.name, device.type)
                continue
            y = torch.empty(shape, dtype=DTYPES[t.dtype][0], device=device)
            outputs[t.name] = y
            io.bind_output(t.name, device.type, device.index or 0, DTYPES[t.dtype][1], shape, y.data_ptr())
        self.session.run_with_iobinding(io)
        if len(outputs) < len(self._outputs):
            for t, v in zip(self._outputs, io.get_outputs()):
                if t.name not in outputs:
                    outputs[t.name] = torch.from_numpy(np.asarray(v.numpy()))
        return {n: outputs[n] for n in self._out_names}

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {**super().describe(), "path": str(self.path), "providers": self.providers,
                "threads": self.threads, "onnxruntime": ort.__version__}

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
