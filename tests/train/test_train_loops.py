"""The budgeted training loops run on tiny variants: steps are taken, weights move, losses are finite."""

from __future__ import annotations

import math

import torch

from edgevis.models.seqformer import seqformer
from edgevis.train import mobileinst, qfa
from edgevis.train.ookd import training_clips


def test_teacher_training_takes_its_steps_and_freezes_the_teacher():
    torch.manual_seed(0)
    teacher = seqformer("seqformer_tiny", tiny=True)
    before = [p.detach().clone() for p in teacher.net.parameters()]
    clips = training_clips(3, 0, (teacher.cfg.height, teacher.cfg.width), teacher.cfg.window + 1, rare_fraction=0.0)
    meta = qfa.train_teacher(teacher, clips, steps=3, batch=1, lr=1e-3, seed=0, max_minutes=5.0)
    assert meta["steps"] == 3 and math.isfinite(meta["loss"]) and meta["loss"] > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, teacher.net.parameters()))
    assert not any(p.requires_grad for p in teacher.net.parameters()) and not teacher.net.training


def test_mobileinst_training_takes_its_steps():
    torch.manual_seed(0)
    model, meta = mobileinst.train("mobileinst_tiny", steps=2, batch=1, lr=1e-3, seed=0, clips=2, frames=4,
                                   max_gap=2, threads=torch.get_num_threads(), max_minutes=5.0)
    assert meta["steps"] == 2 and meta["planned_steps"] == 2
    assert meta["final_losses"] and all(math.isfinite(v) for v in meta["final_losses"].values())
    assert not model.net.training
