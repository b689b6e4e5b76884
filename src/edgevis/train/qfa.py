"""`edgevis distill --model ookd_tiny --method qfa`: offline-to-online distillation with query filtering
and association (QFA), SEEDS.md section 3.

[our design] where the paper is silent:
- teacher: the offline SeqFormer of the same size (``--teacher``, default ``seqformer_tiny`` for
  ``ookd_tiny``), frozen; it sees the whole window of ``T`` frames (its ``window``), the student two
  frames of it. Weights from ``--teacher-weights``, or trained here first for ``--teacher-steps`` on
  the same clips (clip-level Hungarian matching, the losses of train/ookd.py over the T frames);
- query filtering: teacher queries are Hungarian-matched to the window's ground-truth tracks
  (clip-level cost), student queries to each frame's visible instances; unmatched queries on either
  side are dropped;
- association: a student query and the teacher query matched to the same ground-truth track id form
  a pair;
- loss: student task loss (train/ookd.py) ``+ lambda * mean(1 - cos(student embedding, P teacher
  query))`` ``+ kl_weight * tau^2 * mean KL(softmax(teacher logits / tau) || softmax(student / tau))``
  over the pairs. ``P`` is a fixed random semi-orthogonal map d_teacher -> embed_dim (a learned ``P``
  can collapse to one direction and make the term vacuous; ``--learn-projection`` allows it anyway);
- class-balanced copy-paste (:class:`ClassBalancedPaste`): with probability ``--copy-paste`` a
  window gets one instance of a class drawn with probability ~ 1 / (its track count) from another
  training clip, pasted on top over the T frames (occluded masks updated, a fresh track id).
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgevis.data.synthetic import SyntheticClip
from edgevis.errors import EdgevisError
from edgevis.models.checkpoints import save_checkpoint
from edgevis.train.ookd import (
    MIN_PIXELS,
    Target,
    add_common,
    hungarian,
    report_eval,
    sample_windows,
    set_losses,
    train_student,
    training_clips,
    weighted,
)
from edgevis.train.schedule import WarmupCosine

TEACHERS = {"ookd_tiny": "seqformer_tiny", "ookd": "seqformer_r50"}


class ClassBalancedPaste:
    """Paste one instance of a (probably rare) class from another clip into a window."""

    def __init__(self, clips: list[SyntheticClip], prob: float = 0.5) -> None:
        self.clips, self.prob = clips, prob
        self.instances: dict[int, list[tuple[int, int]]] = {}
        for ci, clip in enumerate(clips):
            for oi, c in enumerate(clip.classes):
                self.instances.setdefault(int(c), []).append((ci, oi))
        self.classes = sorted(self.instances)
        freq = np.array([len(self.instances[c]) for c in self.classes], np.float64)
        self.class_prob = (1.0 / freq) / (1.0 / freq).sum()

    def __call__(self, frames: np.ndarray, masks: np.ndarray, classes: list[int], ids: list[int],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
        if not self.classes or rng.random() >= self.prob:
            return frames, masks, classes, ids
        c = self.classes[int(rng.choice(len(self.classes), p=self.class_prob))]
        ci, oi = self.instances[c][int(rng.integers(len(self.instances[c])))]
        src = self.clips[ci]
        t = len(frames)
        if src.num_frames < t or src.frames.shape[1:3] != frames.shape[1:3]:
            return frames, masks, classes, ids
        t0 = int(rng.integers(0, src.num_frames - t + 1))
        m = src.masks[t0 : t0 + t, oi]  # (T, H, W)
        if m.reshape(t, -1).sum(1).max() < MIN_PIXELS:
            return frames, masks, classes, ids
        frames = frames.copy()
        frames[m] = src.frames[t0 : t0 + t][m]
        masks = np.concatenate([masks & ~m[:, None], m[:, None]], axis=1)  # pasted on top: (T, N+1, H, W)
        return frames, masks, [*classes, c], [*ids, max(ids, default=0) + 1000]


def clip_target(frames: list[Target], window: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-frame targets of a window -> track ids (N,), classes (N,), masks (N, T*P), boxes (N, T*4)
    (zeros on frames where a track is not visible)."""
    ids = sorted({int(i) for t in frames for i in t.ids})
    h, w = frames[0].masks.shape[-2:]
    masks = torch.zeros(len(ids), window, h * w)
    boxes = torch.zeros(len(ids), window, 4)
    cls = torch.zeros(len(ids), dtype=torch.long)
    for ti, t in enumerate(frames):
        for j, tid in enumerate(t.ids.tolist()):
            k = ids.index(tid)
            masks[k, ti], boxes[k, ti], cls[k] = t.masks[j].flatten(), t.boxes[j], t.cls[j]
    return torch.as_tensor(ids, dtype=torch.long), cls, masks.flatten(1), boxes.flatten(1)


