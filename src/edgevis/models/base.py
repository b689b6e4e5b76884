"""What every deployable model exposes: stages with IOSpecs, a runner policy, weights loading.

A model family is stateless: each stage is an ``nn.Module`` whose ``forward`` takes the stage's
inputs then its state inputs, positionally in IOSpec order, and returns a tuple of outputs then
state outputs. The runner owns the state; the policy (``runtime/policies``) owns per-model logic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgevis.errors import EdgevisError
from edgevis.spec import IOSpec


class Deployable(ABC):
    """A model family instance: named stages, one IOSpec each, and the runner policy it needs."""

    name: str
    stages: tuple[str, ...]
    net: nn.Module  # the root module holding every weight (what checkpoints load into)
    _stages: dict[str, nn.Module] | None = None  # stage name -> module over ``net``; None: ``net`` is the only stage

    def stage(self, name: str) -> nn.Module:
        """The ``nn.Module`` for one stage (shares weights with the others)."""
        self.check_stage(name)
        return self._stages[name] if self._stages else self.net

    @abstractmethod
    def iospec(self, name: str) -> IOSpec:
        """The IOSpec of one stage at this model's deployment resolution."""

    @abstractmethod
    def policy(self, **options: Any) -> Any:
        """A fresh runner policy (``edgevis.runtime.policy.Policy``) for this model."""

    @property
    def module(self) -> nn.Module:
        """The root module holding every weight (what checkpoints load into)."""
        return self.net

    def check_stage(self, name: str) -> None:
        if name not in self.stages:
            raise EdgevisError(f"model '{self.name}' has no stage '{name}'; its stages are {list(self.stages)}")

    def specs(self) -> dict[str, IOSpec]:
        return {s: self.iospec(s) for s in self.stages}

    def load_weights(self, path: str | Path) -> None:
        """Load an edgevis checkpoint (``{'model': name, 'state_dict': ..., 'meta': ...}``) or a bare state
        dict; the owner check is here, what is done with the weights is :meth:`apply_weights`."""
        state = load_checkpoint(path)
        if not isinstance(state, dict):
            raise EdgevisError(f"{path}: expected a state dict or {{'state_dict': ...}}, received {type(state).__name__}")
        owner = state.get("model") if isinstance(state.get("model"), str) else None
        if owner is not None and owner.split("_")[0] != self.name.split("_")[0]:
            raise EdgevisError(f"{path} holds weights of model '{owner}', not '{self.name}'; pass --model {owner}")
        self.apply_weights(state.get("state_dict", state), state, str(path))

    def apply_weights(self, sd: dict[str, Any], checkpoint: dict[str, Any], source: str) -> None:
        """Load a checked state dict ``sd`` (from ``checkpoint``, the whole file) into the root module."""
        load_state_dict_strict(self.module, sd, source=source)


def load_checkpoint(path: str | Path, allow: Sequence[type] = ()) -> Any:
    """``torch.load`` a checkpoint safely: weights only, plus the classes in ``allow`` (published
    checkpoints pickle their ``argparse.Namespace`` of training arguments)."""
    p = Path(path)
    if not p.is_file():
        raise EdgevisError(f"weights file {p} does not exist; pass --weights <path to a .pt/.pth checkpoint>")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, not a checkpoint at all
        raise EdgevisError(
            f"weights file {p} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
            "is it truncated or not a PyTorch checkpoint? Download or save it again"
        ) from None


def load_state_dict_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load with a clear error listing missing/unexpected keys and shape mismatches."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or bad_shape:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
        if bad_shape:
            parts.append("shape mismatch: " + few([f"{k} {list(state_dict[k].shape)} vs {list(own[k].shape)}" for k in bad_shape]))
        raise EdgevisError(f"{source} does not fit {type(module).__name__}: " + "; ".join(parts)
                           + ". Are these weights for another model or size?")
    module.load_state_dict(state_dict, strict=True)
