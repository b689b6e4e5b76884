"""OOKD student: config, frame stage (TopK in graph), consistency with the training view, export parity."""

from __future__ import annotations

import pytest
import torch

from edgevis.models.ookd import OOKD_FULL, OOKD_TINY, Ookd, ookd
from edgevis.models.zoo import MODELS, build_model


@pytest.fixture(scope="module")
def tiny() -> Ookd:
    torch.manual_seed(0)
    return ookd("ookd_tiny", tiny=True)


def run_frame(model: Ookd, image: torch.Tensor) -> dict[str, torch.Tensor]:
    spec = model.iospec("frame")
    with torch.no_grad():
        return dict(zip(spec.output_names, model.stage("frame")(image)))


def test_registered_in_zoo():
    for name in ("ookd", "ookd_tiny"):
        assert MODELS[name].family == "ookd" and "ookd" in name
    assert MODELS["ookd_tiny"].tiny and not MODELS["ookd"].tiny
    assert build_model("ookd_tiny").stages == ("frame",)


def test_configs():
    assert OOKD_FULL.shapes == ((45, 80), (23, 40), (12, 20), (6, 10)) and OOKD_FULL.mask_hw == (90, 160)
    assert (OOKD_FULL.height, OOKD_FULL.width, OOKD_FULL.d_model, OOKD_FULL.num_classes) == (360, 640, 256, 42)
    assert OOKD_FULL.enc_layers < 6 and OOKD_FULL.num_queries < 300  # sized down from SeqFormer
    assert (OOKD_TINY.height, OOKD_TINY.width, OOKD_TINY.d_model, OOKD_TINY.top_k) == (128, 224, 32, 10)
    assert OOKD_TINY.dynamic_params == (8 + 2) * 8 + 8 + 64 + 8 + 8 + 1


def test_state_dict_layout(tiny):
    sd = tiny.net.state_dict()
    for key in ("backbone.body.layer4.0.conv3.weight", "input_proj.3.0.weight", "level_embed", "query_embed.weight",
                "encoder.layers.0.self_attn.sampling_offsets.weight", "decoder.layers.1.cross_attn.value_proj.weight",
                "decoder.layers.1.self_attn.in_proj_weight", "decoder.layers.1.norm3.weight", "class_embed.weight",
                "bbox_embed.1.layers.2.weight", "embed_head.layers.1.weight", "controller.layers.2.weight",
                "mask_branch.out.weight"):
        assert key in sd, key
    assert sd["query_embed.weight"].shape == (20, 64) and sd["class_embed.weight"].shape == (42, 32)
    assert sd["controller.layers.2.weight"].shape == (OOKD_TINY.dynamic_params, 32)


def test_frame_stage_outputs(tiny):
    spec = tiny.iospec("frame")
    image = spec.example_inputs({"B": 2})["image"]
    out = run_frame(tiny, image)
    k = OOKD_TINY.top_k
    for t in spec.outputs:
        assert tuple(out[t.name].shape) == t.resolve({"B": 2}), t.name
        assert str(out[t.name].dtype).endswith(t.dtype), t.name
    assert (out["logits"][:, :-1] >= out["logits"][:, 1:]).all()  # TopK sorted, best first
    assert torch.allclose(out["scores"], out["logits"].sigmoid())
    assert ((out["labels"] >= 0) & (out["labels"] < OOKD_TINY.num_classes)).all()
    assert ((out["boxes"] >= 0) & (out["boxes"] <= 1)).all()
    assert out["masks"].shape[1:] == (k, 32, 56)


def test_stage_matches_training_view_and_batch_items(tiny):
    spec = tiny.iospec("frame")
    image = spec.example_inputs({"B": 2}, seed=3)["image"]
    out = run_frame(tiny, image)
    with torch.no_grad():
        full = tiny.net.all_queries(image)
    best, lab = full["logits"].max(-1)
    top, idx = best.topk(OOKD_TINY.top_k, dim=1)
    assert torch.equal(out["labels"], torch.gather(lab, 1, idx))
    assert torch.allclose(out["logits"], top)
    sel = torch.stack([full["masks"][b, idx[b]] for b in range(2)])
    assert torch.allclose(out["masks"], sel, atol=1e-5)
    assert torch.allclose(out["embeds"], torch.stack([full["embeds"][b, idx[b]] for b in range(2)]), atol=1e-6)
    one = run_frame(tiny, image[1:])  # each stream independent of the other in the batch
    for name in spec.output_names:
        assert torch.allclose(one[name][0].float(), out[name][1].float(), atol=1e-5), name


@pytest.mark.parametrize("flavor", ["portable", pytest.param("trt", marks=pytest.mark.slow)])
def test_export_parity(tiny, tmp_path, flavor):
    from edgevis.export.onnx_export import export_stage

    rep = export_stage(tiny, "frame", tmp_path / f"frame.{flavor}.onnx", flavor)
    assert rep.max_abs_error["logits"] <= 1e-4 and rep.max_abs_error["labels"] == 0.0
    assert rep.max_abs_error["masks"] <= 1e-3
    assert (rep.plugin_nodes.get("MSDeformAttn", 0) == OOKD_TINY.enc_layers + OOKD_TINY.dec_layers) == (flavor == "trt")
