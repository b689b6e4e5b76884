"""QFA distillation: copy-paste, query filtering + association by ground-truth id, and the loss falls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgevis.models.ookd import ookd
from edgevis.models.seqformer import seqformer
from edgevis.train import qfa
from edgevis.train.ookd import Target, frame_target, sample_windows, train_student, training_clips

HW = (128, 224)


@pytest.fixture(scope="module")
def clips():
    return training_clips(6, 0, HW, 6, rare_fraction=0.3)


def test_class_balanced_paste(clips):
    paste = qfa.ClassBalancedPaste(clips, prob=1.0)
    counts = {c: len(v) for c, v in paste.instances.items()}
    rare, common = min(counts, key=counts.get), max(counts, key=counts.get)
    p = dict(zip(paste.classes, paste.class_prob))
    assert p[rare] > p[common] and np.isclose(sum(p.values()), 1.0)  # inverse frequency
    rng = np.random.default_rng(0)
    src = clips[0]
    f, m, c, ids = paste(src.frames[:5], src.masks[:5], list(src.classes), list(src.track_ids), rng)
    assert m.shape[1] == src.num_objects + 1 and len(c) == len(ids) == m.shape[1]
    assert ids[-1] not in src.track_ids
    assert not (m[:, :-1] & m[:, -1:]).any()  # pasted on top: the others lose the covered pixels
    assert (f[m[:, -1]] != src.frames[:5][m[:, -1]]).any()
    drawn = [paste(src.frames[:5], src.masks[:5], list(src.classes), list(src.track_ids), rng)[2][-1]
             for _ in range(200)]
    assert drawn.count(rare) > drawn.count(common)  # rare classes pasted more often


def test_clip_target_aligns_tracks_over_frames():
    m = np.zeros((2, 3, 32, 32), bool)  # (T, N, H, W)
    m[0, 0, :8, :8] = True
    m[1, 1, 8:16, 8:16] = True
    frames = [frame_target(m[t], [2, 3, 1], [7, 8, 9]) for t in range(2)]
    ids, cls, masks, boxes = qfa.clip_target(frames, 2)
    assert ids.tolist() == [7, 8] and cls.tolist() == [1, 2]  # track 9 never visible: filtered
    assert masks.shape == (2, 2 * 64) and boxes.shape == (2, 8)
    assert masks[0, :64].sum() == 4 and masks[0, 64:].sum() == 0 and masks[1, 64:].sum() == 4


def test_pairs_are_associated_through_ground_truth_ids(monkeypatch):
    """Only queries matched on both sides pair up, and they pair through the shared track id."""
    torch.manual_seed(0)
    teacher = seqformer("seqformer_tiny", tiny=True)
    loss = qfa.QfaLoss(teacher, embed_dim=32, lam=1.0, kl_weight=1.0, tau=2.0)
    q_t, q_s, d_t = teacher.cfg.num_queries, 20, teacher.cfg.d_model
    t_out = {"logits": torch.randn(1, q_t, 42), "queries": torch.randn(1, q_t, d_t)}
    monkeypatch.setattr(qfa, "teacher_outputs", lambda net, frames: t_out)
    monkeypatch.setattr(qfa, "teacher_matches", lambda out, targets, window: [{11: 4, 12: 9}])  # id 13: unmatched
    s_out = {"embeds": torch.randn(2, q_s, 32), "logits": torch.randn(2, q_s, 42)}
    tgt = Target(torch.zeros(3, dtype=torch.long), torch.tensor([11, 12, 13]), torch.zeros(3, 4, 4), torch.zeros(3, 4))
    matches = [(torch.tensor([2, 5, 7]), torch.tensor([0, 1, 2])),  # frame 0: queries 2, 5, 7 -> ids 11, 12, 13
               (torch.tensor([3]), torch.tensor([1]))]  # frame 1: query 3 -> id 12
    record = {"out": s_out, "targets": [tgt, tgt], "matches": matches}
    got = loss({"frames": torch.zeros(1, 5, 2, 2, 3), "targets": [[tgt] * 5]}, record)
    si, sq, tq = [0, 0, 1], [2, 5, 3], [4, 9, 9]
    want = (1 - F.cosine_similarity(s_out["embeds"][si, sq], t_out["queries"][0, tq] @ loss.proj, dim=-1)).mean()
    kl = F.kl_div(F.log_softmax(s_out["logits"][si, sq] / 2, -1), F.softmax(t_out["logits"][0, tq] / 2, -1),
                  reduction="batchmean") * 4
    assert torch.allclose(got["qfa_embed"], want) and torch.allclose(got["qfa_kl"], kl)
    assert loss.pairs_seen == 3


def test_distillation_loss_falls_on_tiny_variants(clips):
    torch.manual_seed(0)
    teacher = seqformer("seqformer_tiny", tiny=True)
    for p in teacher.net.parameters():
        p.requires_grad_(False)
    student = ookd("ookd_tiny", tiny=True)
    loss = qfa.QfaLoss(teacher, student.cfg.embed_dim)
    log: list[dict[str, float]] = []
    train_student(student, clips, steps=24, batch=2, lr=2e-3, seed=0, window=teacher.cfg.window, max_gap=3,
                  max_minutes=5.0, augment=qfa.ClassBalancedPaste(clips, 0.5), extra=loss, log=log, log_every=1000)
    distill = [r["qfa_embed"] + r["qfa_kl"] for r in log]
    assert len(distill) == 24 and loss.pairs_seen > 0
    assert np.mean(distill[-6:]) < 0.8 * np.mean(distill[:6])


def test_sample_windows_pairs_within_window(clips):
    s = sample_windows(clips, np.random.default_rng(1), 3, 5, 3)
    assert s["frames"].shape == (3, 5, *HW, 3) and s["frames"].dtype == torch.uint8
    a, b = s["pairs"][:, 0], s["pairs"][:, 1]
    assert ((b - a >= 1) & (b - a <= 3) & (b < 5)).all()
    assert all(len(t) == 5 for t in s["targets"])


def test_id_switches_counted_against_ground_truth_ids():
    from edgevis.data.synthetic import make_clip
    from edgevis.data.ytvis import tracks_to_predictions
    from edgevis.runtime.results import FrameResult
    from edgevis.train.ookd import id_switches

    clip = make_clip(2, num_frames=5, height=64, width=96, num_objects=2)
    ids = [[1, 2], [1, 2], [2, 1], [2, 1], [3, 1]]  # swap at frame 2, then object 0 changes again at frame 4
    res = [FrameResult(0, t, clip.masks[t], np.asarray(ids[t]), np.asarray(clip.classes), np.ones(2, np.float32))
           for t in range(5)]
    assert id_switches(clip, res) == 3
    preds = tracks_to_predictions(1, res, (64, 96))
    assert sorted(len(p["masks"]) for p in preds) == [5, 5, 5] and len(preds) == 3
