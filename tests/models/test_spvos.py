"""SpVOS model: stage shapes, STCN checkpoint layout, masked top-k readout, sparse key encoder, export."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from edgevis.errors import EdgevisError
from edgevis.models.spvos import SpVOSModel, build_spvos


def run_stage(model: SpVOSModel, stage: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    spec = model.iospec(stage)
    with torch.no_grad():
        out = model.stage(stage)(*[feeds[n] for n in spec.input_names])
    out = out if isinstance(out, tuple) else (out,)
    return dict(zip(spec.output_names, out))


@pytest.fixture(scope="module")
def tiny() -> SpVOSModel:
    torch.manual_seed(0)
    return build_spvos("spvos_tiny", tiny=True)


@pytest.fixture(scope="module")
def tiny_dense(tiny: SpVOSModel) -> SpVOSModel:
    m = build_spvos("spvos_tiny", tiny=True, sparse=False)
    m.load_state_dict(tiny.net.state_dict())
    return m


@pytest.mark.parametrize("sparse", [True, False])
def test_stage_outputs_match_iospec(tiny: SpVOSModel, tiny_dense: SpVOSModel, sparse: bool) -> None:
    model = tiny if sparse else tiny_dense
    for stage in model.stages:
        spec = model.iospec(stage)
        out = run_stage(model, stage, spec.example_inputs({"B": 2}))
        for t in spec.output_specs:
            assert tuple(out[t.name].shape) == t.resolve({"B": 2}), (stage, t.name)
            assert torch.isfinite(out[t.name]).all(), (stage, t.name)
    assert len(model.iospec("encode_key").states) == (2 * len(model.net.sparse_layers) if sparse else 0)


def test_probs_are_soft_aggregated_and_zero_for_invalid_objects(tiny: SpVOSModel) -> None:
    feeds = tiny.iospec("segment").example_inputs({"B": 1})
    feeds["mem_valid"] = torch.tensor([[1.0, 1.0, 0, 0, 0, 0, 0, 0]])
    feeds["obj_valid"] = torch.tensor([[1.0, 1.0, 0.0]])
    p = run_stage(tiny, "segment", feeds)["probs"]  # (1, K, H, W)
    assert (p[:, 2] == 0).all()
    assert (p.sum(1) <= 1 + 1e-5).all() and (p >= 0).all()


def test_invalid_memory_slots_are_ignored(tiny: SpVOSModel) -> None:
    spec = tiny.iospec("segment")
    feeds = spec.example_inputs({"B": 1}, seed=3)
    feeds["mem_valid"] = torch.tensor([[1.0, 1.0, 1.0, 0, 0, 0, 0, 0]])
    feeds["obj_valid"] = torch.ones(1, 3)
    a = run_stage(tiny, "segment", feeds)["probs"]
    feeds["mem_keys"][:, 3:] = 100.0 * torch.randn_like(feeds["mem_keys"][:, 3:])  # garbage in invalid slots
    feeds["mem_values"][:, 3:] = torch.randn_like(feeds["mem_values"][:, 3:])
    b = run_stage(tiny, "segment", feeds)["probs"]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_topk_readout_equals_stcn_softmax_w_top(tiny: SpVOSModel) -> None:
    """The threshold form (softmax over values >= the k-th) equals top-k + scatter (STCN's softmax_w_top)."""
    net = tiny.net
    captured = {}
    torch.manual_seed(1)
    b, t, ck, h, w = 1, 8, 16, 6, 10
    mk, qk = torch.randn(b, t, ck, h, w), torch.randn(b, ck, h, w)
    mv = torch.randn(b, t, 3, 48, h, w)
    valid = torch.tensor([[1.0, 1, 1, 0, 1, 0, 0, 0]])
    handle = net.decoder.compress.register_forward_pre_hook(lambda mod, args: captured.setdefault("x", args[0]))
    try:
        with torch.no_grad():
            net.segment_logits(qk, torch.zeros(b, 48, h, w), torch.zeros(b, 64, 12, 20), torch.zeros(b, 32, 24, 40),
                               mk, mv, valid, torch.ones(b, 3))
    finally:
        handle.remove()
    got = captured["x"][:, :48]  # (B*K, Cv, h, w) memory readout part
    # reference: STCN's affinity, top-k over valid memory positions, softmax, scatter, bmm
    m = mk.transpose(1, 2).reshape(b, ck, -1)
    q = qk.flatten(2)
    aff = (2 * m.transpose(1, 2) @ q - m.pow(2).sum(1).unsqueeze(2)) / math.sqrt(ck)
    keep = valid[0].repeat_interleave(h * w).bool()
    aff = aff[:, keep]
    vals, idx = torch.topk(aff, 20, dim=1)
    wts = torch.zeros_like(aff).scatter_(1, idx, torch.softmax(vals, 1))
    mvv = mv.permute(0, 2, 3, 1, 4, 5).reshape(b, 3 * 48, -1)[:, :, keep]
    want = (mvv @ wts).reshape(3, 48, h, w)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_sparse_dense_first_frame_then_reuse_on_static_frame(tiny: SpVOSModel, tiny_dense: SpVOSModel) -> None:
    spec = tiny.iospec("encode_key")
    feeds = spec.example_inputs({"B": 1}, seed=5)  # caches: x0 = -inf -> dense frame
    first = run_stage(tiny, "encode_key", feeds)
    dense = run_stage(tiny_dense, "encode_key", {"image": feeds["image"]})
    for n in ("key", "query_value", "f16", "f8", "f4"):
        torch.testing.assert_close(first[n], dense[n], rtol=1e-5, atol=1e-5)
    again = {"image": feeds["image"], **{s.name_in: first[s.name_out] for s in spec.states}}
    second = run_stage(tiny, "encode_key", again)
    assert all((d == 0).all() for d in tiny.net.last_decisions)  # nothing changed: every block REUSEd
    torch.testing.assert_close(second["key"], first["key"])


def test_sparse_settings_are_configurable(tiny: SpVOSModel) -> None:
    m = build_spvos("spvos_tiny", tiny=True, block=8, tau_t=0.1, tau_s=0.02)
    n = len(m.net.sparse_layers)
    assert m.net.tau_t == (0.1,) * n and m.cfg.block == 8
    with pytest.raises(EdgevisError, match="give one or"):
        build_spvos("spvos_tiny", tiny=True, tau_t=(0.1, 0.2))
    names = [name for name, _ in tiny.net.sparse_layers]
    assert names[0] == "key_encoder.conv1" and "key_comp" in names and "key_proj.key_proj" in names


# ---- STCN checkpoint layout ----------------------------------------------------------------------
def stcn_layout() -> dict[str, tuple[int, ...]]:
    """STCN's published checkpoint (stcn.pth): names and shapes, written out from the architecture."""
    sd: dict[str, tuple[int, ...]] = {}

    def bn(p: str, c: int) -> None:
        for n in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{p}.{n}"] = (c,)
        sd[f"{p}.num_batches_tracked"] = ()

    def conv(p: str, cout: int, cin: int, k: int, bias: bool = True) -> None:
        sd[f"{p}.weight"] = (cout, cin, k, k)
        if bias:
            sd[f"{p}.bias"] = (cout,)

    conv("key_encoder.conv1", 64, 3, 7, False)
    bn("key_encoder.bn1", 64)
    cin = 64
    for layer, planes, blocks in (("res2", 64, 3), ("layer2", 128, 4), ("layer3", 256, 6)):
        for i in range(blocks):
            p = f"key_encoder.{layer}.{i}"
            conv(f"{p}.conv1", planes, cin, 1, False)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3, False)
            bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1, False)
            bn(f"{p}.bn3", planes * 4)
            if i == 0:
                conv(f"{p}.downsample.0", planes * 4, cin, 1, False)
                bn(f"{p}.downsample.1", planes * 4)
            cin = planes * 4
    conv("value_encoder.conv1", 64, 5, 7, False)
    bn("value_encoder.bn1", 64)
    cin = 64
    for layer, planes in (("layer1", 64), ("layer2", 128), ("layer3", 256)):
        for i in range(2):
            p = f"value_encoder.{layer}.{i}"
            conv(f"{p}.conv1", planes, cin, 3, False)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3, False)
            bn(f"{p}.bn2", planes)
            if i == 0 and cin != planes:
                conv(f"{p}.downsample.0", planes, cin, 1, False)
                bn(f"{p}.downsample.1", planes)
            cin = planes

    def resblock(p: str, cin: int, cout: int) -> None:
        if cin != cout:
            conv(f"{p}.downsample", cout, cin, 3)
        conv(f"{p}.conv1", cout, cin, 3)
        conv(f"{p}.conv2", cout, cout, 3)

    resblock("value_encoder.fuser.block1", 1024 + 256, 512)
    sd["value_encoder.fuser.attention.ChannelGate.mlp.1.weight"] = (32, 512)
    sd["value_encoder.fuser.attention.ChannelGate.mlp.1.bias"] = (32,)
    sd["value_encoder.fuser.attention.ChannelGate.mlp.3.weight"] = (512, 32)
    sd["value_encoder.fuser.attention.ChannelGate.mlp.3.bias"] = (512,)
    conv("value_encoder.fuser.attention.SpatialGate.spatial.conv", 1, 2, 7)
    resblock("value_encoder.fuser.block2", 512, 512)
    conv("key_proj.key_proj", 64, 1024, 3)
    conv("key_comp", 512, 1024, 3)
    resblock("decoder.compress", 1024, 512)
    conv("decoder.up_16_8.skip_conv", 512, 512, 3)
    resblock("decoder.up_16_8.out_conv", 512, 256)
    conv("decoder.up_8_4.skip_conv", 256, 256, 3)
    resblock("decoder.up_8_4.out_conv", 256, 256)
    conv("decoder.pred", 1, 256, 3)
    return sd


