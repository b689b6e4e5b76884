"""MobileInst model: stage shapes and composition, fixed pools, query passing, bad sizes, foreign checkpoints."""

from __future__ import annotations

import pytest
import torch

from edgevis.errors import EdgevisError
from edgevis.models.mobileinst import CONFIGS, MobileInst, MobileInstConfig, kernel_masks
from edgevis.models.topformer import TOPFORMER_TINY
from edgevis.models.zoo import MODELS, build_model


@pytest.fixture(scope="module")
def tiny() -> MobileInst:
    torch.manual_seed(0)
    return MobileInst("mobileinst_tiny")


def run_stages(model: MobileInst, image: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        x_mask, x6 = model.stage("frame")(image)
        kernels, logits, obj = model.stage("key")(x_mask, x6)
        masks = model.stage("mask")(kernels, x_mask)
    return {"x_mask": x_mask, "x6": x6, "kernels": kernels, "logits": logits, "objectness": obj, "masks": masks}


def test_zoo_registers_both_sizes() -> None:
    assert MODELS["mobileinst"].family == MODELS["mobileinst_tiny"].family == "mobileinst"
    assert MODELS["mobileinst_tiny"].tiny and not MODELS["mobileinst"].tiny
    assert CONFIGS["mobileinst"].queries == 100 and (CONFIGS["mobileinst"].height, CONFIGS["mobileinst"].width) == (384, 640)
    full = CONFIGS["mobileinst"].backbone
    assert full.channels == (32, 64, 128, 160) and full.global_dim == 384 and full.depth == 4 and full.heads == 8


def test_stage_outputs_match_iospecs(tiny: MobileInst) -> None:
    spec = tiny.iospec("frame")
    image = spec.example_inputs({"B": 2})["image"]
    out = run_stages(tiny, image)
    for stage in tiny.stages:
        for t in tiny.iospec(stage).outputs:
            assert tuple(out[t.name].shape) == t.resolve({"B": 2}), (stage, t.name)
    c = tiny.cfg
    assert out["x_mask"].shape[-2:] == (c.height // 8, c.width // 8)
    assert out["x6"].shape[-2:] == (c.height // 64, c.width // 64)


def test_stages_compose_to_the_per_frame_forward(tiny: MobileInst) -> None:
    image = tiny.iospec("frame").example_inputs({"B": 1}, seed=3)["image"]
    staged = run_stages(tiny, image)
    with torch.no_grad():
        whole = tiny.net(image)
    for k in ("masks", "logits", "objectness", "kernels"):
        torch.testing.assert_close(staged[k], whole[k], rtol=0, atol=0)
    torch.testing.assert_close(staged["masks"], kernel_masks(staged["kernels"], staged["x_mask"]))


def test_batch_rows_are_independent(tiny: MobileInst) -> None:
    image = tiny.iospec("frame").example_inputs({"B": 2}, seed=4)["image"]
    both = run_stages(tiny, image)
    one = run_stages(tiny, image[1:])
    torch.testing.assert_close(both["masks"][1:], one["masks"], rtol=1e-4, atol=1e-4)


def test_backbone_has_no_adaptive_pools(tiny: MobileInst) -> None:
    full = MobileInst("mobileinst")
    for model in (tiny, full):
        kinds = {type(m).__name__ for m in model.net.modules()}
        assert not any("Adaptive" in k for k in kinds), kinds


def test_temporal_query_passing_feeds_stage_two(tiny: MobileInst) -> None:
    image = tiny.iospec("frame").example_inputs({"B": 2}, seed=5)["image"]
    with torch.no_grad():
        x_mask, x6 = tiny.net.features(image)
        k, lg, ob, q1 = tiny.net.decoder(x_mask, x6)
        k_same, *_ = tiny.net.decoder(x_mask, x6, passed=q1)  # own stage-1 queries == the default path
        k_other, *_ = tiny.net.decoder(x_mask, x6, passed=q1.flip(0))  # other frame's queries change the output
    torch.testing.assert_close(k, k_same)
    assert not torch.allclose(k, k_other)


def test_input_size_not_a_multiple_of_64_is_refused() -> None:
    with pytest.raises(EdgevisError, match=r"200x320 is not a multiple of 64.*expected H and W divisible by 64"):
        MobileInstConfig(TOPFORMER_TINY, 200, 320, num_classes=5)
    net = MobileInst("mobileinst_tiny").net
    with pytest.raises(EdgevisError, match="not a multiple of 64; letterbox"):
        net.features(torch.zeros(1, 200, 320, 3, dtype=torch.uint8))


def test_checkpoint_of_another_model_gives_a_clear_error(tmp_path, tiny: MobileInst) -> None:
    toy = build_model("toy_convgru")
    path = tmp_path / "toy.pt"
    torch.save({"model": "toy_convgru", "state_dict": toy.module.state_dict()}, path)
    with pytest.raises(EdgevisError, match=r"holds weights of model 'toy_convgru', not 'mobileinst_tiny'; pass --model toy_convgru"):
        tiny.load_weights(path)
    small = tmp_path / "tiny.pt"  # same family, other size: the shape check names the mismatch
    torch.save({"model": "mobileinst_tiny", "state_dict": tiny.net.state_dict()}, small)
    with pytest.raises(EdgevisError, match="does not fit MobileInstNet.*another model or size"):
        MobileInst("mobileinst").load_weights(small)
    tensor = tmp_path / "tensor.pt"  # a file that holds no state dict at all
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(EdgevisError, match=r"expected a state dict or \{'state_dict': ...\}, received Tensor"):
        tiny.load_weights(tensor)


def test_checkpoint_round_trip(tmp_path, tiny: MobileInst) -> None:
    path = tmp_path / "w.pt"
    torch.save({"model": "mobileinst_tiny", "state_dict": tiny.net.state_dict(), "meta": {}}, path)
    other = MobileInst("mobileinst_tiny")
    other.load_weights(path)
    image = tiny.iospec("frame").example_inputs(seed=6)["image"]
    torch.testing.assert_close(run_stages(other, image)["masks"], run_stages(tiny, image)["masks"])


def test_key_and_mask_stages_export_with_parity(tmp_path, tiny: MobileInst) -> None:
    from edgevis.export.onnx_export import export_stage

    for stage in ("key", "mask"):
        report = export_stage(tiny, stage, tmp_path / f"{stage}.onnx", "portable")
        assert report.spec.key == f"mobileinst_tiny/{stage}"
        assert max(report.max_abs_error.values()) <= 5e-3


@pytest.mark.slow
def test_frame_stage_exports_without_adaptive_pooling(tmp_path, tiny: MobileInst) -> None:
    import onnx

    from edgevis.export.onnx_export import export_stage

    export_stage(tiny, "frame", tmp_path / "frame.onnx", "portable")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "frame.onnx")).graph.node}
    assert "AveragePool" in ops and "GlobalAveragePool" not in ops
