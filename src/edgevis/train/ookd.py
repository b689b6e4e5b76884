"""`edgevis train --model ookd_tiny`: task training of the OOKD student on synthetic clips, and `--eval`.

Recipe [our design, IDOL-style, CPU-sized]:
- samples: windows of ``window`` consecutive frames; the student sees two of them (key t, reference
  t + d, d <= max_gap), the QFA teacher (train/qfa.py) the whole window;
- per frame, Hungarian matching of the queries to the visible ground-truth instances on
  ``2 * focal class cost + 5 * L1 box + 2 * (1 - GIoU) + 5 * (1 - dice)``; losses: focal class (2),
  L1 box (5), GIoU (2), dice (5) + BCE (2) on the masks at stride 4, class and box losses on the
  earlier decoder layers too;
- association (IDOL's contrastive loss, one positive): each key-frame matched query embedding v is
  pulled to the reference-frame query matched to the same track id k+ against every other
  reference query k-: ``log(1 + sum exp(v.k- - v.k+))``, plus IDOL's auxiliary
  ``(cos(v, k) - same)^2`` loss;
- ``--eval``: :func:`evaluate` runs the StreamRunner (model + tracker) over held-out clips and scores
  YouTube-VIS mAP (:func:`edgevis.data.ytvis_map`) and ID switches against the ground-truth ids.

Training clips are long-tailed on purpose (classes 4 and 5 appear only in ``rare_fraction`` of the
clips), so the class-balanced copy-paste of QFA has rare classes to balance; held-out clips draw
classes 1..5 uniformly.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from edgevis.data.synthetic import SyntheticClip, make_clip
from edgevis.data.ytvis import tracks_to_predictions
from edgevis.errors import EdgevisError
from edgevis.models.checkpoints import save_checkpoint
from edgevis.train.losses import dice_matrix, focal_loss
from edgevis.train.schedule import WarmupCosine

WEIGHTS = {"cls": 2.0, "l1": 5.0, "giou": 2.0, "dice": 5.0, "bce": 2.0, "aux": 1.0, "assoc": 1.0, "assoc_aux": 1.0}
NUM_SYNTH_CLASSES = 5
MIN_PIXELS = 16


# ------------------------------------------------------------------------------------------------- data


def training_clips(n: int, seed: int, hw: tuple[int, int], frames: int, rare_fraction: float = 0.2) -> list[SyntheticClip]:
    """Long-tailed synthetic clips: most draw classes 1..3, ``rare_fraction`` of them 1..5."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        classes = NUM_SYNTH_CLASSES if rng.random() < rare_fraction else 3
        out.append(make_clip(int(rng.integers(2**31)), num_frames=frames, height=hw[0], width=hw[1], num_objects=(1, 4),
                             num_classes=classes, noise_std=3.0, flicker=0.05, name=f"train_{i:04d}"))
    return out


def heldout_clips(n: int, seed: int, hw: tuple[int, int], frames: int) -> list[SyntheticClip]:
    rng = np.random.default_rng(seed)
    return [make_clip(int(rng.integers(2**31)), num_frames=frames, height=hw[0], width=hw[1], num_objects=(1, 4),
                      num_classes=NUM_SYNTH_CLASSES, noise_std=3.0, flicker=0.05, name=f"eval_{i:04d}") for i in range(n)]


