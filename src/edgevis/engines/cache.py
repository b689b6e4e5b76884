"""Engine cache: names, JSON sidecars and staleness, all checked before TensorRT touches a file.

An engine file is plain TensorRT (``IHostMemory`` bytes, no custom header), so ``trtexec
--loadEngine`` and DeepStream load it. Beside it, ``<name>.json`` records the IOSpec, the build
settings, the versions and the engine's size and sha256. The name carries model, stage, precision,
GPU, compute capability, TensorRT version and a hash over the ONNX and the build settings::

    engines_cache/<model>/<model>.<stage>.<precision>.<gpu>.sm<cc>.trt<version>.<hash12>.engine

Loading checks the sidecar first (:func:`check_engine`): a truncated or corrupt file, an engine
built for another GPU or TensorRT version, or one without a sidecar is refused with a one-line
error and the fix, so TensorRT never deserialises a foreign engine (which can crash the process).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgevis.errors import EdgevisError, MissingDependencyError
from edgevis.spec import IOSpec

SIDECAR_VERSION = 1
DEFAULT_ENGINE_DIR = Path("engines_cache")


class EngineError(EdgevisError):
    """An engine file cannot be used here (missing, corrupt, foreign, stale)."""


def sha256_file(path: str | Path, n: int = 64) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "unknown"


@dataclass(frozen=True)
class Environment:
    """The GPU and TensorRT an engine is built for or loaded with."""

    gpu_name: str
    compute_capability: str  # "8.7"
    trt_version: str  # "10.3.0"

    @classmethod
    def detect(cls, trt_version: str, device: int = 0) -> Environment:
        import torch

        if not torch.cuda.is_available():
            raise MissingDependencyError(
                "TensorRT engines need a CUDA GPU but torch sees none; check the NVIDIA driver "
                "(nvidia-smi) or run with --backend ort"
            )
        major, minor = torch.cuda.get_device_capability(device)
        return cls(torch.cuda.get_device_name(device), f"{major}.{minor}", str(trt_version))

    @property
    def trt_major(self) -> int:
        return int(self.trt_version.split(".")[0])


@dataclass(frozen=True)
class BuildSettings:
    """Everything besides the ONNX that changes the engine; hashed into the cache key."""

    precision: str
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 16
    workspace_mb: int = 2048
    plan: dict[str, Any] = field(default_factory=dict)  # PrecisionPlan.to_dict()
    plugin_lib_sha: str | None = None
    calibration: dict[str, Any] = field(default_factory=dict)  # frames, seed (INT8 only)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class EngineKey:
    model: str
    stage: str
    precision: str
    env: Environment
    onnx_sha: str
    settings_sha: str

    @property
    def token(self) -> str:
        return hashlib.sha256(f"{self.onnx_sha}:{self.settings_sha}".encode()).hexdigest()[:12]

    @property
    def name(self) -> str:
        cc = self.env.compute_capability.replace(".", "")
        return (f"{self.model}.{self.stage}.{self.precision}.{_slug(self.env.gpu_name)}.sm{cc}."
                f"trt{self.env.trt_version}.{self.token}")

    def path(self, engine_dir: str | Path) -> Path:
        return Path(engine_dir) / self.model / f"{self.name}.engine"


def make_key(spec: IOSpec, onnx_path: str | Path, settings: BuildSettings, env: Environment) -> EngineKey:
    return EngineKey(spec.model, spec.stage, settings.precision, env, sha256_file(onnx_path), settings.digest())


def timing_cache_path(engine_dir: str | Path, env: Environment) -> Path:
    """TensorRT's timing cache, shared by every build on this GPU and TensorRT version."""
    cc = env.compute_capability.replace(".", "")
    return Path(engine_dir) / f"timing.{_slug(env.gpu_name)}.sm{cc}.trt{env.trt_version}.cache"


def sidecar_path(engine_path: str | Path) -> Path:
    return Path(engine_path).with_suffix(".json")


