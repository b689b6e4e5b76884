"""Models: one file per family, shared blocks, and the ``MODELS`` registry in zoo.py."""

from edgevis.models.zoo import MODELS, build_model, model_entry

__all__ = ["MODELS", "build_model", "model_entry"]