@dataclass
class Target:
    """Ground truth of one frame: classes (N,) 0-based, track ids (N,), soft masks at stride 4 (N, h, w),
    boxes (N, 4) cx, cy, w, h in [0, 1]."""

    cls: torch.Tensor
    ids: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) normalised cx, cy, w, h of each mask's bounding box."""
    n, h, w = masks.shape
    out = np.zeros((n, 4), np.float32)
    for i in range(n):
        ys, xs = np.nonzero(masks[i].any(1))[0], np.nonzero(masks[i].any(0))[0]
        if len(ys):
            x0, x1, y0, y1 = xs[0], xs[-1] + 1, ys[0], ys[-1] + 1
            out[i] = ((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h)
    return out


def frame_target(masks: np.ndarray, classes: Sequence[int], ids: Sequence[int]) -> Target:
    """masks (N, H, W) bool of one frame -> Target of the instances with >= MIN_PIXELS visible."""
    keep = masks.reshape(len(masks), -1).sum(1) >= MIN_PIXELS
    m = masks[keep]
    soft = F.avg_pool2d(torch.from_numpy(m).float()[None], 4)[0] if len(m) else torch.zeros(0, masks.shape[1] // 4,
                                                                                              masks.shape[2] // 4)
    return Target(torch.as_tensor([c - 1 for c, k in zip(classes, keep) if k], dtype=torch.long),
                  torch.as_tensor([t for t, k in zip(ids, keep) if k], dtype=torch.long), soft,
                  torch.from_numpy(mask_boxes(m)))


Augment = Callable[[np.ndarray, np.ndarray, list[int], list[int], np.random.Generator],
                   tuple[np.ndarray, np.ndarray, list[int], list[int]]]


def sample_windows(clips: list[SyntheticClip], rng: np.random.Generator, batch: int, window: int, max_gap: int,
                   augment: Augment | None = None) -> dict[str, Any]:
    """``batch`` windows of ``window`` frames and, in each, a key/reference pair (a, a + d).

    Returns frames (B, T, H, W, 3) uint8, targets[b][t], pair (B, 2) frame positions in the window.
    """
    frames, targets, pairs = [], [], []
    for _ in range(batch):
        clip = clips[int(rng.integers(len(clips)))]
        t0 = int(rng.integers(0, clip.num_frames - window + 1))
        f = clip.frames[t0 : t0 + window].copy()  # (T, H, W, 3)
        m = clip.masks[t0 : t0 + window].copy()  # (T, N, H, W)
        classes, ids = list(clip.classes), list(clip.track_ids)
        if augment is not None:
            f, m, classes, ids = augment(f, m, classes, ids, rng)
        if rng.integers(2):  # horizontal flip of the whole window
            f, m = f[:, :, ::-1], m[..., ::-1]
        d = int(rng.integers(1, min(max_gap, window - 1) + 1))
        a = int(rng.integers(0, window - d))
        frames.append(np.ascontiguousarray(f))
        targets.append([frame_target(np.ascontiguousarray(m[t]), classes, ids) for t in range(window)])
        pairs.append((a, a + d))
    return {"frames": torch.from_numpy(np.stack(frames)), "targets": targets, "pairs": np.asarray(pairs)}


# ----------------------------------------------------------------------------------------------- losses


def box_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise generalised IoU of (N, 4) and (M, 4) cx, cy, w, h boxes -> (N, M)."""
    a, b = box_xyxy(a), box_xyxy(b)
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt, rb = torch.max(a[:, None, :2], b[None, :, :2]), torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    iou = inter / union.clamp(min=1e-6)
    lt2, rb2 = torch.min(a[:, None, :2], b[None, :, :2]), torch.max(a[:, None, 2:], b[None, :, 2:])
    hull = (rb2 - lt2).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-6)


@torch.no_grad()
def hungarian(logits: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor, cls: torch.Tensor,
              gt_masks: torch.Tensor, gt_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (Q, C), mask logits (Q, P), boxes (Q, 4k) vs N targets -> matched (query rows, target cols)."""
    if len(cls) == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    p = logits.sigmoid()[:, cls]  # (Q, N)
    cost_cls = 0.25 * (1 - p) ** 2 * -(p + 1e-8).log() - 0.75 * p**2 * -(1 - p + 1e-8).log()  # focal pos - neg
    cost = (2 * cost_cls + 5 * torch.cdist(boxes, gt_boxes, p=1) / max(1, boxes.shape[1] // 4)
            + 5 * (1 - dice_matrix(masks.sigmoid(), gt_masks)))
    if boxes.shape[1] == 4:
        cost = cost + 2 * (1 - giou(boxes, gt_boxes))
    rows, cols = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


def set_losses(logits: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor | None, tgt_cls: torch.Tensor,
               tgt_boxes: torch.Tensor, tgt_masks: torch.Tensor | None, rows: torch.Tensor,
               cols: torch.Tensor) -> dict[str, torch.Tensor]:
    """Losses of one image (or clip) given a matching; sums, normalised by the caller."""
    cls_t = torch.zeros_like(logits)
    cls_t[rows, tgt_cls[cols]] = 1.0
    out = {"cls": focal_loss(logits, cls_t)}
    if len(rows):
        pb, tb = boxes[rows], tgt_boxes[cols]
        out["l1"] = F.l1_loss(pb, tb, reduction="sum") / max(1, pb.shape[1] // 4)
        if pb.shape[1] == 4:
            out["giou"] = (1 - torch.diag(giou(pb, tb))).sum()
        if masks is not None and tgt_masks is not None:
            pm, tm = masks[rows], tgt_masks[cols]
            sig = pm.sigmoid()
            out["dice"] = (1 - 2 * (sig * tm).sum(1) / (sig.pow(2).sum(1) + tm.pow(2).sum(1) + 1e-4)).sum()
            out["bce"] = F.binary_cross_entropy_with_logits(pm, tm, reduction="none").mean(1).sum()
    return out


def contrastive_loss(key: torch.Tensor, ref: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """key (n, E) anchors, ref (Q, E) every reference query, pos (n,) index of each anchor's positive.

    Returns IDOL's contrastive sum ``log(1 + sum_neg exp(v.k- - v.k+))`` and the auxiliary cosine loss.
    """
    sims = key @ ref.T  # (n, Q)
    pos_s = sims.gather(1, pos[:, None])  # (n, 1)
    neg = torch.ones_like(sims, dtype=torch.bool).scatter_(1, pos[:, None], False)
    diff = (sims - pos_s).masked_fill(~neg, float("-inf"))
    contrast = F.softplus(torch.logsumexp(diff, dim=1)).sum()  # log(1 + sum exp)
    cos = F.normalize(key, dim=-1) @ F.normalize(ref, dim=-1).T
    same = (~neg).float()
    return contrast, ((cos - same) ** 2).mean(1).sum()


def student_step(net: torch.nn.Module, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Task losses of the student on the key/reference frames of each window.

    Returns normalised losses and a record (outputs, matchings per image) that QFA reuses.
    """
    frames, pairs = batch["frames"], batch["pairs"]
    b = frames.shape[0]
    idx = torch.as_tensor(pairs)
    images = torch.cat([frames[torch.arange(b), idx[:, 0]], frames[torch.arange(b), idx[:, 1]]])  # (2B, H, W, 3)
    tgts = [batch["targets"][i][pairs[i, 0]] for i in range(b)] + [batch["targets"][i][pairs[i, 1]] for i in range(b)]
    out = net.all_queries(images)
    n_gt = max(1, sum(len(t.cls) for t in tgts))
    sums: dict[str, torch.Tensor] = {}
    matches = []
    for i, t in enumerate(tgts):
        masks = out["masks"][i].flatten(1)  # (Q, P)
        rows, cols = hungarian(out["logits"][i].detach(), masks.detach(), out["boxes"][i].detach(), t.cls,
                               t.masks.flatten(1), t.boxes)
        matches.append((rows, cols))
        parts = set_losses(out["logits"][i], out["boxes"][i], masks, t.cls, t.boxes, t.masks.flatten(1), rows, cols)
        for al, ab in zip(out["aux_logits"], out["aux_boxes"]):
            aux = set_losses(al[i], ab[i], None, t.cls, t.boxes, None, rows, cols)
            parts["aux"] = parts.get("aux", 0) + sum(aux.values())
        for k, v in parts.items():
            sums[k] = sums.get(k, 0) + v
    assoc, assoc_aux, n_anchor = 0, 0, 0
    for i in range(b):  # key frame i vs reference frame b + i
        (rk, ck), (rr, cr) = matches[i], matches[b + i]
        ids_k, ids_r = tgts[i].ids[ck], tgts[b + i].ids[cr]
        common = [(int(q), int(rr[(ids_r == tid).nonzero()[0, 0]])) for q, tid in zip(rk, ids_k) if (ids_r == tid).any()]
        if not common:
            continue
        qk = torch.as_tensor([c[0] for c in common])
        pos = torch.as_tensor([c[1] for c in common])
        c, a = contrastive_loss(out["embeds"][i][qk], out["embeds"][b + i], pos)
        assoc, assoc_aux, n_anchor = assoc + c, assoc_aux + a, n_anchor + len(common)
    losses = {k: v / n_gt for k, v in sums.items()}
    if n_anchor:
        losses["assoc"], losses["assoc_aux"] = assoc / n_anchor, assoc_aux / n_anchor
    return losses, {"out": out, "targets": tgts, "matches": matches}


def weighted(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(WEIGHTS.get(k, 1.0) * v for k, v in losses.items())


# ------------------------------------------------------------------------------------------------ train


def train_student(model: Any, data: list[SyntheticClip], *, steps: int, batch: int, lr: float, seed: int, window: int,
                  max_gap: int, max_minutes: float, augment: Augment | None = None,
                  extra: Callable[[dict[str, Any], dict[str, Any]], dict[str, torch.Tensor]] | None = None,
                  extra_params: Sequence[torch.nn.Parameter] = (), log_every: int = 20,
                  log: list[dict[str, float]] | None = None) -> dict[str, Any]:
    """AdamW with warm-up and cosine decay over the steps or the wall-time budget, whichever ends first.

    ``extra(batch, record) -> losses`` adds losses (QFA distillation) to the task losses.
    """
    torch.manual_seed(seed)
    net = model.net.train()
    params = [p for p in net.parameters() if p.requires_grad] + list(extra_params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    sched = WarmupCosine(opt, lr, steps, max_minutes, warm=min(50, steps // 10))
    hist, done = [], 0
    for step in range(steps):
        if not sched.begin(step):
            print(f"stopping at step {step}: --max-minutes {max_minutes} reached", flush=True)
            break
        sample = sample_windows(data, rng, batch, window, max_gap, augment)
        losses, record = student_step(net, sample)
        if extra is not None:
            losses.update(extra(sample, record))
        loss = weighted(losses)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        opt.step()
        done = step + 1
        row = {k: float(v.detach()) for k, v in losses.items()}
        hist.append(row)
        if log is not None:
            log.append(row)
        if done % log_every == 0 or done == steps:
            keys = sorted({k for h in hist[-log_every:] for k in h})
            avg = {k: float(np.mean([h[k] for h in hist[-log_every:] if k in h])) for k in keys}
            print(f"step {done}/{steps} " + " ".join(f"{k} {v:.3f}" for k, v in avg.items())
                  + f" ({sched.elapsed():.0f} s)", flush=True)
    net.eval()
    keys = sorted({k for h in hist for k in h})
    return {"steps": done, "planned_steps": steps, "batch": batch, "lr": lr, "seed": seed, "window": window,
            "max_gap": max_gap, "minutes": sched.elapsed() / 60,
            "final_losses": {k: float(np.mean([h[k] for h in hist[-20:] if k in h])) for k in keys}}


# ------------------------------------------------------------------------------------------------- eval


def id_switches(clip: SyntheticClip, results: list, iou_threshold: float = 0.5) -> int:
    """CLEAR-MOT ID switches: per frame, predictions are matched to visible ground truth (Hungarian on mask
    IoU >= ``iou_threshold``); a switch is a ground-truth track matched to another id than at its last match."""
    from edgevis.data.metrics import mask_iou_matrix

    last: dict[int, int] = {}
    switches = 0
    for t, r in enumerate(results):
        gt = clip.masks[t]
        vis = np.flatnonzero(gt.reshape(len(gt), -1).sum(1) >= MIN_PIXELS)
        if not len(vis) or not r.num_instances:
            continue
        iou = mask_iou_matrix(gt[vis], r.masks)  # (G, D)
        rows, cols = linear_sum_assignment(-iou)
        for g, d in zip(rows, cols):
            if iou[g, d] < iou_threshold:
                continue
            gid, pid = int(clip.track_ids[vis[g]]), int(r.track_ids[d])
            if gid in last and last[gid] != pid:
                switches += 1
            last[gid] = pid
    return switches


def evaluate(model: Any, clips: Sequence[SyntheticClip], backend: str = "torch", **policy_opts: Any) -> dict[str, Any]:
    """Run the StreamRunner (student + tracker) over ``clips``: YouTube-VIS mAP and ID switches."""
    from edgevis.data.metrics import ytvis_map
    from edgevis.runtime.pipeline import open_backends
    from edgevis.runtime.runner import StreamRunner

    preds, switches = [], 0
    for vid, clip in enumerate(clips, start=1):
        runner = StreamRunner(model.policy(**policy_opts), open_backends(model, backend))
        res = [runner.step([f])[0] for f in clip.frames]
        runner.close()
        preds += tracks_to_predictions(vid, res, (clip.height, clip.width))
        switches += id_switches(clip, res)
    scores = ytvis_map(list(clips), preds)
    return {"mAP": scores["mAP"], "AP50": scores["AP50"], "AP75": scores["AP75"], "AR10": scores["AR10"],
            "id_switches": switches, "clips": len(clips), "tracks_predicted": len(preds)}


# ------------------------------------------------------------------------------------------------- CLI


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=2, help="windows per step (the student sees 2 frames of each)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--frames", type=int, default=12, help="frames per training clip")
    p.add_argument("--window", type=int, default=5, help="frames per sampled window (the teacher's T)")
    p.add_argument("--max-gap", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    p.add_argument("--max-minutes", type=float, default=4.0)
    p.add_argument("--out", help="checkpoint path (default runs/<model>/<recipe>.pt)")
    p.add_argument("--eval-clips", type=int, default=6)
    p.add_argument("--eval-frames", type=int, default=20)
    p.add_argument("--no-eval", dest="do_eval", action="store_false")


def report_eval(model: Any, a: argparse.Namespace, out: Path | None = None) -> dict[str, Any]:
    cfg = model.cfg
    res = evaluate(model, heldout_clips(a.eval_clips, 10_000, (cfg.height, cfg.width), a.eval_frames))
    print(f"YouTube-VIS mAP on {a.eval_clips} held-out synthetic clips x {a.eval_frames} frames: {res['mAP']:.4f} "
          f"(AP50 {res['AP50']:.4f}, AR10 {res['AR10']:.4f}); ID switches {res['id_switches']}")
    if out is not None:
        out.with_suffix(".eval.json").write_text(json.dumps(res, indent=1))
    return res


def main(model_name: str, argv: list[str]) -> int:
    from edgevis.models.zoo import build_model, model_entry

    p = argparse.ArgumentParser(prog=f"edgevis train --model {model_name}", description=__doc__.splitlines()[0])
    add_common(p)
    p.add_argument("--eval", action="store_true", help="only evaluate --weights: YouTube-VIS mAP and ID switches")
    p.add_argument("--weights", help="checkpoint to evaluate, or to start training from")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    if a.eval:
        model = build_model(model_name, a.weights)
        report_eval(model, a)
        return 0
    model = model_entry(model_name).build()
    if a.weights:
        model.load_weights(a.weights)
    cfg = model.cfg
    if a.window < 2 or a.frames < a.window:
        raise EdgevisError(f"--window {a.window} --frames {a.frames}: expected 2 <= window <= frames")
    data = training_clips(a.clips, a.seed, (cfg.height, cfg.width), a.frames)
    meta = train_student(model, data, steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, window=a.window,
                         max_gap=a.max_gap, max_minutes=a.max_minutes)
    meta["command"] = shlex.join(["edgevis", "train", "--model", model_name, *argv])
    out = Path(a.out) if a.out else Path("runs") / model_name / "task.pt"
    print(f"saved {save_checkpoint(model, out, meta=meta)}")
    if a.do_eval:
        report_eval(model, a, out)
    return 0
