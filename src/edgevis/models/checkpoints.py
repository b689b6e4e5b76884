"""SeqFormer checkpoints: edgevis's own and the published SeqFormer layout.

edgevis modules are named so that their ``state_dict`` keys ARE the published ones
(``detr.backbone.0.body.*``, ``detr.input_proj.{0..3}.{0,1}.*``, ``detr.query_embed.weight``,
``detr.class_embed.{i}``, ``detr.bbox_embed.{i}.layers.{0,1,2}``, ``detr.transformer.level_embed``,
``detr.transformer.reference_points``, ``detr.transformer.encoder.layers.{i}.*``,
``detr.transformer.decoder.layers.{i}.*``, ``controller.layers.{0,1,2}``, ``mask_head.*``).

Accepted files (``torch.load``, tensors and plain containers only):
- edgevis: ``{'model': <model name>, 'state_dict': {...}, ...}`` (written by :func:`save_checkpoint`);
- published SeqFormer: ``{'model': {...}, 'optimizer': ..., 'epoch': ..., 'args': Namespace}``;
- a bare state dict.

Published-layout fix-ups (:func:`convert_official`):
- ``detr.transformer.decoder.bbox_embed.*`` duplicates ``detr.bbox_embed.*`` (the same modules are
  registered twice for box refinement): checked equal, then dropped;
- ``detr.transformer.encoder.layers.{i}.self_attn.output_proj_box.*``: SeqFormer's MSDeformAttn
  creates this layer in encoder mode too, where it is never used: dropped;
- ``*.num_batches_tracked`` and a DDP ``module.`` prefix: dropped.
Anything else that does not fit raises :class:`EdgevisError` listing missing/unexpected keys.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch

from edgevis.errors import EdgevisError
from edgevis.models.base import load_checkpoint, load_state_dict_strict

DUPLICATE_PREFIX = "detr.transformer.decoder.bbox_embed."
SHARED_PREFIX = "detr.bbox_embed."
_UNUSED = re.compile(r"^detr\.transformer\.encoder\.layers\.\d+\.self_attn\.output_proj_box\.")


def split_checkpoint(obj: Any, source: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state_dict, owner model name or None) from any accepted checkpoint layout."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        owner = obj.get("model")
        return obj["state_dict"], owner if isinstance(owner, str) else None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj["model"], None  # published SeqFormer layout
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None
    kind = type(obj).__name__ if not isinstance(obj, dict) else f"dict with keys {sorted(obj)[:8]}"
    raise EdgevisError(
        f"{source} holds a {kind}; expected an edgevis checkpoint {{'model': name, 'state_dict': ...}}, "
        "a SeqFormer checkpoint {'model': state_dict, ...} or a bare state dict"
    )


def convert_official(sd: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Published SeqFormer keys -> edgevis keys (see the module docstring for the fix-ups)."""
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked") or _UNUSED.match(k):
            continue
        if k.startswith(DUPLICATE_PREFIX):
            twin = SHARED_PREFIX + k[len(DUPLICATE_PREFIX):]
            if twin not in sd:
                raise EdgevisError(
                    f"{source}: '{k}' duplicates the shared box head but '{twin}' is missing; "
                    "the checkpoint is incomplete (save it again)"
                )
            if sd[twin].shape != v.shape or not torch.equal(sd[twin], v):
                raise EdgevisError(
                    f"{source}: '{k}' should equal '{twin}' (the decoder shares detr.bbox_embed for box "
                    "refinement) but differs; the checkpoint is corrupt or edited"
                )
            continue
        out[k] = v
    return out


def save_checkpoint(model: Any, path: str | Path, **extra: Any) -> Path:
    """Write an edgevis checkpoint ``{'model': name, 'state_dict': ..., **extra}``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().clone() for k, v in model.module.state_dict().items()}
    tmp = p.with_suffix(p.suffix + ".part")
    torch.save({"model": model.name, "state_dict": sd, **extra}, str(tmp))
    tmp.replace(p)
    return p


def load_seqformer_weights(model: Any, path: str | Path) -> None:
    """Load an edgevis or published SeqFormer checkpoint into ``model`` (SeqFormer or RecurrentSeqFormer)."""
    source = str(path)
    sd, owner = split_checkpoint(load_checkpoint(path, allow=(argparse.Namespace,)), source)
    if owner is not None and owner != model.name:
        raise EdgevisError(f"{source} holds weights of model '{owner}', not '{model.name}'; pass --model {owner}")
    sd = convert_official(sd, source)
    own = model.module.state_dict()
    attention_keys = [k for k in sd if k.startswith("detr.transformer.encoder.layers.")]
    if attention_keys and not any(k.startswith("detr.transformer.encoder.layers.") for k in own):
        raise EdgevisError(
            f"{source} holds SeqFormer's attention encoder ({len(attention_keys)} keys such as {attention_keys[0]}), "
            f"but '{model.name}' has the recurrent encoder; distil one first: "
            f"edgevis distill --model {model.name} --teacher-weights {source}"
        )
    load_state_dict_strict(model.module, sd, source=source)


def load_shared(student: torch.nn.Module, teacher_sd: dict[str, torch.Tensor]) -> list[str]:
    """Copy every teacher tensor whose key and shape the student shares (all but the encoder); returns the keys."""
    own = student.state_dict()
    shared = {k: v for k, v in teacher_sd.items() if k in own and own[k].shape == v.shape}
    student.load_state_dict(shared, strict=False)
    return sorted(shared)
