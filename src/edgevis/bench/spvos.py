"""SpVOS study: key-encoder FLOPs and wall-clock dense vs sparse, J&F dense vs sparse, memory per stream.

Footage (all synthetic; there is no real video on the development machines):
- ``synthetic``: held-out :func:`edgevis.data.make_clip` clips (textured objects over a slowly PANNING
  background) with ground truth: J&F, FLOPs, wall-clock;
- ``static``: the same generator with a STATIC camera, sensor noise (2/255) and 1% flicker, with
  ground truth: J&F, FLOPs, wall-clock;
- ``camera``: the procedural static-camera footage of ``edgevis.bench.sparse_conv`` (textured room,
  pillar, noise, flicker; 480x864 resized to the model input, then 2.5/255 noise added): FLOPs and
  wall-clock only (no ground truth).

Thresholds are relative: tau for a sparse conv = ``rel * mean |input|`` of that conv on calibration
frames (held-out synthetic clips), so one number fits every layer (``--rel-t``, ``--rel-s``).
FLOPs: the dense key encoder counted by ``torch.utils.flop_counter``; the sparse one replaces each
sparse conv's dense FLOPs by what its decisions cost (``SparseConvStats``: COMPUTE pixels, lattice
points of INTERPOLATE blocks, the gate). Wall-clock: ``encode_key`` in eager PyTorch (the sparse fast
path), dense and sparse interleaved frame by frame, medians. Feature error: the mean relative L2 error of
the sparse stage's key and query value against the dense stage's on the same frame, the measure of what
reuse costs that needs no ground truth (and no trained weights). Memory: the bytes of a stream's state
(memory ring, object slots, sparse caches) over ``--memory-frames`` frames of the runner. Bound: the
share of the dense encode_key's wall-clock spent in the convs made sparse, hence the best speedup that
skipping them could give.

    python -m edgevis.bench.spvos                  # spvos_tiny, shipped weights
    python -m edgevis.bench.spvos --quick
    python -m edgevis.bench.spvos --model spvos --untrained --rel-t 1.0 --clips 2   # full size, no J&F

Prints Markdown tables and appends a JSON row to reports/bench/spvos.jsonl.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from edgevis.bench.machine import append_jsonl, describe_machine, relative_error
from edgevis.bench.sparsity import SparsityProbe, sparse_layers

REPORT = Path("reports/bench/spvos.jsonl")


def static_clips(n: int, hw: tuple[int, int], frames: int, seed: int = 4242) -> list[Any]:
    from edgevis.data import make_dataset

    return make_dataset(n, seed, num_frames=frames, height=hw[0], width=hw[1], num_objects=(1, 3), max_speed=4.0,
                        pan_speed=0.0, noise_std=2.0, flicker=0.01)


def camera_frames(n: int, hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Procedural static-camera footage, (n, H, W, 3) uint8 BGR at the model input size."""
    from edgevis.bench.sparse_conv import camera_like_frames

    rng = np.random.default_rng(seed)
    out = []
    for f in camera_like_frames(n, 480, 864, seed=seed, noise=0.0):
        rgb = (f[0].permute(1, 2, 0).numpy() * 255.0).astype(np.float32)
        small = cv2.resize(rgb, (hw[1], hw[0]), interpolation=cv2.INTER_AREA) + rng.normal(0, 2.5, (*hw, 3))
        out.append(np.clip(small[..., ::-1] + 0.5, 0, 255).astype(np.uint8))
    return np.stack(out)


