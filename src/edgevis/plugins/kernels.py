"""One switch for edgevis's CUDA kernels in PyTorch eager.

Every op's CUDA dispatch asks :func:`enabled` before it uses its extension, so ``edgevis bench --gpu``
can time the ops' PyTorch path on the GPU against their kernels without touching the extensions'
internals. On by default; the kernels still run only where their extension builds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_ENABLED = [True]


def enabled() -> bool:
    """True unless a :func:`switched` block turned the CUDA kernels off."""
    return _ENABLED[0]


@contextmanager
def switched(on: bool) -> Iterator[None]:
    """Turn the CUDA kernels on or off inside the block; the previous setting is restored on exit."""
    before = _ENABLED[0]
    _ENABLED[0] = on
    try:
        yield
    finally:
        _ENABLED[0] = before
