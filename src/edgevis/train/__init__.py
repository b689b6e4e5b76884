"""Training and distillation entry points, one module per model family.

``edgevis train --model M [options]`` and ``edgevis distill --model M [options]`` look the model's
family up here and call ``main(model_name, argv)`` of the module, which parses its own options.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgevis.errors import EdgevisError

# family -> module with main(model_name: str, argv: list[str]) -> int
TRAINERS: dict[str, str] = {
    "mobileinst": "edgevis.train.mobileinst",
    "spvos": "edgevis.train.spvos",
    "ookd": "edgevis.train.ookd",
}
DISTILLERS: dict[str, str] = {
    "recurrent_seqformer": "edgevis.train.distill_encoder",
    "ookd": "edgevis.train.qfa",
}


def entry(table: dict[str, str], verb: str, model_name: str) -> Any:
    from edgevis.models.zoo import model_entry

    family = model_entry(model_name).family
    if family not in table:
        raise EdgevisError(f"`edgevis {verb}` has no recipe for model family '{family}'; families with one: {sorted(table)}")
    try:
        return importlib.import_module(table[family])
    except ModuleNotFoundError as e:
        raise EdgevisError(f"the {verb} recipe for '{family}' is not available in this version ({e.name})") from None
