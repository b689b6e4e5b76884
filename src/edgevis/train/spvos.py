"""`edgevis train --model spvos_tiny [--sparse [--learned-gate]]`: STCN-style training on synthetic clips.

Each iteration samples, per clip, three frames in order (frame 0 with its ground truth, then two later
frames) and trains the way STCN does: frame 0's masks are encoded into memory, frame 1 is segmented
from that memory, its predicted probabilities are encoded and added, frame 2 is segmented from both.
Loss: bootstrapped cross-entropy (hardest 15% of pixels) over background + K objects on frames 1, 2.

``--sparse`` (mixed sparse training) alternates dense iterations with sparse ones in which the key
encoder of frames 1 and 2 runs the triple-gated convs on caches from the previous frame (consecutive
frames). The sparse outputs are the decision-masked mix of the cached output, the interpolated conv
and the full conv, so the task loss trains the network to tolerate reuse. Gates: the thresholds
(training-free mode) or, with ``--learned-gate``, a learned 1x1 gate per conv with a hard
Gumbel-sigmoid and the sparsity loss ``lambda * |mean(cost) - target|``. A learned gate is kept
diagonal (change from R, detail from V), so it converts exactly into per-layer thresholds
(tau_t, tau_s) for the deployed graphs; they are stored in the checkpoint's ``meta['sparse']``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgevis.errors import EdgevisError

log = logging.getLogger(__name__)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edgevis train --model spvos_tiny", description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=600)
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget; training stops when it is spent")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-p", type=float, default=0.15, help="bootstrapped CE: fraction of hardest pixels")
    p.add_argument("--clips", type=int, default=96, help="synthetic training clips")
    p.add_argument("--frames", type=int, default=12, help="frames per training clip")
    p.add_argument("--max-gap", type=int, default=4, help="largest frame gap between sampled frames (dense iterations)")
    p.add_argument("--sparse", action="store_true", help="mixed sparse training (alternate dense / sparse iterations)")
    p.add_argument("--learned-gate", action="store_true", help="learn the gates (with --sparse)")
    p.add_argument("--target", type=float, default=0.4, help="learned gate: target compute cost (1 = dense)")
    p.add_argument("--lam", type=float, default=1.0, help="learned gate: sparsity loss weight")
    p.add_argument("--tau-t", type=float, default=None, help="threshold gate tau_t (default: the model's)")
    p.add_argument("--tau-s", type=float, default=None)
    p.add_argument("--init", help="start from this checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="checkpoint path (default src/edgevis/models/weights/<model>.pt)")
    p.add_argument("--eval-clips", type=int, default=6, help="held-out clips for the J&F printed at the end (0: skip)")
    return p.parse_args(argv)


# ---- data ------------------------------------------------------------------------------------------
def make_pool(n: int, frames: int, hw: tuple[int, int], seed: int, k: int) -> list[Any]:
    from edgevis.data import make_dataset

    return make_dataset(n, seed, num_frames=frames, height=hw[0], width=hw[1], num_objects=(1, k), max_speed=4.0)


def sample_batch(pool: list[Any], rng: np.random.Generator, batch: int, k: int, max_gap: int, consecutive: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """images (B, 3, H, W, 3) uint8, masks (B, 3, K, H, W) float, labels (B, 3, H, W) long, obj_valid (B, K)."""
    from edgevis.data import masks_to_labels

    imgs, masks, labels, valid = [], [], [], []
    for _ in range(batch):
        clip = pool[int(rng.integers(len(pool)))]
        t = clip.num_frames
        if consecutive:
            start = int(rng.integers(0, t - 2))
            idx = [start, start + 1, start + 2]
        else:
            g1, g2 = (int(x) for x in rng.integers(1, max_gap + 1, 2))
            start = int(rng.integers(0, max(1, t - g1 - g2)))
            idx = [start, min(t - 1, start + g1), min(t - 1, start + g1 + g2)]
        n = min(clip.num_objects, k)
        m = np.zeros((3, k, clip.height, clip.width), np.float32)
        m[:, :n] = clip.masks[idx, :n]
        lab = masks_to_labels(m[:, :n] > 0).astype(np.int64)  # (3, H, W)
        v = np.zeros(k, np.float32)
        v[:n] = 1
        imgs.append(clip.frames[idx])
        masks.append(m)
        labels.append(lab)
        valid.append(v)
    return (torch.from_numpy(np.stack(imgs)), torch.from_numpy(np.stack(masks)), torch.from_numpy(np.stack(labels)),
            torch.from_numpy(np.stack(valid)))


# ---- one iteration -----------------------------------------------------------------------------------
def forward_clip(net: Any, imgs: torch.Tensor, masks: torch.Tensor, obj_valid: torch.Tensor, sparse: bool
                 ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """STCN's 3-frame training pass; returns the aggregated logits of frames 1 and 2 and the gate cost."""
    caches = None
    if sparse:
        b = imgs.shape[0]
        caches = []
        for xs, ys in net.cache_shapes():
            caches += [torch.full((b, *xs), float("-inf")), torch.zeros((b, *ys))]
    k0, _, f16, _, _, caches = net.encode_key(imgs[:, 0], caches, force_dense=True, sparse_train=sparse)
    v0 = net.encode_value(imgs[:, 0], masks[:, 0], f16)  # (B, K, Cv, h, w)
    mem_k, mem_v = [k0], [v0]
    logits, costs = [], []
    for t in (1, 2):
        key, qv, f16, f8, f4, caches = net.encode_key(imgs[:, t], caches if sparse else None, sparse_train=sparse)
        costs += list(getattr(net, "sparse_cost", []) if sparse else [])
        mk, mv = torch.stack(mem_k, 1), torch.stack(mem_v, 1)
        valid = torch.ones(mk.shape[:2])
        lg = net.segment_logits(key, qv, f8, f4, mk, mv, valid, obj_valid)  # (B, 1+K, H, W)
        logits.append(lg)
        if t == 1:
            prob = torch.softmax(lg, 1)[:, 1:] * obj_valid[:, :, None, None]
            mem_k.append(key)
            mem_v.append(net.encode_value(imgs[:, 1], prob, f16))
    cost = torch.stack(costs).mean() if costs else torch.zeros(())
    return logits, cost