@pytest.mark.parametrize("with_bn_counters", [True, False])
def test_loads_stcn_checkpoint_layout(tmp_path: Path, with_bn_counters: bool) -> None:
    layout = stcn_layout()
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.zeros(s, dtype=torch.long) if k.endswith("num_batches_tracked") else torch.rand(s, generator=g))
          for k, s in layout.items() if with_bn_counters or not k.endswith("num_batches_tracked")}
    path = tmp_path / "stcn.pth"
    torch.save(sd, path)  # STCN releases a bare state dict
    model = SpVOSModel("spvos")
    assert set(model.net.state_dict()) == set(layout)  # attribute names give exactly the official keys
    model.load_weights(path)
    own = model.net.state_dict()
    for k in ("key_proj.key_proj.weight", "key_encoder.layer3.5.bn3.running_var", "decoder.pred.bias",
              "value_encoder.fuser.attention.ChannelGate.mlp.3.weight"):
        torch.testing.assert_close(own[k], sd[k])


def test_checkpoint_errors_are_clear(tmp_path: Path) -> None:
    sd = {k: torch.zeros(s) for k, s in stcn_layout().items()}
    sd["key_comp.weight"] = torch.zeros(256, 1024, 3, 3)
    del sd["decoder.pred.bias"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(EdgevisError, match=r"missing keys: decoder.pred.bias.*shape mismatch: key_comp.weight"):
        SpVOSModel("spvos").load_weights(tmp_path / "bad.pth")


# ---- export ----------------------------------------------------------------------------------------
def test_export_encode_key_trt_has_plugin_nodes(tmp_path: Path, tiny: SpVOSModel) -> None:
    from edgevis.export.onnx_export import export_stage

    rep = export_stage(tiny, "encode_key", tmp_path / "k.onnx", "trt")
    assert rep.plugin_nodes == {"TripleSparseConv": len(tiny.net.sparse_layers)}
    assert max(rep.max_abs_error.values()) <= 2e-3
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "k.onnx")).graph.node}
    assert "MaxPool" in ops  # the graph keeps the plain stem pool (the strided form is eager-only)


@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["portable", "trt"])
def test_export_all_stages_onnxruntime_parity(tmp_path: Path, tiny: SpVOSModel, flavor: str) -> None:
    from edgevis.export.onnx_export import export_stage

    for stage in tiny.stages:
        rep = export_stage(tiny, stage, tmp_path / f"{stage}.onnx", flavor)
        assert max(rep.max_abs_error.values()) <= 2e-3, (stage, rep.max_abs_error)
