"""Backends: one contract (``backend(feeds) -> outputs``), three implementations."""

from __future__ import annotations

from edgevis.runtime.backends.base import Backend
from edgevis.runtime.backends.ort import OrtBackend
from edgevis.runtime.backends.torch_backend import TorchBackend
from edgevis.runtime.backends.trt import TrtBackend

BACKENDS: dict[str, type[Backend]] = {
    "torch": TorchBackend,
    "ort": OrtBackend,
    "trt": TrtBackend,
}

__all__ = ["BACKENDS", "Backend", "OrtBackend", "TorchBackend", "TrtBackend"]
