"""IOSpec: the one description of an exported stage, read by everything.

A model exposes stages (``frame``, ``clip``, ``key`` ...). Each stage becomes one ONNX graph and
one engine, and is described by one :class:`IOSpec`:

- ``inputs`` / ``outputs``: :class:`TensorSpec` (name, dtype, shape). A dimension is an ``int``
  (static) or a name such as ``"B"`` (streams) that is bound consistently across tensors.
- ``states``: :class:`StateSpec` pairs ``(name_in, name_out, shape, dtype, init)``. A stage is
  called as ``outputs, *state_out = stage(*inputs, *state_in)``; there are no optional inputs.
- ``preprocess``: what the image input expects (size multiple, mean/std, channel order).

Export writes the IOSpec as JSON into the ONNX ``metadata_props`` under :data:`METADATA_KEY`;
engine sidecars carry a copy; backends validate feeds against it at the boundary.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from edgevis.errors import SpecError

METADATA_KEY = "edgevis.iospec"
SPEC_VERSION = 1

Dim = Union[int, str]

# name -> (torch dtype, numpy dtype, ONNX TensorProto enum)
DTYPES: dict[str, tuple[torch.dtype, Any, int]] = {
    "float32": (torch.float32, np.float32, 1),
    "float16": (torch.float16, np.float16, 10),
    "int64": (torch.int64, np.int64, 7),
    "int32": (torch.int32, np.int32, 6),
    "uint8": (torch.uint8, np.uint8, 2),
    "bool": (torch.bool, np.bool_, 9),
}
_TORCH_TO_NAME = {v[0]: k for k, v in DTYPES.items()}
_NUMPY_TO_NAME = {np.dtype(v[1]): k for k, v in DTYPES.items()}
INIT_RULES = ("zeros", "ones", "neg_inf")


def dtype_name(value: torch.Tensor | np.ndarray) -> str:
    """The IOSpec dtype name of a tensor or array (``"float32"``...), or its repr if unknown."""
    if isinstance(value, torch.Tensor):
        return _TORCH_TO_NAME.get(value.dtype, str(value.dtype).replace("torch.", ""))
    return _NUMPY_TO_NAME.get(np.dtype(value.dtype), str(value.dtype))


def _check_dtype(name: str) -> str:
    if name not in DTYPES:
        raise SpecError(f"dtype {name!r} is not supported; expected one of {sorted(DTYPES)}")
    return name


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str = "float32"
    shape: tuple[Dim, ...] = ()

    def __post_init__(self) -> None:
        _check_dtype(self.dtype)
        object.__setattr__(self, "shape", tuple(self.shape))

    def resolve(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        """Concrete shape, with every named dimension looked up in ``dims``."""
        out = []
        for d in self.shape:
            if isinstance(d, str):
                if d not in dims:
                    raise SpecError(f"tensor '{self.name}': dimension '{d}' is not bound; pass {d}=<int>")
                out.append(int(dims[d]))
            else:
                out.append(int(d))
        return tuple(out)

    def check(self, value: Any, dims: dict[str, int]) -> None:
        """Validate ``value`` against this spec, binding named dims into ``dims`` as it goes."""
        if not isinstance(value, (torch.Tensor, np.ndarray)):
            raise SpecError(
                f"input '{self.name}': received {type(value).__name__}, expected a tensor "
                f"{self.dtype}{list(self.shape)}"
            )
        got_shape = tuple(value.shape)
        got_dtype = dtype_name(value)
        if got_dtype != self.dtype:
            raise SpecError(
                f"input '{self.name}': received dtype {got_dtype}, expected {self.dtype} "
                f"(convert with .to({DTYPES[self.dtype][0]}))"
            )
        if len(got_shape) != len(self.shape):
            raise SpecError(
                f"input '{self.name}': received shape {list(got_shape)} (rank {len(got_shape)}), "
                f"expected {list(self.shape)} (rank {len(self.shape)})"
            )
        for axis, (want, got) in enumerate(zip(self.shape, got_shape)):
            if isinstance(want, str):
                bound = dims.setdefault(want, got)
                if bound != got:
                    raise SpecError(
                        f"input '{self.name}': axis {axis} ('{want}') is {got} but '{want}' is {bound} "
                        f"in another input; received {list(got_shape)}, expected {list(self.shape)}"
                    )
            elif want != got:
                raise SpecError(
                    f"input '{self.name}': received shape {list(got_shape)}, expected {list(self.shape)} "
                    f"(axis {axis} must be {want})"
                )


@dataclass(frozen=True)
class StateSpec:
    """A recurrent state pair: ``name_in`` is fed, ``name_out`` is returned for the next call."""

    name_in: str
    name_out: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"
    init: str = "zeros"

    def __post_init__(self) -> None:
        _check_dtype(self.dtype)
        object.__setattr__(self, "shape", tuple(self.shape))
        if self.init not in INIT_RULES:
            raise SpecError(f"state '{self.name_in}': init rule {self.init!r} unknown; expected one of {INIT_RULES}")

    @property
    def tensor_in(self) -> TensorSpec:
        return TensorSpec(self.name_in, self.dtype, self.shape)

    @property
    def tensor_out(self) -> TensorSpec:
        return TensorSpec(self.name_out, self.dtype, self.shape)

    def initial(self, dims: Mapping[str, int], device: str | torch.device = "cpu") -> torch.Tensor:
        shape = self.tensor_in.resolve(dims)
        dt = DTYPES[self.dtype][0]
        if self.init == "zeros":
            return torch.zeros(shape, dtype=dt, device=device)
        if self.init == "ones":
            return torch.ones(shape, dtype=dt, device=device)
        return torch.full(shape, float("-inf"), dtype=dt, device=device)


@dataclass(frozen=True)
class Preprocess:
    """How a BGR uint8 camera frame becomes the image input of a stage.

    The host letterboxes the frame (aspect kept, top-left, padded bottom/right with the mean colour)
    into the stage's fixed H x W. With ``in_graph=True`` (edgevis models) the image input is the
    uint8 BGR frame ``(B, H, W, 3)`` and the graph itself converts to ``channel_order``, scales by
    ``1/scale`` and normalises with ``mean``/``std`` (TensorRT fuses this into the first conv, and
    the host-to-device copy is 4x smaller). With ``in_graph=False`` the host does it and feeds
    float32 ``(B, 3, H, W)``. Masks are cropped back and resized to the source resolution.
    """

    size_multiple: int = 32
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    scale: float = 255.0
    in_graph: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.channel_order not in ("RGB", "BGR"):
            raise SpecError(f"preprocess channel_order {self.channel_order!r}; expected 'RGB' or 'BGR'")


@dataclass
class IOSpec:
    model: str
    stage: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    states: list[StateSpec] = field(default_factory=list)
    preprocess: Preprocess | None = None
    image_input: str | None = None  # which input takes preprocessed frames
    dims: dict[str, int] = field(default_factory=dict)  # values of named dims used at export
    tolerances: dict[str, float] = field(default_factory=dict)  # per-output max abs error for parity
    version: int = SPEC_VERSION

    # ---- names, in call order ---------------------------------------------------------------
    @property
    def input_specs(self) -> list[TensorSpec]:
        return list(self.inputs) + [s.tensor_in for s in self.states]

    @property
    def output_specs(self) -> list[TensorSpec]:
        return list(self.outputs) + [s.tensor_out for s in self.states]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.input_specs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.output_specs]

    @property
    def key(self) -> str:
        return f"{self.model}/{self.stage}"

    # ---- validation ------------------------------------------------------------------------
    def validate(self, feeds: Mapping[str, Any]) -> dict[str, int]:
        """Check feeds at the backend boundary; returns the bound named dims.

        Raises :class:`SpecError` naming the tensor, what was received and what was expected.
        """
        expected = self.input_names
        missing = [n for n in expected if n not in feeds]
        extra = [n for n in feeds if n not in expected]
        if missing or extra:
            raise SpecError(
                f"stage {self.key}: feeds {sorted(feeds)} do not match the IOSpec; "
                f"missing {missing}, unexpected {extra}; expected exactly {expected}"
            )
        dims: dict[str, int] = {}
        for t in self.input_specs:
            t.check(feeds[t.name], dims)
        return dims

    def init_state(self, dims: Mapping[str, int], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Initial state tensors keyed by ``name_in``, built from the init rules."""
        merged = {**self.dims, **dims}
        return {s.name_in: s.initial(merged, device) for s in self.states}

    def example_inputs(self, dims: Mapping[str, int] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        """Deterministic example feeds (random floats, zero ints, initial states)."""
        merged = {**self.dims, **(dims or {})}
        g = torch.Generator().manual_seed(seed)
        feeds: dict[str, torch.Tensor] = {}
        for t in self.inputs:
            shape = t.resolve(merged)
            dt = DTYPES[t.dtype][0]
            if dt.is_floating_point:
                feeds[t.name] = torch.randn(shape, generator=g).to(dt)
            elif dt == torch.uint8:  # images
                feeds[t.name] = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
            else:
                feeds[t.name] = torch.zeros(shape, dtype=dt)
        feeds.update(self.init_state(merged))
        return feeds

    # ---- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = [asdict(t) | {"shape": list(t.shape)} for t in self.inputs]
        d["outputs"] = [asdict(t) | {"shape": list(t.shape)} for t in self.outputs]
        d["states"] = [asdict(s) | {"shape": list(s.shape)} for s in self.states]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IOSpec:
        try:
            version = int(d.get("version", 0))
            if version != SPEC_VERSION:
                raise SpecError(
                    f"IOSpec version {version} is not supported by this edgevis (expects {SPEC_VERSION}); "
                    "re-export the model with this version of edgevis"
                )
            pre = d.get("preprocess")
            return cls(
                model=d["model"],
                stage=d["stage"],
                inputs=[TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in d["inputs"]],
                outputs=[TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in d["outputs"]],
                states=[StateSpec(**{**s, "shape": tuple(s["shape"])}) for s in d.get("states", [])],
                preprocess=Preprocess(**pre) if pre else None,
                image_input=d.get("image_input"),
                dims=dict(d.get("dims", {})),
                tolerances=dict(d.get("tolerances", {})),
                version=version,
            )
        except (KeyError, TypeError) as e:
            raise SpecError(f"IOSpec JSON is malformed ({type(e).__name__}: {e}); re-export the model") from None

    @classmethod
    def from_json(cls, text: str) -> IOSpec:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise SpecError(f"IOSpec JSON does not parse: {e}; re-export the model") from None

    # ---- ONNX metadata ---------------------------------------------------------------------
    def write_onnx(self, model_proto: Any) -> None:
        """Store this spec in an ``onnx.ModelProto``'s metadata_props (replacing an older copy)."""
        props = model_proto.metadata_props
        for i in reversed(range(len(props))):
            if props[i].key == METADATA_KEY:
                del props[i]
        entry = props.add()
        entry.key = METADATA_KEY
        entry.value = self.to_json()

    @classmethod
    def from_onnx(cls, model: Any, expect_model: str | None = None, expect_stage: str | None = None) -> IOSpec:
        """Read the spec from an ONNX path or ModelProto.

        Raises :class:`SpecError` when the file carries no IOSpec or one of another model/stage.
        """
        import onnx

        where = str(model) if isinstance(model, (str, Path)) else "the ONNX model"
        if isinstance(model, (str, Path)):
            path = Path(model)
            if not path.is_file():
                raise SpecError(f"ONNX file {path} does not exist; export it with `edgevis export`")
            try:
                model = onnx.load(str(path), load_external_data=False)
            except Exception as e:  # onnx raises DecodeError and friends
                raise SpecError(f"{path} is not a readable ONNX file ({type(e).__name__}); re-export it") from None
        meta = {p.key: p.value for p in model.metadata_props}
        if METADATA_KEY not in meta:
            raise SpecError(
                f"{where} has no '{METADATA_KEY}' metadata, so edgevis cannot know its inputs, outputs and "
                "state; export it with `edgevis export` (or attach an IOSpec with edgevis.export.attach_iospec)"
            )
        spec = cls.from_json(meta[METADATA_KEY])
        if expect_model is not None and spec.model != expect_model:
            raise SpecError(
                f"{where} was exported from model '{spec.model}', expected '{expect_model}'; "
                f"pass the ONNX of '{expect_model}' or use --model {spec.model}"
            )
        if expect_stage is not None and spec.stage != expect_stage:
            raise SpecError(f"{where} is stage '{spec.stage}', expected stage '{expect_stage}'")
        return spec
