"""SeqFormer: structure faithful to SEEDS.md, stage shapes, dynamic head, export parity, checkpoints."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgevis.errors import EdgevisError
from edgevis.models.seqformer import SEQFORMER_R50, SeqFormer, seqformer


@pytest.fixture(scope="module")
def tiny() -> SeqFormer:
    torch.manual_seed(0)
    return seqformer("seqformer_tiny", tiny=True)


def run_stage(model, stage, feeds):
    spec = model.iospec(stage)
    with torch.no_grad():
        out = model.stage(stage)(*[feeds[n] for n in spec.input_names])
    return dict(zip(spec.output_names, out))


def test_full_size_config_matches_seeds():
    c = SEQFORMER_R50
    assert c.shapes == ((45, 80), (23, 40), (12, 20), (6, 10)) and c.tokens == 4820
    assert c.dynamic_params == 169 and c.mask_hw == (90, 160)
    assert (c.enc_layers, c.dec_layers, c.num_queries, c.num_classes, c.d_model, c.d_ffn) == (6, 6, 300, 42, 256, 1024)


def test_full_size_state_dict_has_published_keys_and_shapes():
    sd = seqformer("seqformer_r50").net.state_dict()
    expect = {
        "detr.backbone.0.body.conv1.weight": (64, 3, 7, 7),
        "detr.backbone.0.body.layer3.5.conv3.weight": (1024, 256, 1, 1),
        "detr.backbone.0.body.layer4.2.bn3.running_var": (2048,),
        "detr.backbone.0.body.layer4.0.downsample.1.running_mean": (2048,),
        "detr.input_proj.3.0.weight": (256, 2048, 3, 3),
        "detr.input_proj.2.1.weight": (256,),
        "detr.query_embed.weight": (300, 512),
        "detr.class_embed.5.weight": (42, 256),
        "detr.bbox_embed.5.layers.2.weight": (4, 256),
        "detr.transformer.level_embed": (4, 256),
        "detr.transformer.reference_points.weight": (2, 256),
        "detr.transformer.encoder.layers.5.self_attn.sampling_offsets.weight": (256, 256),
        "detr.transformer.encoder.layers.5.linear1.weight": (1024, 256),
        "detr.transformer.decoder.layers.5.cross_attn.output_proj_box.weight": (256, 256),
        "detr.transformer.decoder.layers.5.self_attn_box.in_proj_weight": (768, 256),
        "detr.transformer.decoder.layers.5.time_attention_weights.weight": (1, 256),
        "detr.transformer.decoder.layers.0.norm3_box.weight": (256,),
        "controller.layers.2.weight": (169, 256),
        "mask_head.lay2.weight": (8, 64, 3, 3),
        "mask_head.dcn.weight": (256, 256, 3, 3),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any("num_batches_tracked" in k or k.startswith("detr.transformer.decoder.bbox_embed") for k in sd)
    assert sum(1 for k in sd if k.startswith("detr.backbone.0.body.") and k.endswith("conv3.weight")) == 16  # R50


def test_stage_shapes_and_topk(tiny):
    feeds = tiny.iospec("frame").example_inputs()
    fr = run_stage(tiny, "frame", feeds)
    assert fr["memory"].shape == (1, tiny.cfg.tokens, 64) and fr["mask_feats"].shape == (1, 2, 16, 28)
    clip = run_stage(tiny, "clip", tiny.iospec("clip").example_inputs())
    k, t = tiny.cfg.top_k, tiny.cfg.window
    assert clip["masks"].shape == (1, k, t, 32, 56) and clip["boxes"].shape == (1, k, t, 4)
    assert clip["labels"].dtype == torch.int64 and int(clip["labels"].max()) < 42
    torch.testing.assert_close(clip["scores"], clip["logits"].sigmoid())
    assert torch.all(clip["scores"][:, :-1] >= clip["scores"][:, 1:])


def test_clip_forward_equals_stages(tiny):
    imgs = torch.randint(0, 256, (1, 3, 128, 224, 3), dtype=torch.uint8)
    with torch.no_grad():
        whole = tiny.net(imgs)
        per = [tiny.net.frame(imgs[:, i]) for i in range(3)]
        staged = tiny.net.clip(torch.stack([p[0] for p in per], 1), torch.stack([p[1] for p in per], 1))
    for a, b in zip(whole, staged):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_decoder_pools_over_frames(tiny):
    feeds = tiny.iospec("clip").example_inputs()
    base = run_stage(tiny, "clip", feeds)
    feeds["memory"][:, 2] = torch.randn_like(feeds["memory"][:, 2])
    changed = run_stage(tiny, "clip", feeds)
    assert not torch.allclose(base["embed"], changed["embed"])


def _aligned_bilinear(t, f):  # CondInst's formulation, written out for the comparison
    h, w = t.shape[2:]
    t = F.pad(t, (0, 1, 0, 1), mode="replicate")
    t = F.interpolate(t, size=(f * h + 1, f * w + 1), mode="bilinear", align_corners=True)
    return F.pad(t, (f // 2, 0, f // 2, 0), mode="replicate")[:, :, : f * h, : f * w]


def test_dynamic_head_matmul_equals_grouped_conv(tiny):
    """The batched-matmul head equals the published grouped 1x1 conv form (weights as conv kernels)."""
    net = tiny.net
    torch.manual_seed(1)
    k, cm, h, w = 3, 2, 16, 28
    params = torch.randn(1, k, net.cfg.dynamic_params) * 0.3
    ref = torch.rand(1, 1, k, 2)
    feats = torch.randn(1, 1, cm, h, w)
    got = net.dynamic_masks(params, ref, feats)[0, :, 0]  # (K, 2h, 2w)
    ys, xs = torch.meshgrid(torch.arange(h) * 8.0 + 4, torch.arange(w) * 8.0 + 4, indexing="ij")
    rel = ref[0, 0, :, :, None, None] * torch.tensor([224.0, 128.0])[None, :, None, None] - torch.stack([xs, ys])[None]
    x = torch.cat([rel, feats[0, 0][None].expand(k, -1, -1, -1)], 1).reshape(1, k * (cm + 2), h, w)
    sizes = [(cm + 2) * 8, 64, 8, 8, 8, 1]
    w0, w1, w2, b0, b1, b2 = params[0].split(sizes, dim=1)
    x = F.relu(F.conv2d(x, w0.reshape(k * 8, cm + 2, 1, 1), b0.reshape(-1), groups=k))
    x = F.relu(F.conv2d(x, w1.reshape(k * 8, 8, 1, 1), b1.reshape(-1), groups=k))
    x = F.conv2d(x, w2.reshape(k, 8, 1, 1), b2.reshape(-1), groups=k)
    want = _aligned_bilinear(x.reshape(k, 1, h, w), 2)[:, 0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("flavor", ["portable", "trt"])
def test_export_parity(tiny, tmp_path, flavor):
    from edgevis.export.onnx_export import export_stage
    from edgevis.runtime.backends import OrtBackend, TorchBackend

    for stage in tiny.stages:
        report = export_stage(tiny, stage, tmp_path / f"{stage}.onnx", flavor)
        if flavor == "trt":
            assert report.plugin_nodes.get("MSDeformAttn", 0) == 2  # 2 encoder or 2 decoder layers
    spec = tiny.iospec("clip")
    feeds = spec.example_inputs(seed=4)
    ref = TorchBackend(tiny.stage("clip"), spec)(feeds)
    got = OrtBackend(tmp_path / "clip.onnx")(feeds)
    assert float((ref["logits"] - got["logits"]).abs().max()) <= 1e-4
    assert torch.equal(ref["labels"], got["labels"])
    agree = ((ref["masks"].sigmoid() > 0.5) == (got["masks"].sigmoid() > 0.5)).float().mean()
    assert float(agree) >= 0.999


# ---- checkpoints ----------------------------------------------------------------------------------
def perturbed(model: SeqFormer) -> SeqFormer:
    """The model with every float tensor shifted (builds are seeded, so a fresh build would match anyway)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for v in model.net.state_dict().values():
            if v.is_floating_point():
                v.add_(torch.randn(v.shape, generator=g) * 0.01)
    return model


