"""``edgevis build``: trt-flavor ONNX -> TensorRT engines, cached with a JSON sidecar.

Per stage: the ONNX (exported first if missing, :func:`edgevis.runtime.pipeline.ensure_onnx`) and its
IOSpec give one optimisation profile over the stream dimension ``B`` (min 1, opt N, max 16); the
precision plan (:mod:`.precision`) picks flags or an ONNX rewrite for the TensorRT generation; the
plugins (:mod:`.plugins`) are registered; a timing cache on disk speeds up rebuilds. An engine whose
sidecar matches the key is reused; a stale or foreign one is rebuilt with a message.

Without TensorRT, :func:`build_engines` stops before any export with one clear line.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgevis.engines.cache import (
    DEFAULT_ENGINE_DIR,
    BuildSettings,
    EngineError,
    EngineKey,
    Environment,
    make_key,
    other_engines,
    sha256_file,
    stale_reason,
    timing_cache_path,
    write_sidecar,
)
from edgevis.engines.precision import PrecisionPlan, apply_plan, convert_fp16, make_plan
from edgevis.spec import IOSpec

log = logging.getLogger(__name__)
DEFAULT_ONNX_DIR = Path("onnx")
MAX_BATCH = 16


@dataclass
class BuildResult:
    path: Path
    key: EngineKey
    plan: PrecisionPlan
    rebuilt: bool
    reason: str

    def line(self) -> str:
        what = f"built ({self.reason})" if self.rebuilt else "up to date"
        return f"{self.key.model}/{self.key.stage} [{self.key.precision}] {what}: {self.path} - {self.plan.describe()}"


def profile_shapes(spec: IOSpec, min_batch: int = 1, opt_batch: int = 1,
                   max_batch: int = MAX_BATCH) -> dict[str, tuple[tuple[int, ...], ...]]:
    """input name -> (min, opt, max) shapes; ``B`` spans the streams, other dims are the IOSpec's."""
    out = {}
    for t in spec.input_specs:
        out[t.name] = tuple(t.resolve({**spec.dims, "B": b}) for b in (min_batch, opt_batch, max_batch))
    return out


def _versions(trt: Any) -> dict[str, str]:
    import onnx
    import torch

    import edgevis

    return {"tensorrt": trt.__version__, "torch": torch.__version__, "cuda": str(torch.version.cuda),
            "onnx": onnx.__version__, "edgevis": getattr(edgevis, "__version__", "0")}


class _Logger:
    """One TensorRT logger per process (TensorRT warns when several are made)."""

    inst: Any = None

    @classmethod
    def get(cls, trt: Any) -> Any:
        if cls.inst is None:
            cls.inst = trt.Logger(trt.Logger.WARNING)
        return cls.inst


def trt_logger(trt: Any) -> Any:
    return _Logger.get(trt)


def _rewrite_onnx(proto: Any, plan: PrecisionPlan, calls: list | None, workdir: Path) -> Any:
    """TensorRT 11: the FP16 or Q/DQ graph the strongly typed network is parsed from."""
    if plan.onnx_rewrite == "fp16":
        out, conv = convert_fp16(proto, plan.fp32_nodes)
        log.info("FP16 ONNX made with the %s converter", conv)
        return out
    if plan.onnx_rewrite == "qdq":
        from edgevis.engines.calibration import numpy_feeds, quantize_qdq

        return quantize_qdq(proto, numpy_feeds(calls or []), list(plan.fp32_nodes), workdir)
    return proto


