"""Bad MSDA input raises SpecError at the op boundary, naming the tensor and the expected shape."""

from __future__ import annotations

import re

import pytest
import torch

from edgevis.errors import EdgevisError, SpecError
from edgevis.plugins.flavor import export_flavor
from edgevis.plugins.ms_deform_attn import level_starts, ms_deform_attn

SHAPES = ((3, 4), (2, 2))


def good() -> dict[str, torch.Tensor]:
    B, Q, M, D, P, L, S = 2, 5, 2, 3, 2, 2, 16
    return {
        "value": torch.randn(B, S, M, D),
        "spatial_shapes": torch.tensor(SHAPES, dtype=torch.int64),
        "level_start_index": torch.tensor(level_starts(SHAPES), dtype=torch.int64),
        "sampling_locations": torch.rand(B, Q, M, L, P, 2),
        "attention_weights": torch.rand(B, Q, M, L, P),
    }


def call_both(x: dict[str, torch.Tensor], match: str) -> None:
    """The public function and torch.ops.edgevis.ms_deform_attn both reject ``x`` with ``match``."""
    with pytest.raises(SpecError, match=match):
        ms_deform_attn(*x.values())
    with pytest.raises(SpecError, match=match):
        torch.ops.edgevis.ms_deform_attn(*x.values())



def edgevis_error_from_export(module: torch.nn.Module, tmp_path, **options) -> str:
    """Export ``module`` (value, locations, weights) in the portable flavor; the EdgevisError's message
    (torch.onnx wraps it in its own errors, so the cause chain is searched)."""
    x = good()
    with pytest.raises(Exception) as info, export_flavor("portable", **options):
        torch.onnx.export(module.eval(), (x["value"], x["sampling_locations"], x["attention_weights"]),
                          str(tmp_path / "m.onnx"), dynamo=True, external_data=False, opset_version=18)
    chain, e = [], info.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    ours = [e for e in chain if isinstance(e, EdgevisError)]
    assert ours, f"no EdgevisError in {[type(e).__name__ for e in chain]}"
    return str(ours[0])

def test_good_input_passes() -> None:
    assert ms_deform_attn(*good().values()).shape == (2, 5, 6)


def test_level_count_mismatch_between_spatial_shapes_and_level_start_index() -> None:
    x = good()
    x["level_start_index"] = torch.tensor([0, 12, 16], dtype=torch.int64)
    call_both(
        x,
        re.escape("'level_start_index' must be [L]; received int64[3]")
        + ".*L=2 levels and spatial_shapes has 2.*expected \\[2\\]",
    )
    x = good()
    x["spatial_shapes"] = torch.tensor([[3, 4], [2, 2], [1, 1]], dtype=torch.int64)
    call_both(x, re.escape("'spatial_shapes' must be [L, 2]; received int64[3, 2]") + ".*expected \\[2, 2\\]")


def test_s_not_equal_to_sum_of_level_sizes() -> None:
    x = good()
    x["value"] = torch.randn(2, 17, 2, 3)
    call_both(
        x,
        re.escape("'value' must be [B, S, M, D]; received float32[2, 17, 2, 3]")
        + ".*S=17 must equal the sum of H\\*W .* = 16",
    )


def test_level_start_index_values_checked() -> None:
    x = good()
    x["level_start_index"] = torch.tensor([0, 11], dtype=torch.int64)
    call_both(x, re.escape("'level_start_index' must be [L]; received [0, 11]") + ".*expected \\[0, 12\\]")


@pytest.mark.parametrize(
    "name, bad, match",
    [
        ("value", torch.randn(2, 16, 6), r"'value' must be \[B, S, M, D\]; received float32\[2, 16, 6\] \(rank 3\)"),
        (
            "sampling_locations",
            torch.rand(2, 5, 2, 2, 2),
            r"'sampling_locations' must be \[B, Q, M, L, P, 2\]; received float32\[2, 5, 2, 2, 2\] \(rank 5\)",
        ),
        (
            "attention_weights",
            torch.rand(2, 5, 2, 2),
            r"'attention_weights' must be \[B, Q, M, L, P\]; received float32\[2, 5, 2, 2\] \(rank 4\)",
        ),
        (
            "attention_weights",
            torch.rand(2, 5, 2, 2, 3),
            r"'attention_weights' must be \[B, Q, M, L, P\]; received float32\[2, 5, 2, 2, 3\]; expected \[2, 5, 2, 2, 2\]",
        ),
        (
            "sampling_locations",
            torch.rand(2, 5, 3, 2, 2, 2),
            r"'sampling_locations' .* expected \[B=2, Q, M=2, L, P, 2\]",
        ),
        ("spatial_shapes", torch.tensor([3, 4, 2, 2]), r"'spatial_shapes' must be \[L, 2\]; received int64\[4\]"),
    ],
)
def test_wrong_ranks_and_sizes(name: str, bad: torch.Tensor, match: str) -> None:
    x = good()
    x[name] = bad
    call_both(x, match)


@pytest.mark.parametrize("name", ["value", "sampling_locations", "attention_weights"])
def test_non_float_dtypes(name: str) -> None:
    x = good()
    x[name] = (x[name] * 10).to(torch.int64)
    call_both(x, rf"'{name}' must be .*; received int64\[.*expected a float dtype")


def test_float_shape_tensors_rejected() -> None:
    x = good()
    x["spatial_shapes"] = x["spatial_shapes"].float()
    call_both(x, r"'spatial_shapes' must be \[L, 2\]; received float32\[2, 2\]; expected an int64 tensor")


def test_mixed_float_dtypes_rejected() -> None:
    x = good()
    x["attention_weights"] = x["attention_weights"].double()
    call_both(x, r"must share one float dtype; received torch.float32, torch.float32, torch.float64")


def test_shapes_argument_disagreeing_with_spatial_shapes() -> None:
    with pytest.raises(
        SpecError, match=r"spatial_shapes \[\[3, 4\], \[2, 2\]\] disagrees with shapes \[\(4, 3\), \(2, 2\)\]"
    ):
        ms_deform_attn(*good().values(), shapes=((4, 3), (2, 2)))


def test_shapes_alone_builds_the_shape_tensors() -> None:
    x = good()
    ref = ms_deform_attn(*x.values())
    got = ms_deform_attn(x["value"], None, None, x["sampling_locations"], x["attention_weights"], shapes=SHAPES)
    assert torch.equal(got, ref)
    with pytest.raises(SpecError, match="no shapes"):
        ms_deform_attn(x["value"], None, None, x["sampling_locations"], x["attention_weights"])


def test_export_without_static_shapes_says_how_to_fix(tmp_path) -> None:
    class NoShapes(torch.nn.Module):
        def forward(self, value: torch.Tensor, loc: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            ss = torch.tensor(SHAPES, dtype=torch.int64)
            return ms_deform_attn(value, ss, torch.tensor(level_starts(SHAPES)), loc, w)

    err = edgevis_error_from_export(NoShapes(), tmp_path)
    assert re.search(r"needs the level shapes as Python ints.*shapes=\(\(H0, W0\), \(H1, W1\), \.\.\.\)", err)


def test_removed_gather_option_is_refused_at_export(tmp_path) -> None:
    """``msda_gather`` (the former corners/cells switch) would be silently ignored; it is refused instead."""

    class Msda(torch.nn.Module):
        def forward(self, value: torch.Tensor, loc: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return ms_deform_attn(value, None, None, loc, w, shapes=SHAPES)

    err = edgevis_error_from_export(Msda(), tmp_path, msda_gather="cells")
    assert re.search(r"msda_gather='cells'.*expected no msda_gather option.*drop it", err)