def official_state_dict(model: SeqFormer) -> dict[str, torch.Tensor]:
    """A synthetic checkpoint in the published layout: our keys + the duplicated decoder bbox_embed keys
    + the unused encoder output_proj_box layers SeqFormer's MSDeformAttn also creates."""
    sd = {k: v.clone() for k, v in model.net.state_dict().items()}
    for k in list(sd):
        if k.startswith("detr.bbox_embed."):
            sd["detr.transformer.decoder.bbox_embed." + k[len("detr.bbox_embed."):]] = sd[k].clone()
    d = model.cfg.d_model
    for i in range(model.cfg.enc_layers):
        sd[f"detr.transformer.encoder.layers.{i}.self_attn.output_proj_box.weight"] = torch.zeros(d, d)
        sd[f"detr.transformer.encoder.layers.{i}.self_attn.output_proj_box.bias"] = torch.zeros(d)
    return sd


def test_official_checkpoint_loads(tiny, tmp_path):
    src = perturbed(seqformer("seqformer_tiny", tiny=True))
    path = tmp_path / "seqformer_official.pth"
    torch.save({"model": official_state_dict(src), "optimizer": {}, "epoch": 11, "args": argparse.Namespace(lr=2e-4)}, path)
    dst = seqformer("seqformer_tiny", tiny=True)
    dst.load_weights(path)
    for k, v in src.net.state_dict().items():
        assert torch.equal(v, dst.net.state_dict()[k]), k


