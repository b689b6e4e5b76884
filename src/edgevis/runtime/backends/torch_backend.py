"""TorchBackend: runs a stage's nn.Module eagerly (the reference every other backend is checked against)."""

from __future__ import annotations

import torch
from torch import nn

from edgevis.runtime.backends.base import Backend
from edgevis.spec import IOSpec


class TorchBackend(Backend):
    kind = "torch"

    def __init__(self, module: nn.Module, spec: IOSpec, device: str | torch.device = "cpu") -> None:
        super().__init__(spec)
        self.device = torch.device(device)
        self.module = module.eval().to(self.device)

    def _run(self, feeds: dict[str, torch.Tensor], dims: dict[str, int]) -> dict[str, torch.Tensor]:
        args = [feeds[n].to(self.device) for n in self.spec.input_names]
        with torch.inference_mode():
            out = self.module(*args)
        if isinstance(out, torch.Tensor):
            out = (out,)
        names = self.spec.output_names
        if len(out) != len(names):
            raise RuntimeError(f"stage {self.spec.key} returned {len(out)} tensors, its IOSpec lists {len(names)}: {names}")
        return dict(zip(names, out))
