"""Recurrent SeqFormer (CAIP 2023): SeqFormer with its 6-layer attention encoder swapped for a light
recurrent CNN encoder trained by knowledge distillation (about 2x faster inference).

The paper says only "convolutional plus recurrent layers, multi-scale, distilled from the attention
encoder; decoder unchanged". The encoder here is edgevis's design, as SEEDS.md section 1 sets out
[our design]:

- each of the 4 levels (strides 8/16/32/64, d_model channels) gets a light conv block (depthwise
  3x3 + pointwise 1x1 + ReLU) and then a ConvGRU cell (``edgevis.plugins.convgru``, the light
  depthwise-separable variant: ``z, r = sigmoid(conv([x, h]))``, ``n = tanh(conv([x, r*h]))``,
  ``h' = (1-z)*h + z*n``; the state update is the fused ``ConvGRUCell`` plugin in the trt flavor);
- a top-down cross-scale path: the coarser level's new hidden state is upsampled (nearest) and added
  to the input of the finer level's cell;
- output per level = projected input + 1x1 conv of h' (a residual), flattened to the (B, S, d)
  memory layout the SeqFormer decoder and mask head read, so those modules and their checkpoint keys
  (``detr.transformer.decoder.*``, ``controller.*``, ``mask_head.*``, backbone, input_proj,
  heads) are SeqFormer's own;
- no position or level embedding (the convolutions see position through their receptive field);
- state per stream: 4 hidden maps h1..h4 (B, d, H/s, W/s) for s = 8/16/32/64, FP32, zeros at reset
  (about 4.9 MB at 360x640 with d = 256).

The encoder is distilled from the frozen teacher's encoder outputs (per-level MSE over 5-frame clips
unrolled through the GRU): ``edgevis distill --model recurrent_seqformer_tiny``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from edgevis.models.deformable import flatten_levels
from edgevis.models.seqformer import (
    SEQFORMER_R50,
    SEQFORMER_TINY,
    SeqFormer,
    SeqFormerConfig,
    SeqFormerNet,
    nearest_index,
    upsample_nearest,
)
from edgevis.plugins.convgru import ConvGRUCell
from edgevis.spec import StateSpec

TEACHERS = {"recurrent_seqformer": "seqformer_r50", "recurrent_seqformer_tiny": "seqformer_tiny"}


class RecurrentLevel(nn.Module):
    """One level: light conv block -> ConvGRU (separable) -> residual 1x1 output conv."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(d, d, 3, padding=1, groups=d, bias=False), nn.Conv2d(d, d, 1), nn.ReLU(inplace=True)
        )
        self.gru = ConvGRUCell(d, d, kernel=3, separable=True)
        self.out = nn.Conv2d(d, d, 1)


class RecurrentEncoder(nn.Module):
    """``detr.transformer.encoder`` of the recurrent model: 4 ConvGRU levels with a top-down path."""

    def __init__(self, cfg: SeqFormerConfig) -> None:
        super().__init__()
        self.shapes = cfg.shapes
        self.levels = nn.ModuleList(RecurrentLevel(cfg.d_model) for _ in self.shapes)
        for i in range(len(self.shapes) - 1):  # upsampling level i+1 -> level i
            (h, w), (hc, wc) = self.shapes[i], self.shapes[i + 1]
            self.register_buffer(f"up{i}_y", nearest_index(hc, h), persistent=False)
            self.register_buffer(f"up{i}_x", nearest_index(wc, w), persistent=False)

    def forward(self, levels: list[torch.Tensor], hidden: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """levels: 4 x (B, d, H_l, W_l) projected maps; hidden: 4 x (B, d, H_l, W_l) -> (outputs, new hidden)."""
        n = len(self.levels)
        outs: list[torch.Tensor] = [levels[0]] * n
        new: list[torch.Tensor] = [hidden[0]] * n
        for i in reversed(range(n)):  # coarse to fine
            lv = self.levels[i]
            u = lv.block(levels[i])
            if i < n - 1:
                u = u + upsample_nearest(new[i + 1], getattr(self, f"up{i}_y"), getattr(self, f"up{i}_x"))
            new[i] = lv.gru(u, hidden[i])  # (B, d, H_l, W_l); export keeps B dynamic
            outs[i] = levels[i] + lv.out(new[i])
        return outs, new


class RecurrentSeqFormerNet(SeqFormerNet):
    """SeqFormerNet whose frame step carries the 4 GRU hidden maps."""

    def __init__(self, cfg: SeqFormerConfig) -> None:
        super().__init__(cfg, encoder=RecurrentEncoder(cfg))

    def encode_recurrent(self, levels: list[torch.Tensor], hidden: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.detr.transformer.encoder(levels, hidden)

    def frame(self, image: torch.Tensor, h1: torch.Tensor, h2: torch.Tensor, h3: torch.Tensor,
              h4: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs, new = self.encode_recurrent(self.project(image), [h1, h2, h3, h4])
        memory = flatten_levels(outs)  # (B, S, d)
        return (memory, self.mask_features(memory), *new)

    def init_hidden(self, batch: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        return [torch.zeros(batch, self.cfg.d_model, h, w, device=device) for h, w in self.cfg.shapes]

    def frames(self, images: torch.Tensor, hidden: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """A clip (B, T, H, W, 3) unrolled frame by frame -> memory (B, T, S, d), mask_feats, last hidden."""
        hidden = hidden if hidden is not None else self.init_hidden(images.shape[0], images.device)
        mems, feats = [], []
        for t in range(images.shape[1]):
            memory, mf, *hidden = self.frame(images[:, t], *hidden)
            mems.append(memory)
            feats.append(mf)
        return torch.stack(mems, 1), torch.stack(feats, 1), hidden

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory, feats, _ = self.frames(images)
        return self.clip(memory, feats)


class RecurrentFrameStage(nn.Module):
    """Stage ``frame`` with explicit state arguments (torch.export needs a fixed signature)."""

    def __init__(self, net: RecurrentSeqFormerNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, h1: torch.Tensor, h2: torch.Tensor, h3: torch.Tensor,
                h4: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.net.frame(image, h1, h2, h3, h4)


class RecurrentSeqFormer(SeqFormer):
    """Stages ``frame`` (image, h1..h4 -> memory, mask_feats, h1'..h4') and ``clip`` (SeqFormer's)."""

    family = "recurrent_seqformer"

    def build_net(self, cfg: SeqFormerConfig) -> SeqFormerNet:
        return RecurrentSeqFormerNet(cfg)

    def frame_stage(self, net: SeqFormerNet) -> nn.Module:
        assert isinstance(net, RecurrentSeqFormerNet)
        return RecurrentFrameStage(net)

    def frame_states(self) -> list[StateSpec]:
        d = self.cfg.d_model
        return [StateSpec(f"h{i + 1}", f"h{i + 1}_out", ("B", d, h, w), "float32", "zeros")
                for i, (h, w) in enumerate(self.cfg.shapes)]


def recurrent_seqformer(name: str, tiny: bool = False, **overrides: Any) -> RecurrentSeqFormer:
    cfg = replace(SEQFORMER_TINY if tiny else SEQFORMER_R50, **overrides)
    with torch.random.fork_rng(devices=[]):  # untrained weights are reproducible (same ONNX fingerprint per build)
        torch.manual_seed(0)
        return RecurrentSeqFormer(name, cfg)