def write_sidecar(engine_path: str | Path, key: EngineKey, spec: IOSpec, settings: BuildSettings,
                  versions: dict[str, str], onnx_path: str | Path, plugin_ops: list[str] | None = None) -> Path:
    engine_path = Path(engine_path)
    doc = {
        "sidecar_version": SIDECAR_VERSION,
        "engine": {"file": engine_path.name, "bytes": engine_path.stat().st_size, "sha256": sha256_file(engine_path)},
        "key": {"model": key.model, "stage": key.stage, "precision": key.precision, "onnx_sha256": key.onnx_sha,
                "settings_sha256": key.settings_sha, "token": key.token},
        "environment": asdict(key.env),
        "onnx": str(onnx_path),
        "plugin_ops": sorted(plugin_ops or []),
        "settings": asdict(settings),
        "versions": dict(versions),
        "iospec": spec.to_dict(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = sidecar_path(engine_path)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True))
    return path


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    engine_path = Path(engine_path)
    side = sidecar_path(engine_path)
    if not side.is_file():
        raise EngineError(
            f"{engine_path} has no sidecar {side.name}, so edgevis cannot tell which GPU, TensorRT and IOSpec it was "
            "built for; rebuild it with `edgevis build --model <name>` (loading unknown engines can crash TensorRT)"
        )
    try:
        doc = json.loads(side.read_text())
        if int(doc.get("sidecar_version", 0)) != SIDECAR_VERSION:
            raise EngineError(f"{side} has sidecar version {doc.get('sidecar_version')}, expected {SIDECAR_VERSION}; "
                              "rebuild with `edgevis build`")
        doc["engine"], doc["environment"], doc["iospec"]  # noqa: B018 - required keys
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise EngineError(f"{side} is not a valid engine sidecar ({type(e).__name__}); rebuild with `edgevis build`") from None
    return doc


def foreign_reason(doc: dict[str, Any], env: Environment) -> str | None:
    """Why an engine built as described by ``doc`` cannot run on ``env`` (None when it can)."""
    built = doc["environment"]
    if built.get("trt_version") != env.trt_version:
        return f"built with TensorRT {built.get('trt_version')}, this machine has TensorRT {env.trt_version}"
    if built.get("compute_capability") != env.compute_capability:
        return (f"built for {built.get('gpu_name')} (sm {built.get('compute_capability')}), this GPU is "
                f"{env.gpu_name} (sm {env.compute_capability})")
    if built.get("gpu_name") != env.gpu_name:
        return f"built on {built.get('gpu_name')}, this GPU is {env.gpu_name}"
    return None


def check_engine(engine_path: str | Path, env: Environment | None, expect_model: str | None = None,
                 expect_stage: str | None = None) -> tuple[IOSpec, dict[str, Any]]:
    """Validate an engine file against its sidecar and (unless ``env`` is None) this machine, without TensorRT.

    Returns (IOSpec, sidecar). Raises EngineError for missing, truncated/corrupt, foreign engines.
    """
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise EngineError(f"engine {engine_path} does not exist; build it with `edgevis build --model <name>`")
    doc = read_sidecar(engine_path)
    size = engine_path.stat().st_size
    want = doc["engine"]
    if size != want.get("bytes") or sha256_file(engine_path) != want.get("sha256"):
        raise EngineError(
            f"{engine_path} is corrupt or truncated ({size} bytes, sidecar says {want.get('bytes')} with another "
            "checksum); delete it and rebuild with `edgevis build`"
        )
    why = foreign_reason(doc, env) if env is not None else None
    if why:
        raise EngineError(f"{engine_path} is foreign: {why}; rebuild it on this machine with `edgevis build`")
    spec = IOSpec.from_dict(doc["iospec"])
    if expect_model is not None and spec.model != expect_model:
        raise EngineError(f"{engine_path} holds model '{spec.model}', expected '{expect_model}'")
    if expect_stage is not None and spec.stage != expect_stage:
        raise EngineError(f"{engine_path} holds stage '{spec.stage}', expected '{expect_stage}'")
    return spec, doc


def stale_reason(engine_path: str | Path, key: EngineKey) -> str | None:
    """Why the cached engine at the key's path cannot be reused (None: reuse it)."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return "not built yet"
    try:
        _, doc = check_engine(engine_path, key.env, key.model, key.stage)
    except EngineError as e:
        return str(e)
    k = doc["key"]
    if k.get("onnx_sha256") != key.onnx_sha:
        return "the ONNX changed since it was built"
    if k.get("settings_sha256") != key.settings_sha:
        return "the build settings changed since it was built"
    return None


def other_engines(engine_dir: str | Path, model: str, stage: str, precision: str) -> list[Path]:
    """Engines of this model/stage/precision in the cache (any GPU, TensorRT, ONNX)."""
    return sorted((Path(engine_dir) / model).glob(f"{model}.{stage}.{precision}.*.engine"))