def calibrate(model: Any, frames: np.ndarray, rel_t: float, rel_s: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-layer absolute thresholds: rel * mean |input| of each sparse conv over ``frames`` (dense pass)."""
    means: dict[int, list[float]] = {}

    def record(name: str, conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        means.setdefault(id(conv), []).append(float(x.abs().mean()))
        return conv(x)

    with torch.no_grad():
        for f in frames:
            model.net.encode_key(torch.from_numpy(f)[None], None, runner=record)
    mean = [float(np.mean(means[id(conv)])) for _, conv in model.net.sparse_layers]
    return tuple(rel_t * m for m in mean), tuple(rel_s * m for m in mean)


def dense_flops(model: Any) -> float:
    """Dense encode_key FLOPs (torch's FlopCounterMode, custom ops counted dense)."""
    cfg = model.cfg
    x = torch.zeros(1, cfg.height, cfg.width, 3, dtype=torch.uint8)
    with FlopCounterMode(display=False) as c, torch.no_grad():
        model.net.encode_key(x, None)
    return float(c.get_total_flops())


def run_key_encoder(model: Any, dense_model: Any, frames: np.ndarray, refresh: int, total_dense: float,
                    ) -> dict[str, Any]:
    """Sparse encode_key over ``frames`` (caches carried, dense every ``refresh`` frames) vs dense: FLOPs, time,
    and the mean relative error of the key and the query value against the dense stage's (what the reuse
    costs in the features, with or without ground truth). ``total_dense``: the dense encode_key's FLOPs
    (:func:`dense_flops`)."""
    spec = model.iospec("encode_key")
    probe = SparsityProbe(model, sparse_layers(model))
    caches = [s.initial({"B": 1}) for s in spec.states]
    t_dense, t_sparse, err_key, err_qval = [], [], [], []
    stage_s, stage_d = model.stage("encode_key"), dense_model.stage("encode_key")
    with torch.inference_mode():
        for t, f in enumerate(frames):
            img = torch.from_numpy(f)[None]
            if refresh and t % refresh == 0:
                caches = [s.initial({"B": 1}) if s.init == "neg_inf" else c for s, c in zip(spec.states, caches)]
            probe.before_step()
            t0 = time.perf_counter()
            ref = stage_d(img)
            t1 = time.perf_counter()
            out = stage_s(img, *caches)
            t2 = time.perf_counter()
            probe.after_step()
            caches = list(out[5:])
            t_dense.append(t1 - t0)
            t_sparse.append(t2 - t1)
            err_key.append(relative_error(out[0], ref[0]))
            err_qval.append(relative_error(out[1], ref[1]))
    stats = probe.totals()
    n = probe.frames
    # per frame: the dense encoder with the sparse convs' dense FLOPs replaced by what their decisions cost
    flops_sparse = total_dense - (stats.flops_dense - stats.flops_sparse) / n
    fr = stats.fractions()
    return {
        "frames": len(frames), "flops_dense_M": total_dense / 1e6, "flops_sparse_M": flops_sparse / 1e6,
        "flops_saved": 1.0 - flops_sparse / total_dense, "sparse_share": stats.flops_dense / n / total_dense,
        "reuse": fr[0], "interpolate": fr[1], "compute": fr[2],
        "ms_dense": 1e3 * float(np.median(t_dense)), "ms_sparse": 1e3 * float(np.median(t_sparse)),
        "speedup": float(np.median(t_dense) / np.median(t_sparse)),
        "key_err": float(np.mean(err_key)), "qval_err": float(np.mean(err_qval)),
    }


def sparse_conv_bound(dense_model: Any, frames: np.ndarray) -> dict[str, float]:
    """How much of the DENSE encode_key's wall-clock the convs that the sparse model makes sparse take
    (medians over ``frames``), and the speedup bound that follows: encode_key could not beat
    ``dense / (dense - those convs)`` even if the sparse convs cost nothing. The total is the dense
    stage; the convs are timed one by one in a pass that runs them through a timing runner."""
    t_convs: list[float] = []

    def timed(name: str, conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        y = conv(x)
        t_convs.append(time.perf_counter() - t0)
        return y

    stage = dense_model.stage("encode_key")
    totals, shares = [], []
    with torch.inference_mode():
        for f in frames:
            img = torch.from_numpy(f)[None]
            t0 = time.perf_counter()
            stage(img)
            totals.append(time.perf_counter() - t0)
            t_convs.clear()
            dense_model.net.encode_key(img, None, runner=timed)
            shares.append(sum(t_convs))
    total, convs = float(np.median(totals)), float(np.median(shares))
    return {"ms_dense": 1e3 * total, "ms_sparse_convs_dense": 1e3 * convs, "share": convs / total,
            "speedup_bound": total / max(total - convs, 1e-9)}


def memory_per_stream(model: Any, frames: int, first_mask: np.ndarray, clip_frames: np.ndarray) -> dict[str, Any]:
    from edgevis.runtime.pipeline import open_backends
    from edgevis.runtime.runner import StreamRunner

    runner = StreamRunner(model.policy(first_mask=first_mask), open_backends(model, "torch"))
    sizes = []
    for t in range(frames):
        runner.step([clip_frames[t % len(clip_frames)]])
        st = runner.states[0]
        sizes.append(int(st.mem_keys.nbytes + st.mem_values.nbytes + st.mem_valid.nbytes + st.obj_valid.nbytes
                         + sum(c.nbytes for c in st.caches)))
    full = 1 + (model.cfg.mem_slots - 1) * model.cfg.mem_every  # frame index by which the ring is full
    return {"frames": frames, "bytes_first": sizes[0], "bytes_last": sizes[-1],
            "constant_after_ring_full": len(set(sizes[full:])) == 1, "ring_full_at_frame": full,
            "mem_valid_last": float(runner.states[0].mem_valid.sum())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from edgevis.models.spvos import SpVOSModel
    from edgevis.models.zoo import build_model
    from edgevis.train.spvos import evaluate, heldout_clips

    p = argparse.ArgumentParser(prog="python -m edgevis.bench.spvos", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="spvos_tiny")
    p.add_argument("--weights", default=None)
    p.add_argument("--rel-t", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    p.add_argument("--rel-s", type=float, default=0.0)
    p.add_argument("--clips", type=int, default=6)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--memory-frames", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--untrained", action="store_true", help="the weights are not trained (the full-size model): "
                   "FLOPs, wall-clock and feature error on all footage, but no J&F and no memory run")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=REPORT)
    args = p.parse_args(argv)
    if args.quick:
        args.clips, args.frames, args.memory_frames, args.rel_t = 2, 12, 60, args.rel_t[:2]
    torch.set_num_threads(args.threads)
    model: SpVOSModel = build_model(args.model, args.weights)  # type: ignore[assignment]
    dense = SpVOSModel(model.name, model.cfg)
    dense.load_state_dict(model.net.state_dict())
    dense.set_sparse(sparse=False)
    hw = (model.cfg.height, model.cfg.width)
    footage = {"synthetic": heldout_clips(model, args.clips, args.frames),
               "static": static_clips(args.clips, hw, args.frames)}
    cam = camera_frames(args.frames * 2, hw)
    calib = np.concatenate([c.frames[:4] for c in footage["synthetic"]])
    jf_dense = {} if args.untrained else {k: evaluate(dense, v) for k, v in footage.items()}
    bound = sparse_conv_bound(dense, cam[: args.frames])
    total_dense = dense_flops(model)  # the same for every threshold
    rows = []
    for rel in args.rel_t:
        tau_t, tau_s = calibrate(model, calib, rel, args.rel_s)
        model.set_sparse(tau_t=tau_t, tau_s=tau_s)
        row: dict[str, Any] = {"rel_t": rel, "rel_s": args.rel_s, "block": model.cfg.block, "refresh": model.cfg.refresh}
        for name, clips in footage.items():
            frames = np.concatenate([c.frames for c in clips])
            row[name] = run_key_encoder(model, dense, frames, model.cfg.refresh, total_dense)
            if jf_dense:
                jf = evaluate(model, clips)["JF"]
                row[name].update(JF_dense=jf_dense[name]["JF"], JF_sparse=jf,
                                 JF_kept=jf / max(jf_dense[name]["JF"], 1e-9))
        row["camera"] = run_key_encoder(model, dense, cam, model.cfg.refresh, total_dense)
        row["tau_t"], row["tau_s"] = list(tau_t), list(tau_s)
        rows.append(row)
    from edgevis.data import masks_to_labels

    mem: dict[str, Any] = {}
    if not args.untrained and args.memory_frames:
        clip0 = footage["synthetic"][0]
        mem = memory_per_stream(model, args.memory_frames, masks_to_labels(clip0.masks[0]).astype(np.int64),
                                clip0.frames)
    print(f"\n## SpVOS study: {model.name} ({hw[0]}x{hw[1]}, K={model.cfg.max_objects}, T={model.cfg.mem_slots}, "
          f"block {model.cfg.block}, refresh {model.cfg.refresh}), eager PyTorch CPU, {args.threads} threads")
    print("Footage is synthetic: 'synthetic' = held-out make_clip clips (panning background), 'static' = make_clip "
          "with a static camera + noise, 'camera' = procedural static-camera footage (no ground truth). "
          "key/qval err: mean relative L2 error of the sparse stage's key and query value against dense."
          + (" Untrained weights: no J&F." if args.untrained else "") + "\n")
    print("| rel tau_t | footage | J&F dense | J&F sparse | kept | key-enc MFLOP dense | sparse | saved | "
          "reuse/interp/compute | encode_key ms dense | sparse | speedup | key err | qval err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for name in ("synthetic", "static", "camera"):
            if name not in r:
                continue
            d = r[name]
            jf = (f"{d['JF_dense']:.4f} | {d['JF_sparse']:.4f} | {100 * d['JF_kept']:.1f}%" if "JF_dense" in d
                  else "- | - | -")
            print(f"| {r['rel_t']} | {name} | {jf} | {d['flops_dense_M']:.1f} | {d['flops_sparse_M']:.1f} | "
                  f"{100 * d['flops_saved']:.1f}% | {d['reuse']:.2f}/{d['interpolate']:.2f}/{d['compute']:.2f} | "
                  f"{d['ms_dense']:.2f} | {d['ms_sparse']:.2f} | {d['speedup']:.2f}x | {100 * d['key_err']:.2f}% | "
                  f"{100 * d['qval_err']:.2f}% |")
    print(f"\nThe convs made sparse take {bound['ms_sparse_convs_dense']:.2f} ms of the dense encode_key's "
          f"{bound['ms_dense']:.2f} ms ({100 * bound['share']:.0f}%, camera footage): even free sparse convs could "
          f"not make encode_key faster than {bound['speedup_bound']:.2f}x here.")
    if mem:
        print(f"\nMemory per stream: {mem['bytes_last'] / 1024:.1f} KiB after {mem['frames']} frames "
              f"(first frame {mem['bytes_first'] / 1024:.1f} KiB; constant after the ring fills at frame "
              f"{mem['ring_full_at_frame']}: {mem['constant_after_ring_full']}).")
    doc = {"bench": "spvos", "model": model.name, "weights": args.weights or "shipped", "untrained": args.untrained, "machine": describe_machine(),
           "threads": args.threads, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows, "memory": mem,
           "sparse_conv_bound": bound,
           "footage": "synthetic (make_clip held-out, make_clip static camera + noise, procedural camera-like)"}
    append_jsonl(args.out, doc)
    return doc


if __name__ == "__main__":
    main()