def teacher_outputs(net: torch.nn.Module, frames: torch.Tensor) -> dict[str, torch.Tensor]:
    """SeqFormer over windows (B, T, H, W, 3): logits (B, Q, C), queries (B, Q, d), masks (B, Q, T*P),
    boxes (B, Q, T*4), every query."""
    b, t = frames.shape[:2]
    memory, feats = net.frame(frames.flatten(0, 1))
    logits, hs, ref, boxes = net.decode(memory.unflatten(0, (b, t)))
    masks = net.dynamic_masks(net.controller(hs), ref, feats.unflatten(0, (b, t)))  # (B, Q, T, h, w)
    return {"logits": logits, "queries": hs, "masks": masks.flatten(2), "boxes": boxes.transpose(1, 2).flatten(2)}


def teacher_matches(out: dict[str, torch.Tensor], targets: list[list[Target]], window: int) -> list[dict[int, int]]:
    """Per window: ground-truth track id -> matched teacher query."""
    result = []
    for b, frames in enumerate(targets):
        ids, cls, masks, boxes = clip_target(frames, window)
        rows, cols = hungarian(out["logits"][b].detach(), out["masks"][b].detach(), out["boxes"][b].detach(), cls,
                               masks, boxes)
        result.append({int(ids[c]): int(r) for r, c in zip(rows, cols)})
    return result


def train_teacher(teacher: Any, data: list[SyntheticClip], *, steps: int, batch: int, lr: float, seed: int,
                  max_minutes: float) -> dict[str, Any]:
    """Offline (clip-level) task training of the SeqFormer teacher on the same synthetic clips."""
    torch.manual_seed(seed)
    net = teacher.net.train()
    window = teacher.cfg.window
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed + 1)
    sched = WarmupCosine(opt, lr, steps, max_minutes, warm=20)
    done, last = 0, {}
    for step in range(steps):
        if not sched.begin(step):
            break
        sample = sample_windows(data, rng, batch, window, 1)
        out = teacher_outputs(net, sample["frames"])
        total, n_gt = 0, 0
        for b, frames in enumerate(sample["targets"]):
            ids, cls, masks, boxes = clip_target(frames, window)
            rows, cols = hungarian(out["logits"][b].detach(), out["masks"][b].detach(), out["boxes"][b].detach(),
                                   cls, masks, boxes)
            parts = set_losses(out["logits"][b], out["boxes"][b], out["masks"][b], cls, boxes, masks, rows, cols)
            total = total + weighted(parts)
            n_gt += len(ids)
        loss = total / max(1, n_gt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.1)
        opt.step()
        done = step + 1
        last = {"loss": float(loss.detach())}
        if done % 20 == 0:
            print(f"teacher step {done}/{steps} loss {last['loss']:.3f} ({sched.elapsed():.0f} s)", flush=True)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return {"steps": done, "minutes": sched.elapsed() / 60, **last}


