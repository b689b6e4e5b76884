"""The one backend contract: ``outputs = backend(feeds)`` with feeds checked against the IOSpec."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from edgevis.spec import IOSpec


class Backend(ABC):
    """Runs one stage. ``__call__(feeds: dict[str, Tensor]) -> dict[str, Tensor]``.

    Feeds are validated at the boundary (:meth:`IOSpec.validate`), so a wrong name, dtype or shape
    is reported with the tensor's name, what was received and what was expected.
    """

    kind: str = "base"

    def __init__(self, spec: IOSpec) -> None:
        self.spec = spec
        self.state_outputs = frozenset(s.name_out for s in spec.states)  # stay on the backend's device
        self._checked: dict[tuple, dict[str, int]] = {}  # feed signature -> bound dims

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._run(feeds, self._validate(feeds))

    def _validate(self, feeds: dict[str, torch.Tensor]) -> dict[str, int]:
        """:meth:`IOSpec.validate`, remembered per signature (names, shapes, dtypes): a stream's
        feeds look the same every frame, so the full check runs once per signature."""
        try:
            sig = tuple((k, tuple(v.shape), v.dtype) for k, v in feeds.items())
        except AttributeError:  # not a tensor: let validate() say which and what was expected
            sig = None
        dims = self._checked.get(sig) if sig is not None else None
        if dims is None:
            dims = self.spec.validate(feeds)
            if sig is not None and len(self._checked) < 64:
                self._checked[sig] = dims
        return dict(dims)

    @abstractmethod
    def _run(self, feeds: dict[str, torch.Tensor], dims: dict[str, int]) -> dict[str, torch.Tensor]:
        """Run validated feeds; ``dims`` holds the bound named dimensions (e.g. ``B``)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Release sessions/engines; safe to call twice."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "stage": self.spec.key}

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.key})"
