"""Export flavors: which ONNX form the custom ops take while a graph is being exported.

- ``portable``: standard ONNX ops only; runs on stock onnxruntime on any CPU, ARM included.
- ``trt``: one ``edgevis::<Plugin>`` node per op, built by TensorRT from ``libedgevis_plugins.so``
  (and run on CPU by onnxruntime through Python custom ops, see :mod:`edgevis.plugins.ort_ops`).

Ops read the flavor with :func:`current_flavor` only while ``torch.onnx.is_in_onnx_export()``;
in eager mode they always run their torch implementation.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from edgevis.errors import EdgevisError

FLAVORS = ("portable", "trt")
PLUGIN_DOMAIN = "edgevis"
PLUGIN_NAMESPACE = "edgevis"
PLUGIN_VERSION = "1"
OPTIONS = ("msda_builtin",)  # the op-specific switches export_flavor takes

_FLAVOR: contextvars.ContextVar[str] = contextvars.ContextVar("edgevis_flavor", default="portable")
_OPTIONS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("edgevis_flavor_options", default=None)


def check_flavor(flavor: str) -> str:
    if flavor not in FLAVORS:
        raise EdgevisError(f"flavor {flavor!r} is unknown; expected one of {', '.join(FLAVORS)}")
    return flavor


@contextmanager
def export_flavor(flavor: str, **options: Any) -> Iterator[None]:
    """Select the ONNX form of every custom op exported inside the block.

    ``options`` are op-specific switches: ``msda_builtin=True`` emits TensorRT's
    ``MultiscaleDeformableAttnPlugin_TRT`` instead of ``edgevis::MSDeformAttn``. Any other option is
    refused (an op would silently ignore it).
    """
    for name, value in options.items():
        if name not in OPTIONS:
            raise EdgevisError(f"export option {name}={value!r} is not supported; expected no {name} option "
                               f"(known: {', '.join(OPTIONS)}); drop it from export_flavor(...)")
    t1 = _FLAVOR.set(check_flavor(flavor))
    t2 = _OPTIONS.set(dict(options))
    try:
        yield
    finally:
        _FLAVOR.reset(t1)
        _OPTIONS.reset(t2)


def current_flavor() -> str:
    return _FLAVOR.get()


def flavor_option(name: str, default: Any = None) -> Any:
    return (_OPTIONS.get() or {}).get(name, default)


def exporting() -> bool:
    """True while torch.onnx is tracing (the ops then emit their ONNX form)."""
    return bool(torch.onnx.is_in_onnx_export())


def plugin_attrs(**attrs: Any) -> dict[str, Any]:
    """Attributes every ``trt``-flavor node carries, plus the op's own."""
    return {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION, **attrs}
