"""Plugin libraries for TensorRT: ``libedgevis_plugins.so`` and TensorRT's built-in plugins.

Where the edgevis library is looked for, first hit wins:

1. ``$EDGEVIS_PLUGIN_LIB`` (a file path);
2. ``build/plugins/libedgevis_plugins.so`` under the current directory (what ``make plugins`` builds);
3. the same path under the repository root of this checkout.

Before ``dlopen`` the file is checked without TensorRT: it must exist, be an ELF shared object, and
link the same ``libnvinfer.so.<major>`` as the running TensorRT (a library built against another
TensorRT would fail to load or crash inside the registry). After loading, every plugin node of the
graph must have a creator of the right name, version and namespace in the registry.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgevis.errors import EdgevisError
from edgevis.plugins.flavor import PLUGIN_NAMESPACE, PLUGIN_VERSION

log = logging.getLogger(__name__)

LIB_NAME = "libedgevis_plugins.so"
ENV_VAR = "EDGEVIS_PLUGIN_LIB"
BUILD_HINT = "build it with `make plugins` (cmake, TensorRT headers) or point EDGEVIS_PLUGIN_LIB at it"
# plugin op_types that TensorRT itself ships (init_libnvinfer_plugins), not libedgevis_plugins.so
BUILTIN_PLUGINS: dict[str, tuple[str, str]] = {  # op_type -> (version, namespace)
    "MultiscaleDeformableAttnPlugin_TRT": ("1", ""),
}
_LOADED: dict[str, Any] = {}  # resolved library path -> handle


class PluginError(EdgevisError):
    """The plugin library is missing, of the wrong TensorRT version, or lacks a plugin the graph needs."""


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def candidate_paths() -> list[Path]:
    env = os.environ.get(ENV_VAR)
    paths = [Path(env)] if env else []
    paths += [Path.cwd() / "build" / "plugins" / LIB_NAME, _repo_root() / "build" / "plugins" / LIB_NAME]
    return paths


def find_plugin_library() -> Path:
    """The edgevis plugin library to load; raises PluginError naming where it looked and the fix."""
    env = os.environ.get(ENV_VAR)
    if env and not Path(env).is_file():
        raise PluginError(f"{ENV_VAR}={env} does not exist; {BUILD_HINT}")
    for p in candidate_paths():
        if p.is_file():
            return p
    looked = ", ".join(str(p) for p in candidate_paths())
    raise PluginError(f"{LIB_NAME} not found (looked at {looked}); {BUILD_HINT}")


def linked_nvinfer_major(path: Path) -> int | None:
    """The ``libnvinfer.so.<N>`` major a shared library links against (read from its bytes), or None."""
    data = Path(path).read_bytes()
    found = sorted({int(m) for m in re.findall(rb"libnvinfer\.so\.(\d+)", data)})
    return found[-1] if found else None


def check_plugin_library(path: Path, trt_version: str) -> None:
    """Cheap checks before dlopen: an ELF file linking the running TensorRT's major version."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"\x7fELF":
        raise PluginError(f"{path} is not a shared library (no ELF header; truncated or wrong file); {BUILD_HINT}")
    major = linked_nvinfer_major(path)
    want = int(str(trt_version).split(".")[0])
    if major is not None and major != want:
        raise PluginError(
            f"{path} was built against TensorRT {major} (links libnvinfer.so.{major}) but TensorRT {trt_version} "
            f"is installed; rebuild it: rm -rf build/plugins && make plugins TRT_ROOT=<TensorRT {want} prefix>"
        )


def required_plugins(op_types: Iterable[str]) -> dict[str, tuple[str, str]]:
    """op_type -> (version, namespace) the registry must hold for a graph with these plugin op_types."""
    return {op: BUILTIN_PLUGINS.get(op, (PLUGIN_VERSION, PLUGIN_NAMESPACE)) for op in sorted(op_types)}


def missing_creators(registered: Iterable[tuple[str, str, str]], needed: dict[str, tuple[str, str]]) -> list[str]:
    """Which needed (name, version, namespace) are not in ``registered`` (pure; tested on CPU)."""
    have = {(n, str(v), ns) for n, v, ns in registered}
    return [f"{ns + '::' if ns else ''}{op} v{ver}" for op, (ver, ns) in needed.items() if (op, ver, ns) not in have]


def _registered(trt: Any) -> list[tuple[str, str, str]]:
    reg = trt.get_plugin_registry()
    creators = getattr(reg, "all_creators", None) or getattr(reg, "plugin_creator_list", [])
    return [(c.name, str(c.plugin_version), c.plugin_namespace) for c in creators]


def load_plugins(trt: Any, logger: Any, op_types: Iterable[str] = ()) -> Path | None:
    """Register TensorRT's built-in plugins and, if the graph needs it, libedgevis_plugins.so.

    Returns the library path loaded (None when the graph has no edgevis plugin node).
    """
    trt.init_libnvinfer_plugins(logger, "")
    ops = set(op_types)
    needs_lib = any(op not in BUILTIN_PLUGINS for op in ops)
    path = None
    if needs_lib:
        path = find_plugin_library().resolve()
        if str(path) not in _LOADED:
            check_plugin_library(path, trt.__version__)
            handle = trt.get_plugin_registry().load_library(str(path))
            if handle is None:
                raise PluginError(f"TensorRT could not load {path}; {BUILD_HINT} against TensorRT {trt.__version__}")
            _LOADED[str(path)] = handle
            log.info("loaded TensorRT plugins from %s", path)
    gone = missing_creators(_registered(trt), required_plugins(ops))
    if gone:
        where = f"{path}" if path else "TensorRT's built-in plugins"
        raise PluginError(
            f"the graph needs plugin(s) {', '.join(gone)} but {where} does not provide them (a library of another "
            f"edgevis version?); rebuild with `make plugins` from this checkout"
        )
    return path


__all__ = [
    "BUILTIN_PLUGINS", "ENV_VAR", "LIB_NAME", "PluginError", "check_plugin_library",
    "find_plugin_library", "linked_nvinfer_major", "load_plugins", "missing_creators", "required_plugins",
]
