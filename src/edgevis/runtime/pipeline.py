"""Glue used by the CLI, checks and benchmarks: backends for a model, and sources -> runner -> sinks."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgevis.errors import EdgevisError
from edgevis.runtime.backends import BACKENDS, Backend, OrtBackend, TorchBackend
from edgevis.runtime.runner import StreamRunner

log = logging.getLogger(__name__)
DEFAULT_ONNX_DIR = Path("onnx")


def best_backend() -> str:
    """TensorRT when it is importable, else onnxruntime on the CPU."""
    try:
        import tensorrt  # noqa: F401  # type: ignore[import-not-found]

        return "trt"
    except ImportError:
        return "ort"


def onnx_path(onnx_dir: Path, model_name: str, stage: str, flavor: str) -> Path:
    return Path(onnx_dir) / model_name / f"{stage}.{flavor}.onnx"


def ensure_onnx(model: Any, stage: str, flavor: str = "portable", onnx_dir: Path = DEFAULT_ONNX_DIR) -> Path:
    """The stage's ONNX under ``onnx_dir``, exported again if missing or made from other weights."""
    from edgevis.export.onnx_export import export_stage, read_metadata, weights_fingerprint
    from edgevis.spec import METADATA_KEY

    path = onnx_path(onnx_dir, model.name, stage, flavor)
    if path.is_file():
        try:
            meta = read_metadata(path)
            same_spec = meta.get(METADATA_KEY) == model.iospec(stage).to_json()
            if same_spec and meta.get("edgevis.weights") == weights_fingerprint(model.stage(stage)):
                return path
            log.info("%s was exported from another IOSpec or other weights; exporting again", path)
        except Exception:  # unreadable file: export again
            log.info("%s is unreadable; exporting again", path)
    export_stage(model, stage, path, flavor)
    return path


def open_backends(
    model: Any, kind: str, *, flavor: str = "portable", onnx_dir: Path = DEFAULT_ONNX_DIR,
    threads: int | None = None, device: str = "cpu", precision: str = "fp16",
) -> dict[str, Backend]:
    """One backend per stage of ``model`` (``kind`` in BACKENDS); ``precision`` is the TensorRT engines'."""
    if kind not in BACKENDS:
        raise EdgevisError(f"backend '{kind}' is unknown; expected one of {', '.join(BACKENDS)}")
    if kind == "torch":
        return {s: TorchBackend(model.stage(s), model.iospec(s), device=device) for s in model.stages}
    if kind == "ort":
        return {s: OrtBackend(ensure_onnx(model, s, flavor, onnx_dir), threads=threads, expect_model=model.name,
                              expect_stage=s) for s in model.stages}
    from edgevis.engines.build import open_engines  # TensorRT: lazily, with a clear error if missing

    return open_engines(model, onnx_dir=onnx_dir, precision=precision)


@dataclass
class RunSummary:
    frames: int = 0
    seconds: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)  # mean per frame
    overhead_fraction: float = 0.0
    dropped: int = 0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def line(self, backend: str) -> str:
        stages = ", ".join(f"{k} {v:.1f} ms" for k, v in self.stage_ms.items())
        return (f"{self.frames} frames in {self.seconds:.1f} s: {self.fps:.1f} FPS on {backend} "
                f"({stages}; runner overhead {100 * self.overhead_fraction:.1f}%; dropped {self.dropped})")


def run_streams(runner: StreamRunner, sources: list[Any], sinks: list[Any], *, max_frames: int | None = None,
                progress: bool = True) -> RunSummary:
    """Feed one frame per source per tick into the runner until every source ends."""
    from tqdm import tqdm

    summary = RunSummary()
    totals: dict[str, float] = {}
    iters = [iter(s) for s in sources]
    alive = [True] * len(sources)
    total = None
    if len(sources) == 1 and not sources[0].is_live:
        total = getattr(sources[0], "frame_count", None) or None
    if max_frames:
        total = min(total or max_frames, max_frames)
    bar = tqdm(total=total, unit="frame", disable=not progress, leave=False, desc=runner.policy.model.name)
    t0 = time.perf_counter()
    try:
        while any(alive) and (max_frames is None or summary.frames < max_frames):
            frames, metas = [], []
            for i, it in enumerate(iters):
                fr = next(it, None) if alive[i] else None
                if fr is None:
                    alive[i] = False
                frames.append(None if fr is None else fr.image)
                metas.append(fr)
            if not any(alive):
                break
            results = runner.step(frames)
            elapsed = time.perf_counter() - t0
            fps = (summary.frames + len(results)) / elapsed if elapsed > 0 else 0.0
            for res in results:
                for k, v in res.timings_ms.items():
                    totals[k] = totals.get(k, 0.0) + v
                for sink in sinks:
                    sink.write(metas[res.stream].image, res, fps=fps)
            summary.frames += len(results)
            bar.update(len(results))
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - t0
    n = max(summary.frames, 1)
    summary.stage_ms = {k: v / n for k, v in totals.items() if k not in ("total", "overhead")}
    summary.overhead_fraction = runner.overhead_fraction
    summary.dropped = sum(getattr(s, "dropped", 0) for s in sources)
    return summary