def bootstrapped_ce(logits: torch.Tensor, labels: torch.Tensor, top_p: float) -> torch.Tensor:
    """STCN's bootstrapped cross-entropy: the mean of the hardest ``top_p`` pixel losses per sample
    (objects cover a few % of a frame; plain CE settles on all-background)."""
    raw = F.cross_entropy(logits, labels, reduction="none").flatten(1)  # (B, H*W)
    k = max(1, int(raw.shape[1] * top_p))
    return raw.topk(k, dim=1).values.mean()


def train(model: Any, args: argparse.Namespace, log_every: int = 20) -> dict[str, Any]:
    net = model.net
    cfg = model.cfg
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    pool = make_pool(args.clips, args.frames, (cfg.height, cfg.width), args.seed + 1000, cfg.max_objects)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(2, args.iters), pct_start=0.1)
    net.train()
    t0, done, hist = time.perf_counter(), 0, []
    for it in range(args.iters):
        if time.perf_counter() - t0 > args.minutes * 60:
            log.warning("time budget of %.1f min spent after %d iterations", args.minutes, it)
            break
        sparse_iter = args.sparse and it % 2 == 1  # mixed sparse training: alternate dense / sparse
        imgs, masks, labels, valid = sample_batch(pool, rng, args.batch, cfg.max_objects, args.max_gap, sparse_iter)
        kb = int(valid.sum(1).max())  # object slots this batch uses (the graphs have K; training needs fewer)
        logits, cost = forward_clip(net, imgs, masks[:, :, :kb], valid[:, :kb], sparse_iter)
        loss = sum(bootstrapped_ce(lg, labels[:, t + 1], args.top_p) for t, lg in enumerate(logits)) / 2
        if sparse_iter and net.gates is not None:
            loss = loss + args.lam * (cost - args.target).abs()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if net.gates is not None:  # keep each gate diagonal, so it converts into thresholds exactly
            for g in net.gates.values():
                g.proj.weight.grad[0, 1] = 0
                g.proj.weight.grad[1, 0] = 0
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        done = it + 1
        hist.append(float(loss.detach()))
        if it % log_every == 0:
            extra = f" sparse cost {float(cost):.3f}" if sparse_iter and net.gates is not None else ""
            print(f"iter {it:4d} loss {np.mean(hist[-log_every:]):.4f}{extra} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    net.eval()
    return {"iters": done, "seconds": round(time.perf_counter() - t0, 1), "final_loss": float(np.mean(hist[-20:]))}


def gate_thresholds(net: Any) -> tuple[list[float], list[float]]:
    """Per-layer (tau_t, tau_s) equivalent to each diagonal learned gate (change iff w R + b > 0)."""
    tt, ts = [], []
    for (name, _), t0, s0 in zip(net.sparse_layers, net.tau_t, net.tau_s):
        w = net.gates[name.replace(".", "-")].proj
        a, b = float(w.weight[0, 0]), float(w.bias[0])
        c, d = float(w.weight[1, 1]), float(w.bias[1])
        tt.append(max(0.0, -b / a) if a > 0 else t0)
        ts.append(max(0.0, -d / c) if c > 0 else s0)
    return tt, ts


# ---- evaluation ----------------------------------------------------------------------------------------
def evaluate(model: Any, clips: list[Any], backend: str = "torch") -> dict[str, float]:
    """Mean DAVIS J&F over clips, running the real runner (policy, memory ring, sparse caches)."""
    from edgevis.data import davis_j_and_f, masks_to_labels
    from edgevis.runtime.pipeline import open_backends
    from edgevis.runtime.runner import StreamRunner

    jf, j, f = [], [], []
    backends = open_backends(model, backend)
    for clip in clips:
        gt = masks_to_labels(clip.masks)  # (T, H, W)
        runner = StreamRunner(model.policy(first_mask=gt[0].astype(np.int64)), backends)
        pred = np.zeros_like(gt)
        for t, frame in enumerate(clip.frames):
            res = runner.step([frame])[0]
            for m, tid in zip(res.masks, res.track_ids):
                pred[t][m] = tid
        r = davis_j_and_f(gt, pred, clip.num_objects)
        jf.append(r["JF"])
        j.append(r["J"])
        f.append(r["F"])
    return {"JF": float(np.mean(jf)), "J": float(np.mean(j)), "F": float(np.mean(f)), "clips": len(clips)}


def heldout_clips(model: Any, n: int, frames: int = 30, seed: int = 777) -> list[Any]:
    from edgevis.data import make_dataset

    cfg = model.cfg
    return make_dataset(n, seed, num_frames=frames, height=cfg.height, width=cfg.width,
                        num_objects=(1, min(3, cfg.max_objects)), max_speed=4.0)


def main(model_name: str, argv: list[str]) -> int:
    from edgevis.models.spvos import SpVOSModel
    from edgevis.models.zoo import WEIGHTS_DIR, model_entry

    args = parse(argv)
    if args.learned_gate and not args.sparse:
        raise EdgevisError("--learned-gate trains the sparse gates; it needs --sparse too")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    base = model_entry(model_name).build()
    if not isinstance(base, SpVOSModel):
        raise EdgevisError(f"edgevis.train.spvos trains SpVOS models; received '{model_name}'")
    changes: dict[str, Any] = {"learned_gate": bool(args.learned_gate)}
    if args.tau_t is not None:
        changes["tau_t"] = args.tau_t
    if args.tau_s is not None:
        changes["tau_s"] = args.tau_s
    model = SpVOSModel(model_name, replace(base.cfg, **changes))
    if args.init:
        model.load_weights(args.init)
    stats = train(model, args)
    sparse_meta = {"tau_t": list(model.net.tau_t), "tau_s": list(model.net.tau_s), "block": model.cfg.block,
                   "refresh": model.cfg.refresh}
    if model.net.gates is not None:
        tt, ts = gate_thresholds(model.net)
        sparse_meta.update(tau_t=tt, tau_s=ts, from_learned_gate=True)
    sd = {k: v for k, v in model.net.state_dict().items() if not k.startswith("gates.")}
    meta = {"command": "edgevis train --model " + model_name + " " + shlex.join(argv), "seed": args.seed,
            "data": f"{args.clips} synthetic clips x {args.frames} frames (make_dataset seed {args.seed + 1000})",
            "train": stats, "sparse": sparse_meta, "torch": str(torch.__version__)}
    out = Path(args.out) if args.out else WEIGHTS_DIR / f"{model_name}.pt"
    if args.eval_clips:
        deploy = SpVOSModel(model_name, replace(model.cfg, learned_gate=False))
        deploy.load_state_dict(sd)
        deploy.set_sparse(tau_t=tuple(sparse_meta["tau_t"]), tau_s=tuple(sparse_meta["tau_s"]))
        clips = heldout_clips(deploy, args.eval_clips)
        meta["eval_sparse"] = evaluate(deploy, clips)
        deploy.set_sparse(sparse=False)
        meta["eval_dense"] = evaluate(deploy, clips)
        print(f"held-out J&F ({args.eval_clips} clips): dense {meta['eval_dense']['JF']:.4f}, "
              f"sparse {meta['eval_sparse']['JF']:.4f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model_name, "state_dict": sd, "meta": meta}, out)
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB) after {stats['iters']} iterations in {stats['seconds']} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1], sys.argv[2:]))
