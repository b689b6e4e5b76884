"""Calibration data from real frames, for INT8 (TensorRT 10 calibrator, TensorRT 11 Q/DQ).

:func:`record_feeds` runs a clip through the model's own policy on PyTorch and records the exact
feeds each stage receives: frames letterboxed by the policy (``runtime.preprocess.prepare``), and the
recurrent state and carried tensors a real stream has at that point. The same recordings drive the
multi-frame drift check (:mod:`edgevis.check.drift`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgevis.runtime.backends.base import Backend
from edgevis.runtime.backends.torch_backend import TorchBackend

log = logging.getLogger(__name__)


class RecordingBackend(Backend):
    """Wraps a backend and keeps a copy of every feed dict it is called with."""

    kind = "recording"

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner.spec)
        self.inner = inner
        self.calls: list[dict[str, torch.Tensor]] = []

    def _run(self, feeds: dict[str, torch.Tensor], dims: dict[str, int]) -> dict[str, torch.Tensor]:
        self.calls.append({k: v.detach().clone().cpu() for k, v in feeds.items()})
        return self.inner(feeds)


def record_feeds(model: Any, frames: Sequence[np.ndarray]) -> dict[str, list[dict[str, torch.Tensor]]]:
    """stage -> the feed dicts it got while the PyTorch runner processed ``frames`` (one stream)."""
    from edgevis.runtime.runner import StreamRunner

    rec = {s: RecordingBackend(TorchBackend(model.stage(s), model.iospec(s))) for s in model.stages}
    options = getattr(model, "check_policy_options", None)  # policies that need inputs (spvos: first masks)
    runner = StreamRunner(model.policy(**(options() if options else {})), rec)
    try:
        for f in frames:
            runner.step([f])
    finally:
        runner.close()
    return {s: b.calls for s, b in rec.items()}


CALIBRATION_SEED = 11  # the synthetic clip INT8 calibration records (part of the engine cache key)


def calibration_frames(model: Any, n: int = 64, seed: int = CALIBRATION_SEED) -> list[np.ndarray]:
    """``n`` frames of a synthetic clip at the model's input size (used when no clip is given)."""
    from edgevis.data.synthetic import make_clip

    hw = model.policy().input_hw(model.stages[0])
    return list(make_clip(seed, num_frames=n, height=hw[0], width=hw[1], num_objects=3).frames)


def numpy_feeds(calls: Sequence[dict[str, torch.Tensor]]) -> list[dict[str, np.ndarray]]:
    return [{k: v.numpy() for k, v in c.items()} for c in calls]


# ---- TensorRT 10: IInt8EntropyCalibrator2 ------------------------------------------------------
def make_entropy_calibrator(trt: Any, calls: Sequence[dict[str, torch.Tensor]], cache_path: str | Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` serving recorded feeds one call at a time from GPU tensors."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.calls = list(calls)
            self.index = 0
            self.cache_path = Path(cache_path)
            self.live: dict[str, torch.Tensor] = {}  # keeps the current batch alive on the GPU

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(self.calls):
                return None
            feed = self.calls[self.index]
            self.index += 1
            self.live = {n: feed[n].cuda().contiguous() for n in names}
            return [int(self.live[n].data_ptr()) for n in names]

        def read_calibration_cache(self) -> bytes | None:
            return self.cache_path.read_bytes() if self.cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            self.cache_path.write_bytes(bytes(cache))

    return EntropyCalibrator()


# ---- TensorRT 11: explicit Q/DQ with onnxruntime -----------------------------------------------
class _Reader:
    """onnxruntime.quantization CalibrationDataReader over recorded feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)


@contextlib.contextmanager
def _sessions_with_extensions() -> Iterator[None]:
    """onnxruntime.quantization builds its calibration session with a bare SessionOptions(); plugin
    nodes need the extensions library registered, so hand it options that have it (scoped)."""
    import onnxruntime

    from edgevis.plugins.ort_ops import extensions_library_path

    orig = onnxruntime.SessionOptions

    def with_ext() -> Any:
        so = orig()
        so.register_custom_ops_library(extensions_library_path())
        return so

    onnxruntime.SessionOptions = with_ext  # type: ignore[misc]
    try:
        yield
    finally:
        onnxruntime.SessionOptions = orig  # type: ignore[misc]


def quantize_qdq(model: Any, feeds: list[dict[str, np.ndarray]], exclude: Sequence[str], workdir: Path) -> Any:
    """INT8 Q/DQ copy of ``model`` (symmetric, per-channel weights: what TensorRT expects).

    Nodes in ``exclude`` stay unquantised. Plugin nodes keep their domain in the result.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgevis.plugins.ort_ops import ORT_PYOP_DOMAIN, for_onnxruntime

    domains = {n.op_type: n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")}
    runnable, needs_ext = for_onnxruntime(model)
    workdir.mkdir(parents=True, exist_ok=True)
    src, dst = workdir / "fp32.onnx", workdir / "qdq.onnx"
    onnx.save(runnable, str(src))
    ctx = _sessions_with_extensions() if needs_ext else contextlib.nullcontext()
    with ctx:
        quantize_static(
            str(src), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=list(exclude),
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    out = onnx.load(str(dst))
    if domains:
        for n in out.graph.node:
            if n.op_type in domains:
                n.domain = domains[n.op_type]
        ops = {o.domain: o.version for o in out.opset_import if o.domain != ORT_PYOP_DOMAIN}
        ops.update({o.domain: o.version for o in model.opset_import})
        del out.opset_import[:]
        for d, v in ops.items():
            out.opset_import.add(domain=d, version=v)
    have = {p.key for p in out.metadata_props}
    for p in model.metadata_props:
        if p.key not in have:
            out.metadata_props.add(key=p.key, value=p.value)
    return out
