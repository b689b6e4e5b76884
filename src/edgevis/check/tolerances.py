"""Per-model, per-output tolerances for the checks, in one table.

The IOSpec's ``tolerances`` (max abs error per output, set by each model) are the default. Overrides
go in :data:`TOLERANCES`: ``{model: {key: max_abs_error}}`` where ``key`` is an output / state name
(both checks) or ``"drift:<name>"`` (the multi-frame drift check only, error at the last frame).
"""

from __future__ import annotations

from edgevis.spec import IOSpec

DEFAULT_TOLERANCE = 1e-4
DRIFT_FACTOR = 10.0  # drift default: this many times the single-step tolerance

TOLERANCES: dict[str, dict[str, float]] = {
    # "recurrent_seqformer_tiny": {"drift:h1_out": 5e-4},
}


def tolerance(model: str, spec: IOSpec, name: str, kind: str = "single") -> float:
    """Max abs error allowed for tensor ``name`` of ``spec`` in check ``kind`` ('single' or 'drift')."""
    table = TOLERANCES.get(model, {})
    base = table.get(name, spec.tolerances.get(name, DEFAULT_TOLERANCE))
    if kind == "drift":
        return table.get(f"drift:{name}", base * DRIFT_FACTOR)
    return base


def state_out_names(spec: IOSpec) -> set[str]:
    return {s.name_out for s in spec.states}
