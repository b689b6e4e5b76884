"""What the benchmarks need to know about sparse and custom-op models.

- :class:`SparsityProbe`: after each runner step, the gate decisions of a sparse model's key encoder
  (SpVOS: REUSE / INTERPOLATE / COMPUTE per block of each triple-gated sparse conv) are turned into
  FLOPs with the sparse-conv plugin's own accounting (:func:`edgevis.plugins.sparse_conv.fast.account`).
  Achieved sparsity is the share of the sparse convs' dense work the decisions skip; FLOPs saved are
  net of the gate's own cost.
- :func:`custom_op_flops`: FLOP formulas for edgevis custom ops, which torch's FlopCounterMode cannot
  see into (it would count a sparse conv or a deformable attention as zero).

Decisions are read from the eager PyTorch model only (``SpVOSNet.last_decisions``): the exported
graphs keep them inside the stage, and the ``portable`` ONNX form computes the dense conv anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class SparsitySummary:
    sparsity: float  # share of the sparse convs' dense FLOPs the decisions skip (gate cost not included)
    flops_saved_gflops: float  # per frame, net of the gate's cost
    flops_saved_pct: float | None  # of the sparse stage's dense FLOPs per call (None: stage FLOPs unknown)
    decision_fractions: dict[str, float]  # share of output pixels REUSEd / INTERPOLATEd / COMPUTEd

    def as_row(self) -> dict[str, Any]:
        return {"sparsity": self.sparsity, "flops_saved_gflops": self.flops_saved_gflops,
                "flops_saved_pct": self.flops_saved_pct, "decision_fractions": self.decision_fractions}


def sparse_layers(model: Any) -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, int]]] | None:
    """Per sparse conv of ``model``: (x shape without batch, weight shape, output (H, W)); None if dense.

    Reads ``model.net.sparse_layers`` and ``model.net.cache_shapes()`` (SpVOS); any other model is dense.
    """
    net = getattr(model, "net", None)
    if net is None or not getattr(getattr(net, "cfg", None), "sparse", False):
        return None
    if not hasattr(net, "last_decisions") or not hasattr(net, "sparse_layers"):
        return None
    out = []
    for (_, conv), (x_shape, y_shape) in zip(net.sparse_layers, net.cache_shapes()):
        out.append((tuple(x_shape), tuple(conv.weight.shape), (int(y_shape[1]), int(y_shape[2]))))
    return out or None


class SparsityProbe:
    """Accumulates decision counts over the timed steps of one torch-backend run.

    Call :meth:`before_step` / :meth:`after_step` around each ``runner.step``; :meth:`summary` gives
    the totals. Steps whose sparse stage did not run eagerly (another backend) add nothing.
    """

    def __init__(self, model: Any, layers: list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, int]]],
                 stage: str = "encode_key") -> None:
        from edgevis.plugins.sparse_conv.fast import SparseConvStats

        self.net = model.net
        self.block = int(model.net.cfg.block)
        self.layers = layers
        self.stage = stage
        self.stats = SparseConvStats()  # complete after totals() or summary()
        self.frames = 0
        self._pending: list[list[torch.Tensor]] = []  # decisions kept during timed steps, counted later

    def before_step(self) -> None:
        self.net.last_decisions = []  # so a step that did not run the eager stage reads as "no decisions"

    def after_step(self) -> None:
        """Keep the step's decisions (small block grids); they are counted by :meth:`totals`, so the
        accounting (and, on a GPU, its device syncs) stays outside the timed steps."""
        decisions = list(self.net.last_decisions)
        if len(decisions) == len(self.layers):
            self._pending.append(decisions)

    def totals(self) -> Any:
        """The :class:`SparseConvStats` of every step so far (counts what :meth:`after_step` kept)."""
        from edgevis.plugins.sparse_conv.fast import account, count_decisions

        for decisions in self._pending:
            for d, (x_shape, w_shape, y_hw) in zip(decisions, self.layers):
                n = int(d.shape[0])
                account(self.stats, count_decisions(d, self.block, *y_hw), (n, *x_shape), w_shape, y_hw)
            self.frames += int(decisions[0].shape[0])
        self._pending.clear()
        return self.stats

    def summary(self, stage_gflops: float | None = None) -> SparsitySummary | None:
        s = self.totals()
        if self.frames == 0 or s.flops_dense == 0:
            return None
        skipped = 1.0 - (s.flops_compute + s.flops_interpolate) / s.flops_dense
        saved = (s.flops_dense - s.flops_sparse) / self.frames / 1e9  # GFLOPs per frame
        pct = 100.0 * saved / stage_gflops if stage_gflops else None
        r, i, c = s.fractions()
        return SparsitySummary(sparsity=skipped, flops_saved_gflops=saved, flops_saved_pct=pct,
                               decision_fractions={"reuse": r, "interpolate": i, "compute": c})


def make_probe(model: Any, backend: str) -> SparsityProbe | None:
    """A probe for ``model`` run through ``backend``, or None (dense model, or decisions not readable)."""
    if not backend.startswith("torch"):  # eager PyTorch, on CPU or CUDA (bench --gpu's torch-cuda variants)
        return None
    layers = sparse_layers(model)
    return SparsityProbe(model, layers) if layers else None


# ---- FLOP formulas for custom ops (FlopCounterMode's custom_mapping: shapes in, FLOPs out) --------
def _sparse_conv_flops(x: Any, x0: Any, y0: Any, weight: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    """The dense conv's FLOPs: a call's upper bound (a dense frame; decisions lower it at run time)."""
    n, cout, ho, wo = out_shape[0]
    _, cin, kh, kw_ = weight
    return 2 * n * cout * ho * wo * cin * kh * kw_


def _msda_flops(value: Any, shapes: Any, starts: Any, locations: Any, weights: Any, *args: Any,
                out_shape: Any = None, **kw: Any) -> int:
    """Bilinear sampling: 4 corners x multiply-add per channel, then the attention weight's multiply-add."""
    b, q, m, lv, p = weights
    d = value[3]
    return 10 * b * q * m * lv * p * d


def custom_op_flops() -> dict[Any, Any]:
    """FlopCounterMode ``custom_mapping`` for edgevis's compute-heavy custom ops (registered on import)."""
    import importlib

    out: dict[Any, Any] = {}
    for module, name, fn in (("edgevis.plugins.sparse_conv.op", "triple_sparse_conv", _sparse_conv_flops),
                             ("edgevis.plugins.ms_deform_attn.op", "ms_deform_attn", _msda_flops)):
        importlib.import_module(module)  # models import their ops lazily, on the first call
        out[getattr(torch.ops.edgevis, name)] = fn
    return out
