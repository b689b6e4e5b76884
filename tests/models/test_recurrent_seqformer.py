"""Recurrent SeqFormer: state specs, shared decoder keys, streaming == clip, MACs vs the attention encoder, export."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edgevis.errors import EdgevisError
from edgevis.models.checkpoints import load_shared
from edgevis.models.deformable import DeformableEncoder
from edgevis.models.recurrent_seqformer import RecurrentEncoder, RecurrentSeqFormer, recurrent_seqformer
from edgevis.models.seqformer import SEQFORMER_R50, seqformer


@pytest.fixture(scope="module")
def tiny() -> RecurrentSeqFormer:
    torch.manual_seed(0)
    return recurrent_seqformer("recurrent_seqformer_tiny", tiny=True)


def test_state_specs_are_the_four_levels(tiny):
    spec = tiny.iospec("frame")
    assert [s.name_in for s in spec.states] == ["h1", "h2", "h3", "h4"]
    assert [tuple(s.shape[2:]) for s in spec.states] == list(tiny.cfg.shapes)
    assert all(s.shape[1] == tiny.cfg.d_model and s.init == "zeros" and s.dtype == "float32" for s in spec.states)
    assert spec.output_names == ["memory", "mask_feats", "h1_out", "h2_out", "h3_out", "h4_out"]


def test_decoder_and_heads_share_seqformer_keys(tiny):
    teacher = seqformer("seqformer_tiny", tiny=True)
    t_sd, s_sd = teacher.net.state_dict(), tiny.net.state_dict()
    enc = "detr.transformer.encoder."
    t_rest = {k: v.shape for k, v in t_sd.items() if not k.startswith(enc) and k != "detr.transformer.level_embed"}
    s_rest = {k: v.shape for k, v in s_sd.items() if not k.startswith(enc)}
    assert t_rest == s_rest
    assert any(k.startswith("detr.transformer.decoder.layers.1.time_attention_weights") for k in s_rest)
    student = recurrent_seqformer("recurrent_seqformer_tiny", tiny=True)
    copied = load_shared(student.net, t_sd)
    assert set(copied) == set(s_rest)
    assert torch.equal(student.net.controller.layers[2].weight, teacher.net.controller.layers[2].weight)


def test_streaming_equals_clip_and_state_matters(tiny):
    net = tiny.net
    imgs = torch.randint(0, 256, (1, 4, 128, 224, 3), dtype=torch.uint8)
    with torch.no_grad():
        mem_clip, feats_clip, h_clip = net.frames(imgs)
        hidden = net.init_hidden(1)
        for t in range(4):
            memory, feats, *hidden = tiny.stage("frame")(imgs[:, t], *hidden)
        torch.testing.assert_close(memory, mem_clip[:, -1], rtol=0, atol=1e-6)
        for a, b in zip(hidden, h_clip):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        fresh = tiny.stage("frame")(imgs[:, 3], *net.init_hidden(1))[0]
    assert float((fresh - mem_clip[:, -1]).abs().max()) > 1e-3  # the carried state changes the output


def test_teacher_checkpoint_into_student_is_refused(tiny, tmp_path):
    teacher = seqformer("seqformer_tiny", tiny=True)
    torch.save({"model": teacher.net.state_dict()}, tmp_path / "official.pth")
    with pytest.raises(EdgevisError, match="attention encoder.*edgevis distill --model recurrent_seqformer_tiny"):
        tiny.load_weights(tmp_path / "official.pth")


def test_recurrent_encoder_macs_quarter_of_attention_encoder():
    """MACs at 360x640, d_model 256, counted by torch.utils.flop_counter (deformable sampling itself not counted)."""
    cfg = SEQFORMER_R50
    d, shapes = cfg.d_model, cfg.shapes
    with torch.device("meta"):
        att = DeformableEncoder(cfg.enc_layers, d, cfg.d_ffn, 4, cfg.n_heads, cfg.n_points, shapes)
        rec = RecurrentEncoder(cfg)
        src = torch.randn(1, cfg.tokens, d)
        pos = torch.randn(1, cfg.tokens, d)
        levels = [torch.randn(1, d, h, w) for h, w in shapes]
        hidden = [torch.randn(1, d, h, w) for h, w in shapes]
    with FlopCounterMode(display=False) as fa, torch.no_grad():
        att(src, pos)
    with FlopCounterMode(display=False) as fr, torch.no_grad():
        rec(levels, hidden)
    att_g, rec_g = fa.get_total_flops() / 2e9, fr.get_total_flops() / 2e9
    print(f"\nencoder GMACs at 360x640: attention (6 layers) {att_g:.2f}, recurrent {rec_g:.2f}, ratio {att_g / rec_g:.1f}x")
    assert att_g > 15 and rec_g <= att_g / 4


@pytest.mark.parametrize("flavor", ["portable", "trt"])
def test_frame_export_parity(tiny, tmp_path, flavor):
    from edgevis.export.onnx_export import export_stage

    report = export_stage(tiny, "frame", tmp_path / "frame.onnx", flavor)
    assert max(report.max_abs_error.values()) <= 1e-3
    if flavor == "trt":
        assert report.plugin_nodes == {"ConvGRUCell": 4}
    else:
        assert report.plugin_nodes == {}


@pytest.mark.parametrize("flavor", ["portable", "trt"])
def test_frame_export_keeps_the_stream_dim_dynamic(tiny, tmp_path, flavor):
    """The ConvGRU cells run their public path during export; their input checks must not pin "B"."""
    import onnx

    from edgevis.export.onnx_export import export_stage

    report = export_stage(tiny, "frame", tmp_path / "frame.onnx", flavor, parity=False)
    model = onnx.load(str(report.path))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    hidden = [n for n in dims if n.startswith("h")]
    assert len(hidden) == 4 and all(dims[n][0] == "B" for n in hidden), dims
    assert all(d[0] == "B" for d in dims.values()), dims
