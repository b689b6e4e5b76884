"""The model registry: ``MODELS`` maps a name to how to build it. Tiny variants keep tests fast."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgevis.errors import EdgevisError
from edgevis.models.base import Deployable

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    description: str
    build: Callable[[], Deployable]
    tiny: bool = False
    weights: str | None = None  # default checkpoint shipped in models/weights/
    trained: bool = False


def _lazy(module: str, factory: str, *args: object, **kwargs: object) -> Callable[[], Deployable]:
    """A builder that imports the model's module only when the model is built."""

    def build() -> Deployable:
        return getattr(importlib.import_module(module), factory)(*args, **kwargs)

    return build


MODELS: dict[str, ModelEntry] = {
    "toy_convgru": ModelEntry(
        "toy_convgru", "toy", "tiny ConvGRU segmenter that exercises the stateful runner (untrained)",
        _lazy("edgevis.models.toy", "ToyModel", "toy_convgru"), tiny=True
    ),
    "mobileinst": ModelEntry(
        "mobileinst", "mobileinst", "MobileInst VIS for mobile CPUs: TopFormer-B, dual decoder, kernel reuse (384x640)",
        _lazy("edgevis.models.mobileinst", "MobileInst", "mobileinst"),
    ),
    "mobileinst_tiny": ModelEntry(
        "mobileinst_tiny", "mobileinst", "narrow MobileInst trained on synthetic clips (192x320); the demo model",
        _lazy("edgevis.models.mobileinst", "MobileInst", "mobileinst_tiny"),
        tiny=True, weights="mobileinst_tiny.pt", trained=True,
    ),
    "spvos": ModelEntry(
        "spvos", "spvos", "SpVOS semi-supervised VOS: STCN memory matching, triple-gated sparse key encoder (480x864)",
        _lazy("edgevis.models.spvos", "build_spvos", "spvos"),
    ),
    "spvos_tiny": ModelEntry(
        "spvos_tiny", "spvos", "narrow SpVOS (sparse key encoder) for tests and checks (96x160, K=3 objects)",
        _lazy("edgevis.models.spvos", "build_spvos", "spvos_tiny", tiny=True),
        tiny=True, weights="spvos_tiny.pt", trained=True,
    ),
    "seqformer_r50": ModelEntry(
        "seqformer_r50", "seqformer", "SeqFormer VIS teacher: R50, 6-layer deformable encoder, 300 queries (360x640)",
        _lazy("edgevis.models.seqformer", "seqformer", "seqformer_r50"),
    ),
    "seqformer_tiny": ModelEntry(
        "seqformer_tiny", "seqformer", "narrow SeqFormer for tests and checks (128x224, 2+2 layers, 20 queries)",
        _lazy("edgevis.models.seqformer", "seqformer", "seqformer_tiny", tiny=True),
        tiny=True,
    ),
    "recurrent_seqformer": ModelEntry(
        "recurrent_seqformer", "recurrent_seqformer", "Recurrent SeqFormer: ConvGRU encoder distilled from SeqFormer (360x640)",
        _lazy("edgevis.models.recurrent_seqformer", "recurrent_seqformer", "recurrent_seqformer"),
    ),
    "recurrent_seqformer_tiny": ModelEntry(
        "recurrent_seqformer_tiny", "recurrent_seqformer", "narrow Recurrent SeqFormer for tests and checks (128x224)",
        _lazy("edgevis.models.recurrent_seqformer", "recurrent_seqformer", "recurrent_seqformer_tiny", tiny=True),
        tiny=True,
    ),
    "ookd": ModelEntry(
        "ookd", "ookd", "OOKD online VIS student (IDOL-style, per frame + tracker), QFA-distilled from SeqFormer (360x640)",
        _lazy("edgevis.models.ookd", "ookd", "ookd"),
    ),
    "ookd_tiny": ModelEntry(
        "ookd_tiny", "ookd", "narrow OOKD student, QFA-distilled on synthetic clips (128x224, 1+2 layers, 20 queries, K=10)",
        _lazy("edgevis.models.ookd", "ookd", "ookd_tiny", tiny=True),
        tiny=True, weights="ookd_tiny.pt", trained=True,
    ),
}


def model_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        close = difflib.get_close_matches(name, list(MODELS), n=1, cutoff=0.4)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise EdgevisError(f"unknown model '{name}'; {hint}available: {', '.join(MODELS)} (see `edgevis models`)")
    return MODELS[name]


def build_model(name: str, weights: str | Path | None = None) -> Deployable:
    """Build a registered model; load ``weights`` or its shipped default checkpoint if any."""
    entry = model_entry(name)
    model = entry.build()
    path = Path(weights) if weights else (WEIGHTS_DIR / entry.weights if entry.weights else None)
    if path is not None:
        model.load_weights(path)
    return model
