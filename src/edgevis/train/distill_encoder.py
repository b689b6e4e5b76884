"""`edgevis distill --model recurrent_seqformer[_tiny]`: distil the recurrent encoder from SeqFormer's.

Recipe (SEEDS.md section 1, [our design] where the paper is silent):
- teacher: the SeqFormer of the same size (``--teacher``, default ``seqformer_r50`` / ``seqformer_tiny``),
  frozen, optionally with weights (``--teacher-weights``, an edgevis or published SeqFormer checkpoint);
- student: backbone, input projections, decoder, heads and mask head are copied from the teacher and
  frozen; only the recurrent encoder (``detr.transformer.encoder``) trains;
- loss: per-level MSE between the student's encoder outputs and the teacher encoder's, averaged over
  the 4 levels and over clips of ``--clip-len`` (5) frames unrolled through the GRU from a zero state;
  optional task loss (``--task-weight``): MSE between the decoder's class probabilities on the
  student's and on the teacher's memory of the clip;
- data: a folder of videos (``--data``; random windows of consecutive frames, letterboxed) or
  synthetic clips (:func:`edgevis.data.make_clip`, the default);
- outputs under ``--out``: ``loss_log.jsonl`` (one JSON row per step), ``step_<n>.pt`` every
  ``--save-every`` steps and ``last.pt`` (edgevis checkpoints, loadable with ``--weights``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgevis.errors import EdgevisError
from edgevis.models.deformable import flatten_levels

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def build_parser(model_name: str) -> argparse.ArgumentParser:
    from edgevis.models.recurrent_seqformer import TEACHERS

    p = argparse.ArgumentParser(prog=f"edgevis distill --model {model_name}",
                                description="Distil the recurrent encoder from the frozen SeqFormer encoder.")
    p.add_argument("--teacher", default=TEACHERS.get(model_name, "seqformer_r50"), help="teacher model name")
    p.add_argument("--teacher-weights", help="teacher checkpoint (edgevis or published SeqFormer .pth)")
    p.add_argument("--weights", help="student checkpoint to start from (edgevis format)")
    p.add_argument("--data", help="folder of videos (default: synthetic clips)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--clip-len", type=int, default=5, help="frames per clip unrolled through the GRU")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--task-weight", type=float, default=0.0, help="weight of the optional decoder task loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-clips", type=int, default=0, help="synthetic: cycle over this many clips (0: a fresh clip each step)")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--out", default=None, help="output folder (default runs/distill/<model>)")
    return p


def synthetic_clips(height: int, width: int, length: int, batch: int, seed: int, num_clips: int = 0) -> Iterator[np.ndarray]:
    """Endless batches (B, T, H, W, 3) uint8 BGR of synthetic VIS clips (cycling over ``num_clips`` if > 0)."""
    from edgevis.data.synthetic import make_clip

    i = 0
    while True:
        ids = [(i + j) % num_clips if num_clips > 0 else i + j for j in range(batch)]
        yield np.stack([make_clip(seed + k, num_frames=length, height=height, width=width, num_objects=3).frames
                        for k in ids])
        i += batch


def video_clips(folder: Path, height: int, width: int, length: int, batch: int, seed: int) -> Iterator[np.ndarray]:
    """Endless batches of random windows of consecutive frames from the videos in ``folder``, letterboxed."""
    import cv2

    from edgevis.runtime.preprocess import prepare
    from edgevis.spec import Preprocess

    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in VIDEO_EXTS)
    if not files:
        raise EdgevisError(f"--data {folder}: no videos ({', '.join(VIDEO_EXTS)}) found; pass a folder of videos "
                           "or leave --data out to use synthetic clips")
    rng = np.random.default_rng(seed)
    pre = Preprocess()
    while True:
        clips = []
        while len(clips) < batch:
            cap = cv2.VideoCapture(str(files[rng.integers(len(files))]))
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(rng.integers(max(1, n - length + 1))))
            frames = []
            while len(frames) < length:
                ok, f = cap.read()
                if not ok:
                    break
                frames.append(prepare(f, (height, width), pre)[0][0].numpy())
            cap.release()
            if len(frames) == length:
                clips.append(np.stack(frames))
        yield np.stack(clips)


def distill_step(student: torch.nn.Module, teacher: torch.nn.Module, images: torch.Tensor,
                 task_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """One clip: (B, T, H, W, 3) uint8 -> (loss, log). Teacher and student are SeqFormerNet-likes."""
    b, t = images.shape[:2]
    hidden = student.init_hidden(b, images.device)
    per_level = torch.zeros(4)
    feat_loss = images.new_zeros((), dtype=torch.float32)
    s_mems, t_mems = [], []
    for i in range(t):
        with torch.no_grad():
            t_mem = teacher.encode(teacher.project(images[:, i]))  # (B, S, d)
            target = teacher.split_levels(t_mem)
            levels = student.project(images[:, i])
        outs, hidden = student.encode_recurrent(levels, hidden)
        losses = torch.stack([F.mse_loss(o, g) for o, g in zip(outs, target)])  # (4,)
        feat_loss = feat_loss + losses.mean() / t
        per_level += losses.detach() / t
        if task_weight > 0:
            s_mems.append(flatten_levels(outs))
            t_mems.append(t_mem)
    loss = feat_loss
    log = {"feat_loss": float(feat_loss.detach()), "per_level": [round(float(x), 6) for x in per_level]}
    if task_weight > 0:
        s_logits = student.decode(torch.stack(s_mems, 1))[0]
        with torch.no_grad():
            t_logits = teacher.decode(torch.stack(t_mems, 1))[0]
        task = F.mse_loss(s_logits.sigmoid(), t_logits.sigmoid())
        loss = loss + task_weight * task
        log["task_loss"] = float(task.detach())
    log["loss"] = float(loss.detach())
    return loss, log


def main(model_name: str, argv: list[str]) -> int:
    from edgevis.models.checkpoints import load_shared, save_checkpoint
    from edgevis.models.recurrent_seqformer import RecurrentSeqFormer
    from edgevis.models.seqformer import SeqFormer
    from edgevis.models.zoo import build_model
    from edgevis.plugins.convgru import ConvGRUCell

    args = build_parser(model_name).parse_args(argv)
    if args.steps < 1 or args.clip_len < 1 or args.batch < 1:
        raise EdgevisError(f"--steps {args.steps}, --clip-len {args.clip_len}, --batch {args.batch}: each must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    student = build_model(model_name)
    teacher = build_model(args.teacher, args.teacher_weights)
    if not isinstance(student, RecurrentSeqFormer):
        raise EdgevisError(f"`edgevis distill` trains a recurrent encoder; '{model_name}' is not a Recurrent SeqFormer")
    if not isinstance(teacher, SeqFormer) or isinstance(teacher, RecurrentSeqFormer):
        raise EdgevisError(f"--teacher {args.teacher}: expected a SeqFormer with the attention encoder "
                           "(seqformer_r50 or seqformer_tiny)")
    s_cfg, t_cfg = student.cfg, teacher.cfg
    if (s_cfg.shapes, s_cfg.d_model, s_cfg.backbone) != (t_cfg.shapes, t_cfg.d_model, t_cfg.backbone):
        raise EdgevisError(
            f"--teacher {args.teacher} ({t_cfg.height}x{t_cfg.width}, d_model {t_cfg.d_model}) does not fit student "
            f"{model_name} ({s_cfg.height}x{s_cfg.width}, d_model {s_cfg.d_model}); pick the teacher of the same size"
        )
    shared = load_shared(student.net, teacher.net.state_dict())
    if args.weights:
        student.load_weights(args.weights)
    net, tnet = student.net, teacher.net
    tnet.eval().requires_grad_(False)
    net.eval().requires_grad_(False)
    encoder = net.detr.transformer.encoder
    encoder.requires_grad_(True)
    for m in encoder.modules():  # the fused update op has no autograd; the plain ops give the same numbers
        if isinstance(m, ConvGRUCell):
            m.fused = False
    opt = torch.optim.AdamW(encoder.parameters(), lr=args.lr, weight_decay=1e-4)
    length = args.clip_len
    data = (video_clips(Path(args.data), s_cfg.height, s_cfg.width, length, args.batch, args.seed) if args.data
            else synthetic_clips(s_cfg.height, s_cfg.width, length, args.batch, args.seed, args.num_clips))
    out = Path(args.out or f"runs/distill/{model_name}")
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "loss_log.jsonl"
    print(f"distill {model_name} <- {args.teacher}: {len(shared)} shared tensors copied and frozen; "
          f"training {sum(p.numel() for p in encoder.parameters())} encoder parameters; log {log_path}")
    t0 = time.perf_counter()
    with log_path.open("w") as logf:
        for step in range(1, args.steps + 1):
            images = torch.from_numpy(next(data))
            loss, log = distill_step(net, tnet, images, args.task_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
            opt.step()
            row = {"step": step, **log, "seconds": round(time.perf_counter() - t0, 3)}
            logf.write(json.dumps(row) + "\n")
            logf.flush()
            if step % args.save_every == 0:
                save_checkpoint(student, out / f"step_{step}.pt", step=step, teacher=args.teacher)
    last = save_checkpoint(student, out / "last.pt", step=args.steps, teacher=args.teacher)
    print(f"done: {args.steps} steps, last loss {log['loss']:.5f}, checkpoint {last}")
    return 0