class QfaLoss:
    """The distillation terms, added to the student's task losses by ``train_student(extra=...)``."""

    def __init__(self, teacher: Any, embed_dim: int, lam: float = 1.0, kl_weight: float = 1.0, tau: float = 2.0,
                 learn_projection: bool = False, seed: int = 0) -> None:
        self.teacher, self.lam, self.kl_weight, self.tau = teacher, lam, kl_weight, tau
        self.window = teacher.cfg.window
        d_t = teacher.cfg.d_model
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(max(d_t, embed_dim), min(d_t, embed_dim), generator=g))
        weight = q if d_t >= embed_dim else q.T  # (d_t, E) with orthonormal columns or rows
        self.proj = torch.nn.Parameter(weight.contiguous(), requires_grad=learn_projection)
        self.pairs_seen = 0

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [self.proj] if self.proj.requires_grad else []

    def __call__(self, sample: dict[str, Any], record: dict[str, Any]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            t_out = teacher_outputs(self.teacher.net, sample["frames"])
        t_match = teacher_matches(t_out, sample["targets"], self.window)
        b = sample["frames"].shape[0]
        s_out, tgts = record["out"], record["targets"]
        si, sq, tw, tq = [], [], [], []
        for i, (rows, cols) in enumerate(record["matches"]):  # student image i is a frame of window i % b
            w = i % b
            for r, c in zip(rows.tolist(), cols.tolist()):
                tid = int(tgts[i].ids[c])
                if tid in t_match[w]:  # filtered: both sides matched to this ground-truth track
                    si.append(i), sq.append(r), tw.append(w), tq.append(t_match[w][tid])
        self.pairs_seen += len(si)
        if not si:
            zero = s_out["embeds"].sum() * 0
            return {"qfa_embed": zero, "qfa_kl": zero}
        s_emb = s_out["embeds"][si, sq]  # (n, E)
        t_emb = t_out["queries"][tw, tq] @ self.proj  # (n, E)
        embed = (1 - F.cosine_similarity(s_emb, t_emb, dim=-1)).mean()
        s_log = F.log_softmax(s_out["logits"][si, sq] / self.tau, -1)
        t_prob = F.softmax(t_out["logits"][tw, tq] / self.tau, -1)
        kl = F.kl_div(s_log, t_prob, reduction="batchmean") * self.tau**2
        return {"qfa_embed": self.lam * embed, "qfa_kl": self.kl_weight * kl}


def build_teacher(student_name: str, student: Any, a: argparse.Namespace, data: list[SyntheticClip],
                  out_dir: Path) -> Any:
    from edgevis.models.zoo import build_model

    name = a.teacher or TEACHERS.get(student_name, "seqformer_r50")
    teacher = build_model(name, a.teacher_weights)
    tc, sc = teacher.cfg, student.cfg
    if (tc.height, tc.width, tc.num_classes) != (sc.height, sc.width, sc.num_classes):
        raise EdgevisError(f"teacher {name} is {tc.height}x{tc.width} with {tc.num_classes} classes, the student "
                           f"{student_name} {sc.height}x{sc.width} with {sc.num_classes}; pass a matching --teacher")
    if not a.teacher_weights and a.teacher_steps > 0:
        meta = train_teacher(teacher, data, steps=a.teacher_steps, batch=a.batch, lr=a.lr, seed=a.seed,
                             max_minutes=a.teacher_minutes)
        print(f"teacher {name}: {meta['steps']} offline steps in {meta['minutes']:.1f} min, loss {meta.get('loss', 0):.3f}")
        print(f"saved {save_checkpoint(teacher, out_dir / f'teacher_{name}.pt', meta=meta)}")
    teacher.net.eval()
    for p in teacher.net.parameters():
        p.requires_grad_(False)
    return teacher


def main(model_name: str, argv: list[str]) -> int:
    from edgevis.models.zoo import model_entry

    p = argparse.ArgumentParser(prog=f"edgevis distill --model {model_name}", description=__doc__.splitlines()[0])
    add_common(p)
    p.add_argument("--method", default="qfa", choices=["qfa"], help="distillation method (QFA)")
    p.add_argument("--teacher", help=f"teacher model (default {TEACHERS})")
    p.add_argument("--teacher-weights", help="teacher checkpoint (edgevis or published SeqFormer)")
    p.add_argument("--teacher-steps", type=int, default=0, help="without --teacher-weights: train the teacher first")
    p.add_argument("--teacher-minutes", type=float, default=3.0)
    p.add_argument("--weights", help="student checkpoint to start from")
    p.add_argument("--lambda", dest="lam", type=float, default=1.0, help="weight of 1 - cos(student, P teacher)")
    p.add_argument("--kl-weight", type=float, default=1.0)
    p.add_argument("--tau", type=float, default=2.0, help="KL temperature")
    p.add_argument("--copy-paste", type=float, default=0.5, help="probability of a class-balanced paste per window")
    p.add_argument("--learn-projection", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    student = model_entry(model_name).build()
    if a.weights:
        student.load_weights(a.weights)
    cfg = student.cfg
    out = Path(a.out) if a.out else Path("runs") / model_name / "qfa.pt"
    data = training_clips(a.clips, a.seed, (cfg.height, cfg.width), a.frames)
    teacher = build_teacher(model_name, student, a, data, out.parent)
    if a.window != teacher.cfg.window:
        print(f"window: using the teacher's T = {teacher.cfg.window} (was {a.window})")
    qfa = QfaLoss(teacher, cfg.embed_dim, a.lam, a.kl_weight, a.tau, a.learn_projection, a.seed)
    paste = ClassBalancedPaste(data, a.copy_paste) if a.copy_paste > 0 else None
    log: list[dict[str, float]] = []
    meta = train_student(student, data, steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, window=teacher.cfg.window,
                         max_gap=a.max_gap, max_minutes=a.max_minutes, augment=paste, extra=qfa,
                         extra_params=qfa.params, log=log)
    meta.update(command=shlex.join(["edgevis", "distill", "--model", model_name, *argv]), teacher=teacher.name,
                pairs=qfa.pairs_seen)
    print(f"saved {save_checkpoint(student, out, meta=meta)}")
    out.with_suffix(".log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    if a.do_eval:
        report_eval(student, a, out)
    return 0
