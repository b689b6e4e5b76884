"""TrtBackend: the TensorRT engine as a backend (interface; the engine builder issue fills it in).

TensorRT is imported lazily; constructing the backend without it raises one clear error.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgevis.errors import MissingDependencyError
from edgevis.runtime.backends.base import Backend
from edgevis.spec import IOSpec

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


class TrtBackend(Backend):
    kind = "trt"

    def __init__(self, engine_path: str | Path, spec: IOSpec | None = None) -> None:
        import_tensorrt()
        raise MissingDependencyError(
            f"the TensorRT backend for {engine_path} is not implemented in this version of edgevis yet; use --backend ort"
        )

    def _run(self, feeds: dict[str, torch.Tensor], dims: dict[str, int]) -> dict[str, torch.Tensor]:
        raise NotImplementedError