def test_edgevis_checkpoint_roundtrip(tiny, tmp_path):
    from edgevis.models.checkpoints import save_checkpoint

    src = perturbed(seqformer("seqformer_tiny", tiny=True))
    path = save_checkpoint(src, tmp_path / "ck.pt")
    assert not torch.equal(src.net.controller.layers[0].weight, tiny.net.controller.layers[0].weight)
    tiny_copy = seqformer("seqformer_tiny", tiny=True)
    tiny_copy.load_weights(path)
    for k, v in src.net.state_dict().items():
        assert torch.equal(v, tiny_copy.net.state_dict()[k]), k


def test_checkpoint_unknown_and_missing_keys_listed(tiny, tmp_path):
    sd = official_state_dict(tiny)
    sd["detr.something_new.weight"] = torch.zeros(3)
    del sd["mask_head.lay1.weight"]
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(EdgevisError) as e:
        seqformer("seqformer_tiny", tiny=True).load_weights(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "missing keys: mask_head.lay1.weight" in msg and "unexpected keys: detr.something_new.weight" in msg


def test_checkpoint_duplicate_bbox_embed_must_match(tiny, tmp_path):
    sd = official_state_dict(tiny)
    sd["detr.transformer.decoder.bbox_embed.0.layers.0.weight"] += 1.0
    torch.save({"model": sd}, tmp_path / "dup.pth")
    with pytest.raises(EdgevisError, match="should equal 'detr.bbox_embed.0.layers.0.weight'"):
        seqformer("seqformer_tiny", tiny=True).load_weights(tmp_path / "dup.pth")


def test_checkpoint_wrong_size_and_truncated(tiny, tmp_path):
    torch.save({"model": official_state_dict(tiny)}, tmp_path / "tiny.pth")
    with pytest.raises(EdgevisError, match="shape mismatch"):
        seqformer("seqformer_tiny", tiny=True, d_model=96, n_heads=4).load_weights(tmp_path / "tiny.pth")
    raw = (tmp_path / "tiny.pth").read_bytes()
    (tmp_path / "trunc.pth").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(EdgevisError, match="cannot be read.*truncated"):
        tiny.load_weights(tmp_path / "trunc.pth")
    with pytest.raises(EdgevisError, match="does not exist"):
        tiny.load_weights(tmp_path / "nope.pth")


def test_checkpoint_of_other_model_named(tiny, tmp_path):
    torch.save({"model": "mobileinst_tiny", "state_dict": {"a": torch.zeros(1)}}, tmp_path / "m.pt")
    with pytest.raises(EdgevisError, match="holds weights of model 'mobileinst_tiny'.*--model mobileinst_tiny"):
        tiny.load_weights(tmp_path / "m.pt")


def test_letterbox_crop_for_odd_sources(tiny):
    """A source whose size is not a multiple of the stride is letterboxed in, masks come back at its size."""
    from edgevis.runtime.pipeline import open_backends
    from edgevis.runtime.runner import StreamRunner

    runner = StreamRunner(tiny.policy(), open_backends(tiny, "torch"))
    frame = np.random.default_rng(0).integers(0, 255, (101, 157, 3), dtype=np.uint8)
    res = runner.step([frame])[0]
    assert res.masks.shape == (tiny.cfg.top_k, 101, 157) and res.source_hw == (101, 157)