def _build_serialized(trt: Any, onnx_bytes: bytes, spec: IOSpec, plan: PrecisionPlan, settings: BuildSettings,
                      timing_cache: Path, calibrator: Any = None) -> bytes:
    """The TensorRT calls: network from ONNX, profile, precision, timing cache, build."""
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT's ONNX parser rejected {spec.key}: {errs[:400]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(spec, settings.min_batch, settings.opt_batch, settings.max_batch).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    pinned = apply_plan(trt, network, config, plan)
    log.info("%s: %d layers pinned to FP32", spec.key, len(pinned))
    if calibrator is not None:
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT could not build {spec.key} [{plan.precision}]; rerun with -v for its log")
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def build_stage(trt: Any, onnx_path: Path, precision: str, env: Environment, engine_dir: Path, *,
                opt_batch: int = 1, max_batch: int = MAX_BATCH, workspace_mb: int = 2048,
                calib_calls: list | Callable[[], list] | None = None, calib_key: dict | None = None,
                force: bool = False) -> BuildResult:
    """Build (or reuse) one stage's engine. INT8: ``calib_calls`` are the stage's calibration feeds, or a
    zero-argument function giving them, called only when the engine must be built; ``calib_key`` (what
    was asked for: frames, seed, source) goes into the cache key, so a cached engine is reused without
    recording anything. Without ``calib_key`` the key holds the number of calls."""
    import onnx

    from edgevis.engines.plugins import load_plugins
    from edgevis.plugins.ort_ops import plugin_ops_in

    spec = IOSpec.from_onnx(onnx_path)  # one-line SpecError when the ONNX carries no IOSpec
    proto = onnx.load(str(onnx_path))
    ops = plugin_ops_in(proto)
    lib = load_plugins(trt, trt_logger(trt), ops)
    lib_sha = sha256_file(lib, 16) if lib else None
    plan = make_plan(proto, precision, env.trt_version, [(s.name_in, s.name_out) for s in spec.states])
    if precision != "int8":
        calibration: dict = {}
    elif calib_key is not None:
        calibration = dict(calib_key)
    elif callable(calib_calls):
        raise EngineError("build_stage: INT8 with lazily recorded calibration feeds needs calib_key "
                          "(the requested frames and seed) for the engine cache key")
    else:
        calibration = {"calls": len(calib_calls or [])}
    settings = BuildSettings(precision, 1, opt_batch, max_batch, workspace_mb, plan.to_dict(), lib_sha, calibration)
    key = make_key(spec, onnx_path, settings, env)
    path = key.path(engine_dir)
    reason = "forced" if force else stale_reason(path, key)
    if reason is None:
        return BuildResult(path, key, plan, False, "")
    if reason == "not built yet":
        for old in other_engines(engine_dir, key.model, key.stage, precision):
            why = stale_reason(old, key) or "other build settings"
            print(f"edgevis build: {old.name} is stale or foreign ({why}); building a new engine")
    else:
        print(f"edgevis build: rebuilding {path.name}: {reason}")
    if callable(calib_calls):  # recorded now that a build is needed
        calib_calls = calib_calls()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        graph = _rewrite_onnx(proto, plan, calib_calls, Path(tmp))
        calibrator = None
        if plan.calibrator:
            from edgevis.engines.calibration import make_entropy_calibrator

            calibrator = make_entropy_calibrator(trt, calib_calls or [], path.with_suffix(".calib"))
        data = _build_serialized(trt, graph.SerializeToString(), spec, plan, settings,
                                 timing_cache_path(engine_dir, env), calibrator)
    part = path.with_suffix(".part")
    part.write_bytes(data)
    os.replace(part, path)
    write_sidecar(path, key, spec, settings, {**_versions(trt), "plugin_library": str(lib or "")}, onnx_path,
                  sorted(ops))
    return BuildResult(path, key, plan, True, reason)


def calibration_key(frames: int) -> dict:
    """What an INT8 engine's calibration was asked to be (its cache key part): the same request gives
    the same feeds, so a cached engine is reused without recording them again."""
    from edgevis.engines.calibration import CALIBRATION_SEED

    return {"frames": frames, "seed": CALIBRATION_SEED, "source": "synthetic clip through the PyTorch runner"}


def build_engines(model: str | Any, *, precision: str = "fp16", weights: str | None = None,
                  onnx_dir: Path = DEFAULT_ONNX_DIR, engine_dir: Path = DEFAULT_ENGINE_DIR, opt_batch: int = 1,
                  max_batch: int = MAX_BATCH, calib_frames: int = 64, force: bool = False) -> list[BuildResult]:
    """Build (or reuse) every stage's engine of ``model`` (a registry name or a built model); prints one
    line per stage. INT8 records its calibration feeds (real frames through the model's policy) first."""
    from edgevis.runtime.backends.trt import import_tensorrt

    trt = import_tensorrt()  # before any export work: one clear line when TensorRT is missing
    from edgevis.engines.precision import PRECISIONS, PrecisionError
    from edgevis.models.zoo import build_model
    from edgevis.runtime.pipeline import ensure_onnx

    if precision not in PRECISIONS:
        raise PrecisionError(f"precision '{precision}' is unknown; expected one of {', '.join(PRECISIONS)}")
    if isinstance(model, str):
        model = build_model(model, weights)
    env = Environment.detect(trt.__version__)
    recorded: dict[str, list] = {}

    def calls_for(stage: str) -> list:
        """INT8 calibration feeds, recorded once (PyTorch over ``calib_frames`` frames) on first need."""
        from edgevis.engines.calibration import CALIBRATION_SEED, calibration_frames, record_feeds

        if not recorded:
            recorded.update(record_feeds(model, calibration_frames(model, calib_frames, CALIBRATION_SEED)))
        return recorded.get(stage, [])

    results = []
    for stage in model.stages:
        onnx_path = ensure_onnx(model, stage, "trt", Path(onnx_dir))
        res = build_stage(trt, onnx_path, precision, env, Path(engine_dir), opt_batch=opt_batch,
                          max_batch=max_batch, calib_calls=(lambda s=stage: calls_for(s)) if precision == "int8"
                          else None, calib_key=calibration_key(calib_frames) if precision == "int8" else None,
                          force=force)
        print(res.line())
        results.append(res)
    return results


def open_engines(model: Any, *, onnx_dir: Path = DEFAULT_ONNX_DIR, engine_dir: Path = DEFAULT_ENGINE_DIR,
                 precision: str = "fp16") -> dict[str, Any]:
    """One TrtBackend per stage, building engines that are missing or stale first (as ``edgevis build``)."""
    from edgevis.runtime.backends.trt import TrtBackend

    results = build_engines(model, precision=precision, onnx_dir=Path(onnx_dir), engine_dir=Path(engine_dir))
    return {r.key.stage: TrtBackend(r.path, expect_model=model.name, expect_stage=r.key.stage) for r in results}
