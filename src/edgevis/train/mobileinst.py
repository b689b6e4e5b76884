"""`edgevis train --model mobileinst_tiny`: MobileInst on synthetic clips (CPU, a few minutes).

SparseInst-style training: Hungarian matching of the queries to the ground-truth instances on
``dice^0.8 * p_cls^0.2``, then focal class loss (weight 2), dice (2) + BCE (5) mask losses and an
IoU-aware objectness loss (1). Temporal query passing (training only): frames come in pairs (t, t+d);
the stage-1 queries of frame t feed stage 2 of frame t+d. ``--eval`` reports YouTube-VIS mAP of the
streaming runner (kernel reuse + association) on held-out clips; ``--render`` writes annotated frames.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from edgevis.data.synthetic import CATEGORIES, SyntheticClip, make_dataset
from edgevis.data.ytvis import tracks_to_predictions
from edgevis.errors import EdgevisError
from edgevis.models.mobileinst import kernel_masks
from edgevis.models.zoo import WEIGHTS_DIR, build_model
from edgevis.train.losses import dice_matrix, focal_loss
from edgevis.train.schedule import WarmupCosine

LOSS_WEIGHTS = {"cls": 2.0, "dice": 2.0, "bce": 5.0, "obj": 1.0}


def synthetic_clips(n: int, seed: int, hw: tuple[int, int], frames: int, classes: int) -> list[SyntheticClip]:
    return make_dataset(n, seed, num_frames=frames, height=hw[0], width=hw[1], num_objects=(1, 4),
                        num_classes=classes, noise_std=3.0, flicker=0.05)


def instance_losses(masks: torch.Tensor, logits: torch.Tensor, obj: torch.Tensor, gt_masks: list[torch.Tensor],
                    gt_cls: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """masks (B, Q, h, w) logits at stride 8; gt_masks[b] (N_b, 2h, 2w) soft targets at stride 4."""
    b, q = masks.shape[:2]
    up = F.interpolate(masks, scale_factor=2, mode="bilinear", align_corners=False).flatten(2)  # (B, Q, P)
    cls_t = torch.zeros_like(logits)
    obj_t = torch.zeros_like(obj)
    dice_l, bce_l = [], []
    n_total = max(1, sum(len(g) for g in gt_masks))
    for i in range(b):
        if len(gt_masks[i]) == 0:
            continue
        t = gt_masks[i].flatten(1)  # (N, P)
        p = torch.sigmoid(up[i])  # (Q, P)
        with torch.no_grad():
            cost = dice_matrix(p, t).clamp_min(1e-6) ** 0.8 * torch.sigmoid(logits[i][:, gt_cls[i]]) ** 0.2  # (Q, N)
            rows, cols = linear_sum_assignment(-cost.numpy())
        rows_t, cols_t = torch.as_tensor(rows), torch.as_tensor(cols)
        pm, tm = p[rows_t], t[cols_t]  # (n, P)
        dice_l.append((1 - 2 * (pm * tm).sum(1) / (pm.pow(2).sum(1) + tm.pow(2).sum(1) + 1e-4)).sum())
        bce_l.append(F.binary_cross_entropy_with_logits(up[i][rows_t], tm, reduction="none").mean(1).sum())
        cls_t[i, rows_t, gt_cls[i][cols_t]] = 1.0
        with torch.no_grad():
            pb, tb = (pm > 0.5).float(), (tm > 0.5).float()
            inter = (pb * tb).sum(1)
            obj_t[i, rows_t] = inter / (pb.sum(1) + tb.sum(1) - inter).clamp_min(1.0)
    zero = masks.sum() * 0
    return {
        "cls": focal_loss(logits, cls_t) / n_total,
        "dice": (torch.stack(dice_l).sum() / n_total) if dice_l else zero,
        "bce": (torch.stack(bce_l).sum() / n_total) if bce_l else zero,
        "obj": F.binary_cross_entropy_with_logits(obj, obj_t, reduction="sum") / n_total,
    }


def _sample(clips: list[SyntheticClip], rng: np.random.Generator, batch: int, max_gap: int,
            crop: tuple[int, int] | None = None):
    """A batch of frame pairs (t, t + d), optionally random crops: images (2, B, h, w, 3) uint8, per-image
    soft masks at stride 4 and class indices."""
    imgs, masks, classes = [], [], []
    for _ in range(batch):
        clip = clips[int(rng.integers(len(clips)))]
        d = int(rng.integers(1, max_gap + 1))
        t = int(rng.integers(0, clip.num_frames - d))
        flip = bool(rng.integers(2))
        ch, cw = crop or (clip.height, clip.width)  # same-scale crops: objects keep their deployment size
        y0, x0 = int(rng.integers(0, clip.height - ch + 1)), int(rng.integers(0, clip.width - cw + 1))
        for tt in (t, t + d):
            img = clip.frames[tt, y0 : y0 + ch, x0 : x0 + cw]  # (h, w, 3)
            m = clip.masks[tt, :, y0 : y0 + ch, x0 : x0 + cw]  # (N, h, w)
            if flip:
                img, m = img[:, ::-1], m[:, :, ::-1]
            keep = m.reshape(len(m), -1).sum(1) >= 16  # objects at least 16 pixels visible
            mt = torch.from_numpy(np.ascontiguousarray(m[keep])).float()
            imgs.append(np.ascontiguousarray(img))
            masks.append(F.avg_pool2d(mt[None], 4)[0] if len(mt) else mt.new_zeros((0, m.shape[1] // 4, m.shape[2] // 4)))
            classes.append(torch.as_tensor([c - 1 for c, k in zip(clip.classes, keep) if k], dtype=torch.long))
    x = torch.from_numpy(np.stack(imgs)).view(batch, 2, *imgs[0].shape).transpose(0, 1)  # (2, B, H, W, 3)
    return x, masks[0::2], classes[0::2], masks[1::2], classes[1::2]


def train(model_name: str, *, steps: int, batch: int, lr: float, seed: int, clips: int, frames: int, max_gap: int,
          threads: int, max_minutes: float, crop: tuple[int, int] | None = None, init: str | None = None,
          log_every: int = 25) -> tuple[object, dict]:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    model = _fresh(model_name)
    init_meta = None
    if init:  # continue from a checkpoint (e.g. a second budgeted run)
        from edgevis.models.base import load_checkpoint

        model.load_weights(init)
        init_meta = load_checkpoint(init).get("meta")
    cfg = model.cfg
    if cfg.num_classes > len(CATEGORIES):
        raise EdgevisError(f"{model_name} has {cfg.num_classes} classes; synthetic clips have {len(CATEGORIES)}")
    t0 = time.time()
    data = synthetic_clips(clips, seed, (cfg.height, cfg.width), frames, cfg.num_classes)
    print(f"generated {clips} clips x {frames} frames at {cfg.height}x{cfg.width} in {time.time() - t0:.0f} s")
    net = model.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    sched = WarmupCosine(opt, lr, steps, max_minutes, warm=min(100, steps // 10))
    hist, done = [], 0
    for step in range(steps):
        if not sched.begin(step):
            print(f"stopping at step {step}: --max-minutes {max_minutes} reached")
            break
        x, m_a, c_a, m_b, c_b = _sample(data, rng, batch, max_gap, crop)
        x_mask, x6 = net.features(x.reshape(2 * batch, *x.shape[2:]))
        xm_a, xm_b = x_mask[:batch], x_mask[batch:]
        k_a, l_a, o_a, q_a = net.decoder(xm_a, x6[:batch])
        k_b, l_b, o_b, _ = net.decoder(xm_b, x6[batch:], passed=q_a)  # temporal query passing
        la = instance_losses(kernel_masks(k_a, xm_a), l_a, o_a, m_a, c_a)
        lb = instance_losses(kernel_masks(k_b, xm_b), l_b, o_b, m_b, c_b)
        parts = {k: 0.5 * (la[k] + lb[k]) for k in la}
        loss = sum(LOSS_WEIGHTS[k] * v for k, v in parts.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        done = step + 1
        hist.append({k: float(v.detach()) for k, v in parts.items()})
        if done % log_every == 0 or done == steps:
            avg = {k: np.mean([h[k] for h in hist[-log_every:]]) for k in hist[-1]}
            print(f"step {done}/{steps} loss {sum(LOSS_WEIGHTS[k] * v for k, v in avg.items()):.3f} "
                  + " ".join(f"{k} {v:.3f}" for k, v in avg.items()) + f" ({sched.elapsed():.0f} s)", flush=True)
    net.eval()
    meta = {"steps": done, "planned_steps": steps, "batch_pairs": batch, "lr": lr, "seed": seed, "clips": clips,
            "frames_per_clip": frames, "max_gap": max_gap, "crop": list(crop) if crop else None, "init": init, "init_meta": init_meta, "threads": threads, "minutes": sched.elapsed() / 60,
            "final_losses": {k: float(np.mean([h[k] for h in hist[-50:]])) for k in hist[-1]}}
    return model, meta


def _fresh(model_name: str):
    from edgevis.models.zoo import model_entry

    return model_entry(model_name).build()  # untrained: never the shipped checkpoint


# ------------------------------------------------------------------------------------------------ eval


def run_clip(model, clip: SyntheticClip, key_interval: int = 3, backend: str = "torch", **policy_opts) -> list:
    from edgevis.runtime.pipeline import open_backends
    from edgevis.runtime.runner import StreamRunner

    runner = StreamRunner(model.policy(key_interval=key_interval, **policy_opts), open_backends(model, backend))
    out = [runner.step([f])[0] for f in clip.frames]
    runner.close()
    return out


def evaluate(model, *, clips: int = 8, seed: int = 10_000, frames: int = 15, key_interval: int = 3,
             backend: str = "torch", score_threshold: float = 0.05) -> dict:
    """YouTube-VIS mAP of the streaming runner on held-out clips (low threshold, as COCO-style AP wants)."""
    from edgevis.data.metrics import ytvis_map

    cfg = model.cfg
    data = synthetic_clips(clips, seed, (cfg.height, cfg.width), frames, cfg.num_classes)
    preds = []
    for vid, clip in enumerate(data, start=1):
        res = run_clip(model, clip, key_interval, backend, score_threshold=score_threshold)
        preds += tracks_to_predictions(vid, res, (clip.height, clip.width))
    return ytvis_map(data, preds)


def render(model, path: Path, seed: int = 20_000, frames: int = 9, key_interval: int = 3, every: int = 2) -> Path:
    """Annotated frames of one held-out clip (source, then masks) tiled into one PNG."""
    import cv2

    from edgevis.runtime.sinks import annotate

    cfg = model.cfg
    clip = synthetic_clips(1, seed, (cfg.height, cfg.width), frames, cfg.num_classes)[0]
    res = run_clip(model, clip, key_interval)
    rows = [np.concatenate([clip.frames[t], annotate(clip.frames[t], res[t])], 1) for t in range(0, frames, every)]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate(rows, 0))
    return path


def _hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise EdgevisError(f"--crop {text!r}: expected HxW such as 128x192, or 'none'") from None
    if h % 64 or w % 64 or h <= 0 or w <= 0:
        raise EdgevisError(f"--crop {text}: H and W must be positive multiples of 64 (e.g. 128x192)")
    return h, w


def main(model_name: str, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"edgevis train --model {model_name}", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=4, help="frame pairs per step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clips", type=int, default=96)
    p.add_argument("--frames", type=int, default=10, help="frames per training clip")
    p.add_argument("--max-gap", type=int, default=3, help="temporal query passing: d in 1..max-gap")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    p.add_argument("--crop", default="128x192", help="train on random HxW crops (multiples of 64) of full-size frames; 'none'")
    p.add_argument("--max-minutes", type=float, default=10.0,
                   help="wall-time budget: the cosine schedule ends at the steps or this budget, whichever is first")
    p.add_argument("--init", help="start from this checkpoint instead of random weights")
    p.add_argument("--out", default=None, help=f"checkpoint path (default {WEIGHTS_DIR}/<model>.pt)")
    p.add_argument("--eval", action="store_true", help="only evaluate --weights (or the shipped checkpoint): YTVIS mAP")
    p.add_argument("--weights", help="checkpoint to evaluate / render")
    p.add_argument("--eval-clips", type=int, default=8)
    p.add_argument("--key-interval", type=int, default=3)
    p.add_argument("--score-threshold", type=float, default=0.05, help="--eval: detection threshold for AP")
    p.add_argument("--render", help="write annotated held-out frames to this PNG")
    a = p.parse_args(argv)
    crop = None if a.crop.lower() == "none" else _hw(a.crop)
    if a.eval or (a.render and a.weights):
        model = build_model(model_name, a.weights)
        torch.set_num_threads(a.threads)
    else:
        model, meta = train(model_name, steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, clips=a.clips,
                            frames=a.frames, max_gap=a.max_gap, threads=a.threads, max_minutes=a.max_minutes,
                            crop=crop, init=a.init)
        meta["command"] = shlex.join(["edgevis", "train", "--model", model_name, *argv])
        out = Path(a.out) if a.out else WEIGHTS_DIR / f"{model_name}.pt"
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model_name, "state_dict": model.net.state_dict(), "meta": meta}, out)
        print(f"saved {out} ({out.stat().st_size / 1e6:.1f} MB) after {meta['steps']} steps")
    if a.render:
        print(f"rendered {render(model, Path(a.render), key_interval=a.key_interval)}")
    if a.eval or not a.render:
        res = evaluate(model, clips=a.eval_clips, key_interval=a.key_interval, score_threshold=a.score_threshold)
        print(f"YouTube-VIS mAP on {a.eval_clips} held-out synthetic clips (T={a.key_interval}): {res['mAP']:.3f} "
              f"(AP50 {res['AP50']:.3f}, AP75 {res['AP75']:.3f}, AR10 {res['AR10']:.3f})")
    return 0
