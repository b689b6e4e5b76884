"""SpVOS: STCN memory-matching VOS whose key encoder runs triple-gated sparse convolutions.

Stages (static shapes; ``B`` streams is the only dynamic dim; h, w = H/16, W/16):

- ``encode_key``: image (B, H, W, 3) uint8 BGR + per sparse conv a cache pair (x0, y0) as StateSpecs
  -> key (B, Ck, h, w), query_value (B, Cv, h, w), f16 (B, C16, h, w), f8 (B, C8, H/8, W/8),
  f4 (B, C4, H/4, W/4), caches'. A cache ``x0`` filled with -inf (its init rule) makes that conv dense,
  which is how the runner gets the dense first frame and the refresh every R frames.
- ``encode_value``: image, masks (B, K, H, W) float (object probabilities), f16 -> values (B, K, Cv, h, w).
- ``segment``: key, query_value, f8, f4, mem_keys (B, T, Ck, h, w), mem_values (B, T, K, Cv, h, w),
  mem_valid (B, T), obj_valid (B, K) -> probs (B, K, H, W) (soft-aggregated object probabilities;
  background is 1 - their sum; invalid objects are 0).

Memory read (STCN): affinity = (2 q.m - |m|^2) / sqrt(Ck) (the |q|^2 term is constant per query);
invalid memory slots get the lowest float (-inf in effect) before a top-k (k=20) over memory
positions; a softmax over the k best positions (everything below the k-th value is zeroed) weights
the memory values. TopK with a static k (<= 3840) is what TensorRT builds.

With ``sparse=False`` the key encoder is the dense STCN baseline (no cache states). Weights use
STCN's published names (``key_encoder.*``, ``value_encoder.*``, ``key_proj.key_proj.*``, ``key_comp.*``,
``decoder.*``), so the official checkpoint loads into the full-size variant.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgevis.errors import EdgevisError
from edgevis.models.base import Deployable, load_state_dict_strict
from edgevis.models.blocks import ImageNormalize
from edgevis.models.stcn_blocks import (
    ConvFn,
    Decoder,
    KeyEncoder,
    KeyProjection,
    ValueEncoder,
    dense_conv,
    per_object,
)
from edgevis.spec import IOSpec, Preprocess, StateSpec, TensorSpec

log = logging.getLogger(__name__)
PREPROCESS = Preprocess(size_multiple=16)
STAGES = ("encode_key", "encode_value", "segment")


@dataclass(frozen=True)
class SpVOSConfig:
    height: int = 480
    width: int = 864  # 854 padded to a multiple of 16
    key_dim: int = 64
    value_dim: int = 512
    key_stem: int = 64
    key_widths: tuple[int, ...] = (64, 128, 256)  # ResNet-50 bottleneck widths (x4 channels out)
    key_blocks: tuple[int, ...] = (3, 4, 6)
    key_expansion: int = 4  # bottleneck expansion (ResNet-50: 4)
    key_stem_kernel: int = 7  # 3 makes the stem a (sparse) 3x3 conv too
    value_stem: int = 64
    value_widths: tuple[int, ...] = (64, 128, 256)  # ResNet-18
    value_blocks: tuple[int, ...] = (2, 2, 2)
    decoder_widths: tuple[int, ...] = (512, 256, 256)
    max_objects: int = 8  # K: object slots (static)
    mem_slots: int = 8  # T: memory ring capacity (slot 0 keeps the first frame)
    mem_every: int = 5  # a frame goes into memory every mem_every frames
    top_k: int = 20
    # triple-gated sparse key encoder
    sparse: bool = True
    block: int = 8
    tau_t: float | tuple[float, ...] = 0.05  # one value, or one per sparse conv
    tau_s: float | tuple[float, ...] = 0.0
    refresh: int = 30  # dense key-encoder frame every `refresh` frames (0 = never)
    learned_gate: bool = False  # training only; deploy graphs use the thresholds
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.height % 16 or self.width % 16:
            raise EdgevisError(f"SpVOS input {self.height}x{self.width} must be a multiple of 16 on both sides")
        if self.top_k > 3840:
            raise EdgevisError(f"top_k={self.top_k}: TensorRT TopK takes k <= 3840")
        if self.top_k > self.mem_slots * (self.height // 16) * (self.width // 16):
            raise EdgevisError(f"top_k={self.top_k} exceeds the memory positions ({self.mem_slots} slots x "
                               f"{self.height // 16}x{self.width // 16})")
        if self.max_objects < 1 or self.mem_slots < 2:
            raise EdgevisError(f"max_objects={self.max_objects} (>= 1) and mem_slots={self.mem_slots} (>= 2) invalid")


FULL = SpVOSConfig()
TINY = SpVOSConfig(  # narrow: 3x3 stem and expansion-2 bottlenecks, so the sparse 3x3 convs carry most FLOPs
    height=96, width=160, key_dim=16, value_dim=48, key_stem=16, key_stem_kernel=3, key_widths=(16, 32, 48),
    key_blocks=(1, 1, 2), key_expansion=2, value_stem=8, value_widths=(8, 16, 24), value_blocks=(1, 1, 1),
    decoder_widths=(32, 24, 16), max_objects=3, block=4, tau_t=0.05, tau_s=0.0, refresh=10,
)


def _per_layer(value: float | tuple[float, ...], n: int, what: str) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        return (float(value),) * n
    if len(value) != n:
        raise EdgevisError(f"SpVOS {what}: {len(value)} values given for {n} sparse convs; give one or {n}")
    return tuple(float(v) for v in value)


class SpVOSNet(nn.Module):
    """The root module: every weight of every stage (STCN names)."""

    def __init__(self, cfg: SpVOSConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.normalize = ImageNormalize(PREPROCESS)
        self.key_encoder = KeyEncoder(cfg.key_stem, cfg.key_widths, cfg.key_blocks, cfg.key_expansion, cfg.key_stem_kernel)
        c4, c8, c16 = self.key_encoder.channels
        self.value_encoder = ValueEncoder(c16, cfg.value_dim, cfg.value_stem, cfg.value_widths, cfg.value_blocks)
        self.key_proj = KeyProjection(c16, cfg.key_dim)
        self.key_comp = nn.Conv2d(c16, cfg.value_dim, 3, padding=1)
        self.decoder = Decoder(cfg.value_dim, c8, c4, cfg.decoder_widths)
        self.channels = (c4, c8, c16)
        # the 3x3 convs of encode_key that run sparse, in call order
        self.sparse_layers: list[tuple[str, nn.Conv2d]] = [
            (f"key_encoder.{n}", c) for n, c in self.key_encoder.sparse_convs()
        ] + [("key_proj.key_proj", self.key_proj.key_proj), ("key_comp", self.key_comp)]
        n = len(self.sparse_layers)
        self.tau_t = _per_layer(cfg.tau_t, n, "tau_t")
        self.tau_s = _per_layer(cfg.tau_s, n, "tau_s")
        self.last_decisions: list[torch.Tensor] = []  # eager only: decisions of the last encode_key
        self.gates: nn.ModuleDict | None = None
        if cfg.learned_gate:
            from edgevis.plugins.sparse_conv import LearnedGate

            self.gates = nn.ModuleDict({_gate_key(name): LearnedGate(t, s) for (name, _), t, s
                                        in zip(self.sparse_layers, self.tau_t, self.tau_s)})

    # ---- shapes --------------------------------------------------------------------------------
    def cache_shapes(self) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Per sparse conv: x0 shape and y0 shape without the batch dim (inputs are multiples of 16)."""
        h, w = self.cfg.height, self.cfg.width
        out = []
        for name, conv in self.sparse_layers:
            s = conv.stride[0]
            if name == "key_encoder.conv1":
                stride_in = 1
            elif name.startswith("key_encoder.res2"):
                stride_in = 4
            elif name.startswith("key_proj") or name == "key_comp":
                stride_in = 16
            x_hw = (h // stride_in, w // stride_in)
            y_hw = (x_hw[0] // s, x_hw[1] // s)
            out.append(((conv.in_channels, *x_hw), (conv.out_channels, *y_hw)))
            stride_in *= s  # layer2.0 / layer3.0 halve the size for the blocks after them
        return out

    # ---- stages (also used by training) -------------------------------------------------------
    def encode_key(self, image: torch.Tensor, caches: list[torch.Tensor] | None = None, *,
                   force_dense: bool = False, sparse_train: bool = False, runner: ConvFn | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """image -> key, query value, f16, f8, f4, new caches ([x0_0, y0_0, x0_1, ...]; [] when dense).

        ``runner`` (measurement tools, dense only): called as ``runner(name, conv, x)`` for every conv
        that may run sparse, in place of the dense conv (whose BatchNorm then stays unfolded)."""
        x = self.normalize(image)  # (B, 3, H, W)
        conv_fn, new_caches = runner or dense_conv, []
        if self.cfg.sparse and caches is not None:
            conv_fn, new_caches = self._sparse_runner(caches, force_dense, sparse_train)
        f16, f8, f4 = self.key_encoder(x, conv_fn)
        key = conv_fn("key_proj.key_proj", self.key_proj.key_proj, f16)  # (B, Ck, h, w)
        qval = conv_fn("key_comp", self.key_comp, f16)  # (B, Cv, h, w)
        return key, qval, f16, f8, f4, new_caches

    def _sparse_runner(self, caches: list[torch.Tensor], force_dense: bool, sparse_train: bool):
        from edgevis.plugins.flavor import exporting
        from edgevis.plugins.sparse_conv import triple_sparse_conv

        index = {name: i for i, (name, _) in enumerate(self.sparse_layers)}
        assert len(caches) == 2 * len(index), "one (x0, y0) pair per sparse conv"
        new: list[torch.Tensor] = list(caches)
        decisions: list[torch.Tensor] = []
        self.sparse_cost: list[torch.Tensor] = []

        def run(name: str, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
            i = index[name if name in index else f"key_encoder.{name}"]
            x0, y0 = caches[2 * i], caches[2 * i + 1]
            kw = dict(stride=conv.stride[0], padding=conv.padding[0], block=self.cfg.block)
            if sparse_train and force_dense:  # training, dense frame: plain conv (differentiable)
                y = conv(x)
                x0n, d = x.detach(), torch.full((1,), 2, dtype=torch.int32)
            elif sparse_train:  # training, sparse frame: decision-masked mix (differentiable)
                gate = self.gates[_gate_key(name)] if self.gates is not None else None
                y, x0n, d, cost = _train_step(gate, conv, x, x0, y0, tau=(self.tau_t[i], self.tau_s[i]), **kw)
                self.sparse_cost.append(cost)
            else:
                y, x0n, _, d = triple_sparse_conv(x, x0, y0, conv.weight, conv.bias, tau_t=self.tau_t[i],
                                                  tau_s=self.tau_s[i], force_dense=force_dense, **kw)
            new[2 * i], new[2 * i + 1] = x0n, (y.detach() if sparse_train else y)
            decisions.append(d)
            return y

        if not exporting() and not torch.compiler.is_compiling():
            self.last_decisions = decisions
        return run, new

    def encode_value(self, image: torch.Tensor, masks: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
        """image (B, H, W, 3) uint8 or normalised (B, 3, H, W), masks (B, K, H, W), f16 -> (B, K, Cv, h, w)."""
        b, k = masks.shape[:2]
        x = per_object(self.normalize(image), k)  # (B*K, 3, H, W)
        m = masks.flatten(0, 1).unsqueeze(1)  # (B*K, 1, H, W)
        others = (masks.sum(1, keepdim=True) - masks).flatten(0, 1).unsqueeze(1)  # (B*K, 1, H, W)
        v = self.value_encoder(x, per_object(f16, k), m, others)  # (B*K, Cv, h, w)
        return v.unflatten(0, (b, k))

    def segment_logits(self, key: torch.Tensor, qval: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor,
                       mem_keys: torch.Tensor, mem_values: torch.Tensor, mem_valid: torch.Tensor,
                       obj_valid: torch.Tensor) -> torch.Tensor:
        """Soft-aggregated logits (B, 1+K, H, W): channel 0 background, then the K objects."""
        b, t, ck, h, w = mem_keys.shape
        k, cv = mem_values.shape[2], mem_values.shape[3]
        hw = h * w
        mk = mem_keys.transpose(1, 2).reshape(b, ck, t * hw)  # (B, Ck, T*hw)
        qk = key.flatten(2)  # (B, Ck, hw)
        a_sq = mk.pow(2).sum(1).unsqueeze(2)  # (B, T*hw, 1)
        aff = (2 * (mk.transpose(1, 2) @ qk) - a_sq) / math.sqrt(ck)  # (B, T*hw, hw)
        valid = (mem_valid > 0.5).unsqueeze(2).expand(b, t, hw).reshape(b, t * hw, 1)  # (B, T*hw, 1)
        aff = torch.where(valid, aff, torch.finfo(aff.dtype).min)
        top = torch.topk(aff, self.cfg.top_k, dim=1).values  # (B, k, hw)
        e = torch.exp(aff - top[:, :1])
        e = torch.where(aff >= top[:, -1:], e, torch.zeros_like(e))
        wts = e / e.sum(1, keepdim=True)  # (B, T*hw, hw) softmax over the top-k positions
        mv = mem_values.permute(0, 2, 3, 1, 4, 5).reshape(b, k * cv, t * hw)  # (B, K*Cv, T*hw)
        mem = (mv @ wts).reshape(b * k, cv, h, w)  # (B*K, Cv, h, w)
        x16 = torch.cat([mem, per_object(qval, k)], 1)  # (B*K, 2*Cv, h, w)
        logits = self.decoder(x16, f8, f4, k).reshape(b, k, f4.shape[-2] * 4, f4.shape[-1] * 4)  # (B, K, H, W)
        sel = (obj_valid > 0.5).to(logits.dtype)[:, :, None, None]  # (B, K, 1, 1)
        prob = torch.sigmoid(logits) * sel
        bg = torch.prod(1 - prob, dim=1, keepdim=True)  # (B, 1, H, W)
        p = torch.cat([bg, prob], 1).clamp(1e-7, 1 - 1e-7)
        return torch.log(p / (1 - p))

    def segment(self, *args: torch.Tensor) -> torch.Tensor:
        obj_valid = args[-1]
        sel = (obj_valid > 0.5).to(torch.float32)[:, :, None, None]
        return torch.softmax(self.segment_logits(*args), dim=1)[:, 1:] * sel  # (B, K, H, W)


def _gate_key(name: str) -> str:
    return name.replace(".", "-")


def _train_step(gate: nn.Module | None, conv: nn.Conv2d, x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, *,
                tau: tuple[float, float], stride: int, padding: int, block: int):
    """Training step of a sparse conv: the decision-masked mix of y0, the interpolated and the full conv.

    Decisions come from the learned gate (hard Gumbel-sigmoid, straight-through) or, without one, from
    the thresholds; returns (y, x0_new, decision, mean cost) with cost 0 / 1/4 / 1 per decision."""
    from edgevis.plugins.sparse_conv import reference as ref

    k = conv.kernel_size[0]
    r, v = ref.pixel_stats(x.detach(), x0)
    rb, vb = ref.block_pool(r, k, stride, padding, block), ref.block_pool(v, k, stride, padding, block)
    if gate is not None:
        masks = gate(rb, vb)  # (N, 3, nbh, nbw)
    else:
        masks = F.one_hot(ref.threshold_decisions(rb, vb, *tau).long(), 3).permute(0, 3, 1, 2).to(x.dtype)
    d = masks.detach().argmax(1).to(torch.int32)  # (N, nbh, nbw)
    cost = (masks[:, 1] * 0.25 + masks[:, 2]).mean()
    ho, wo = y0.shape[-2:]
    y_full = F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=padding)  # (N, Cout, Ho, Wo)
    y_int = ref.fill_from_lattice(y_full[:, :, ::2, ::2], ho, wo)
    m = ref.expand_blocks(masks, block, ho, wo)  # (N, 3, Ho, Wo)
    y = m[:, :1] * y0 + m[:, 1:2] * y_int + m[:, 2:] * y_full
    own = ref.expand_blocks(d, block, x.shape[-2], x.shape[-1], unit=stride).unsqueeze(1)
    return y, torch.where(own != ref.REUSE, x, x0), d, cost


# ---- stage modules (thin views of the shared root) ---------------------------------------------
class EncodeKeyStage(nn.Module):
    """``forward(image, cache00_x0, cache00_y0, ...)``: one named positional argument per state input
    (the exporter maps dynamic shapes onto named arguments, not onto ``*args``); see :func:`encode_key_stage`."""

    def __init__(self, net: SpVOSNet) -> None:
        super().__init__()
        self.net = net
        # the gate settings are baked into the graph: keep them in this stage's state_dict (not the root's,
        # so checkpoints keep STCN's layout), so the weights fingerprint that names cached ONNX files covers them
        c = net.cfg
        settings = [float(c.sparse), float(c.block), *net.tau_t, *net.tau_s] if c.sparse else [0.0]
        self.register_buffer("sparse_settings", torch.tensor(settings, dtype=torch.float64))

    def run(self, image: torch.Tensor, caches: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        key, qval, f16, f8, f4, new = self.net.encode_key(image, caches if caches else None)
        return (key, qval, f16, f8, f4, *new)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:  # dense: no caches
        return self.run(image, [])


def encode_key_stage(net: SpVOSNet) -> EncodeKeyStage:
    """The encode_key module, with a forward whose signature lists every cache tensor by name."""
    if not net.cfg.sparse:
        return EncodeKeyStage(net)
    names = [f"c{i}" for i in range(2 * len(net.sparse_layers))]
    src = f"def forward(self, image, {', '.join(names)}):\n    return self.run(image, [{', '.join(names)}])\n"
    scope: dict[str, Any] = {}
    exec(src, scope)  # noqa: S102 - a generated signature, no user input
    cls = type("SparseEncodeKeyStage", (EncodeKeyStage,), {"forward": scope["forward"]})
    return cls(net)


class EncodeValueStage(nn.Module):
    def __init__(self, net: SpVOSNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, masks: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
        return self.net.encode_value(image, masks, f16)


class SegmentStage(nn.Module):
    def __init__(self, net: SpVOSNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, key: torch.Tensor, qval: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor,
                mem_keys: torch.Tensor, mem_values: torch.Tensor, mem_valid: torch.Tensor,
                obj_valid: torch.Tensor) -> torch.Tensor:
        return self.net.segment(key, qval, f8, f4, mem_keys, mem_values, mem_valid, obj_valid)


class SpVOSModel(Deployable):
    stages = STAGES

    def __init__(self, name: str = "spvos", cfg: SpVOSConfig = FULL) -> None:
        self.name = name
        self.cfg = cfg
        self._use_net(SpVOSNet(cfg).eval())
        self.meta: dict[str, Any] = {}

    def _use_net(self, net: SpVOSNet) -> None:
        self.net = net
        self._stages = {"encode_key": encode_key_stage(net), "encode_value": EncodeValueStage(net),
                        "segment": SegmentStage(net)}

    def cache_names(self) -> list[tuple[str, str]]:
        """(x0 name, y0 name) per sparse conv, as encode_key's state inputs call them."""
        if not self.cfg.sparse:
            return []
        return [(f"cache{i:02d}_x0", f"cache{i:02d}_y0") for i in range(len(self.net.sparse_layers))]

    def iospec(self, name: str) -> IOSpec:
        self.check_stage(name)
        c = self.cfg
        hh, ww = c.height, c.width
        h, w = hh // 16, ww // 16
        c4, c8, c16 = self.net.channels
        k, t, ck, cv = c.max_objects, c.mem_slots, c.key_dim, c.value_dim
        key = TensorSpec("key", "float32", ("B", ck, h, w))
        qval = TensorSpec("query_value", "float32", ("B", cv, h, w))
        f16 = TensorSpec("f16", "float32", ("B", c16, h, w))
        f8 = TensorSpec("f8", "float32", ("B", c8, hh // 8, ww // 8))
        f4 = TensorSpec("f4", "float32", ("B", c4, hh // 4, ww // 4))
        image = TensorSpec("image", "uint8", ("B", hh, ww, 3))
        common = dict(model=self.name, stage=name, preprocess=PREPROCESS, image_input="image", dims={"B": 1})
        if name == "encode_key":
            states = []
            for (nx, ny), (xs, ys) in zip(self.cache_names(), self.net.cache_shapes()):
                states.append(StateSpec(nx, nx + "_out", ("B", *xs), "float32", "neg_inf"))
                states.append(StateSpec(ny, ny + "_out", ("B", *ys), "float32", "zeros"))
            tol = {n: 2e-3 for n in ("key", "query_value", "f16", "f8", "f4")}
            tol.update({s.name_out: 2e-3 for s in states})
            return IOSpec(inputs=[image], outputs=[key, qval, f16, f8, f4], states=states, tolerances=tol, **common)
        if name == "encode_value":
            masks = TensorSpec("masks", "float32", ("B", k, hh, ww))
            values = TensorSpec("values", "float32", ("B", k, cv, h, w))
            return IOSpec(inputs=[image, masks, f16], outputs=[values], tolerances={"values": 2e-3}, **common)
        ins = [key, qval, f8, f4, TensorSpec("mem_keys", "float32", ("B", t, ck, h, w)),
               TensorSpec("mem_values", "float32", ("B", t, k, cv, h, w)), TensorSpec("mem_valid", "float32", ("B", t)),
               TensorSpec("obj_valid", "float32", ("B", k))]
        return IOSpec(inputs=ins, outputs=[TensorSpec("probs", "float32", ("B", k, hh, ww))],
                      tolerances={"probs": 2e-3}, **{**common, "image_input": None, "preprocess": None})

    def policy(self, **options: Any) -> Any:
        from edgevis.runtime.policies.spvos import SpVOSPolicy

        return SpVOSPolicy(self, **options)

    def check_policy_options(self, clip: Any = None) -> dict[str, Any]:
        """Policy options for `edgevis check`: the synthetic clip's frame-0 ground truth as first masks."""
        if clip is None or clip.num_objects == 0:
            return {"first_mask": "auto"}
        from edgevis.data.synthetic import masks_to_labels

        return {"first_mask": masks_to_labels(clip.masks[0][: self.cfg.max_objects])}

    # ---- weights -------------------------------------------------------------------------------
    def apply_weights(self, sd: dict[str, Any], checkpoint: dict[str, Any], source: str) -> None:
        """An edgevis checkpoint ({'model', 'state_dict', 'meta'}) or STCN's published one (a bare state dict).

        BN ``num_batches_tracked`` entries are optional; a ``meta['sparse']`` dict (tau_t, tau_s, block,
        refresh) sets the deployed thresholds, e.g. calibrated from a learned gate.
        """
        self.load_state_dict(sd, source=source)
        meta = checkpoint.get("meta") if isinstance(checkpoint.get("meta"), dict) else {}
        self.meta = dict(meta)
        sparse = meta.get("sparse")
        if isinstance(sparse, dict) and self.cfg.sparse:
            self.set_sparse(**{k: sparse[k] for k in ("tau_t", "tau_s", "block", "refresh") if k in sparse})

    def load_state_dict(self, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
        own = self.net.state_dict()
        for k in own:  # BN counters are not in every checkpoint
            if k.endswith("num_batches_tracked") and k not in sd:
                sd[k] = own[k]
        if self.net.gates is not None:  # learned gates are optional (official checkpoints have none)
            for k in own:
                if k.startswith("gates.") and k not in sd:
                    sd[k] = own[k]
        else:
            sd = {k: v for k, v in sd.items() if not k.startswith("gates.")}
        load_state_dict_strict(self.net, sd, source=source)

    def set_sparse(self, **changes: Any) -> None:
        """Change sparse settings (tau_t, tau_s, block, refresh, sparse) in place, keeping the weights."""
        cfg = replace(self.cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()})
        sd = self.net.state_dict()
        self.cfg = cfg
        net = SpVOSNet(cfg).eval()
        own = net.state_dict()
        net.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
        self._use_net(net)


def build_spvos(name: str = "spvos", tiny: bool = False, **changes: Any) -> SpVOSModel:
    """A SpVOS model; ``changes`` override config fields (e.g. ``max_objects=10``, ``sparse=False``)."""
    cfg = replace(TINY if tiny else FULL, **changes)
    return SpVOSModel(name, cfg)
