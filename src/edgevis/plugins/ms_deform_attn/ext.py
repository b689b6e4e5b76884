"""The CUDA kernel as a torch extension, compiled on first use (GPU tests and benchmarks only).

``load()`` builds ``kernel.cu`` + ``ext_binding.cpp`` with ``torch.utils.cpp_extension.load`` (needs
a CUDA build of torch, nvcc and ninja) and caches the module; once loaded, the CUDA path of
``torch.ops.edgevis.ms_deform_attn`` runs the kernel instead of the reference. Nothing is built or
imported when this module is imported, so it is safe on CPU-only machines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgevis.errors import MissingDependencyError

HERE = Path(__file__).resolve().parent
SOURCES = (HERE / "ext_binding.cpp", HERE / "kernel.cu")
_MODULE: Any = None


def loaded() -> Any:
    """The extension module if :func:`load` has built it in this process, else None."""
    return _MODULE


def load(verbose: bool = False, arch_list: str | None = None) -> Any:
    """Build (or reuse the cached build of) the extension and return it; ``.forward(...)`` is the op.

    ``arch_list`` sets ``TORCH_CUDA_ARCH_LIST`` for the build (default: the visible GPU's arch).
    Raises MissingDependencyError when torch has no CUDA or no GPU is visible.
    """
    global _MODULE
    if _MODULE is not None:
        return _MODULE
    import torch

    if torch.version.cuda is None or not torch.cuda.is_available():
        raise MissingDependencyError(
            f"the ms_deform_attn CUDA extension needs a CUDA build of torch and a GPU; this torch is "
            f"{torch.__version__} (cuda={torch.version.cuda}), GPU available={torch.cuda.is_available()}; "
            "the reference implementation runs instead"
        )
    from torch.utils.cpp_extension import load as cpp_load

    if arch_list is not None:
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    _MODULE = cpp_load(
        name="edgevis_msda_ext",
        sources=[str(s) for s in SOURCES],
        extra_include_paths=[str(HERE), str(HERE.parent)],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3"],
        verbose=verbose,
    )
    return _MODULE
