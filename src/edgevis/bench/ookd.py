"""OOKD student on CPU: per-frame latency of the ``frame`` stage (PyTorch eager vs onnxruntime, portable
graph) and, separately, the IDOL tracker's time per frame with 10 live tracklets (target < 2 ms).

The tracker is timed on scripted detections (K = top_k per frame, raw association embeddings of the
model's width, masks at the model's stride-4 resolution), after warm-up frames that open 10 tracklets,
so the matching, both NMS passes and the memory updates run at full size every frame.
Prints a Markdown table and appends JSON rows to ``reports/bench/ookd.jsonl``.

usage: python -m edgevis.bench.ookd [--model ookd] [--threads 1,2] [--reps 10]
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgevis.bench.machine import append_jsonl, bench_parser, describe_machine, median_ms
from edgevis.models.zoo import build_model
from edgevis.runtime.tracker import IdolTracker

TRACKER_TARGET_MS = 2.0


def frame_input(model: Any) -> torch.Tensor:
    from edgevis.data.synthetic import make_clip
    from edgevis.runtime.preprocess import prepare

    pol = model.policy()
    clip = make_clip(3, num_frames=1, height=pol.hw[0], width=pol.hw[1], num_objects=3)
    return prepare(clip.frames[0], pol.hw, pol.spec.preprocess)[0]  # (1, H, W, 3) uint8


def time_torch(model: Any, image: torch.Tensor, threads: int, reps: int, warmup: int) -> float:
    torch.set_num_threads(threads)
    stage = model.stage("frame").eval()
    with torch.inference_mode():
        return median_ms(lambda: stage(image), warmup=warmup, iters=reps)


def time_ort(path: Path, image: torch.Tensor, threads: int, reps: int, warmup: int) -> float:
    from edgevis.runtime.backends import OrtBackend

    backend = OrtBackend(path, threads=threads)
    feeds = {"image": image}
    ms = median_ms(lambda: backend(feeds), warmup=warmup, iters=reps)
    backend.close()
    return ms


def scripted_detections(t: int, k: int, dim: int, mask_hw: tuple[int, int], rng: np.random.Generator,
                        identities: np.ndarray) -> tuple[np.ndarray, ...]:
    """Frame t: ``k`` objects on a grid drifting right, one identity embedding each (+ noise)."""
    h, w = mask_hw
    masks = np.zeros((k, h, w), bool)
    cols = int(np.ceil(np.sqrt(k)))
    bh, bw = h // (cols + 1), w // (cols + 1)
    for i in range(k):
        y, x = (i // cols) * bh + 2, (i % cols) * bw + 2 + (t % 4)
        masks[i, y : y + bh - 4, x : x + bw - 4] = True
    scores = np.linspace(0.95, 0.6, k).astype(np.float32)
    embeds = identities + rng.normal(0, 0.05, identities.shape).astype(np.float32)
    return scores, np.zeros(k, np.int64), embeds, masks


def time_tracker(k: int, dim: int, mask_hw: tuple[int, int], frames: int = 200) -> dict[str, float]:
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:, :k].T  # (k, dim) orthonormal rows
    identities = (4.0 * basis).astype(np.float32)
    tracker = IdolTracker(debug=False)
    for t in range(12):  # warm-up: 10 tracklets live
        tracker.step(*scripted_detections(t, k, dim, mask_hw, rng, identities))
    live = len(tracker.tracklets)
    times = []
    for t in range(frames):
        det = scripted_detections(12 + t, k, dim, mask_hw, rng, identities)
        t0 = time.perf_counter()
        out = tracker.step(*det)
        times.append((time.perf_counter() - t0) * 1e3)
    assert len(out.track_ids) == k and len(tracker.tracklets) == live
    return {"tracker_ms_median": statistics.median(times), "tracker_ms_p90": float(np.percentile(times, 90)),
            "tracklets": live}


def run(model_name: str, threads: list[int], reps: int, warmup: int, out_dir: Path) -> list[dict]:
    from edgevis.runtime.pipeline import ensure_onnx

    model = build_model(model_name)
    cfg = model.cfg
    onnx = ensure_onnx(model, "frame", "portable", out_dir / "bench" / "onnx")
    image = frame_input(model)
    machine = describe_machine()
    trk = time_tracker(cfg.top_k, cfg.embed_dim, cfg.mask_hw)
    rows = []
    for t in threads:
        for backend, fn in (("torch", lambda t=t: time_torch(model, image, t, reps, warmup)),
                            ("ort", lambda t=t: time_ort(onnx, image, t, reps, warmup))):
            ms = fn()
            rows.append({"model": model_name, "resolution": f"{cfg.height}x{cfg.width}", "backend": backend,
                         "flavor": "portable" if backend == "ort" else "eager", "threads": t, "frame_ms": round(ms, 2),
                         "frame_plus_tracker_ms": round(ms + trk["tracker_ms_median"], 2)})
            print(f"timed {backend} {t} thread(s): {ms:.1f} ms per frame", flush=True)
    for r in rows:
        base = next(b for b in rows if b["backend"] == "torch" and b["threads"] == r["threads"])
        r["speedup_vs_torch"] = round(base["frame_ms"] / r["frame_ms"], 2)
    extra = {**{k: round(v, 4) if isinstance(v, float) else v for k, v in trk.items()},
             "tracker_target_ms": TRACKER_TARGET_MS, "top_k": cfg.top_k, "embed_dim": cfg.embed_dim,
             "mask_hw": list(cfg.mask_hw)}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for r in rows:
        append_jsonl(out_dir / "bench" / "ookd.jsonl", {**r, **extra, "machine": machine, "timestamp": stamp})
    print(table(rows, machine, extra))
    return rows


def table(rows: list[dict], machine: dict, extra: dict) -> str:
    head = (f"**{rows[0]['model']}** `frame` stage at {rows[0]['resolution']} — {machine.get('cpu')} "
            f"({machine.get('cores')} cores, shared), torch {machine.get('torch')}, onnxruntime "
            f"{machine.get('onnxruntime')}; median ms per frame\n\n"
            "| backend | graph | threads | frame | frame + tracker | speedup vs torch |\n|---|---|---|---|---|---|")
    lines = [head] + [f"| {r['backend']} | {r['flavor']} | {r['threads']} | {r['frame_ms']:.1f} | "
                      f"{r['frame_plus_tracker_ms']:.1f} | {r['speedup_vs_torch']:.2f}x |" for r in rows]
    ok = "meets" if extra["tracker_ms_median"] < TRACKER_TARGET_MS else "MISSES"
    lines.append(f"\nIDOL tracker (numpy, {extra['tracklets']} tracklets, K={extra['top_k']} detections, "
                 f"{extra['embed_dim']}-d embeddings, masks {extra['mask_hw'][0]}x{extra['mask_hw'][1]}): median "
                 f"{extra['tracker_ms_median']:.3f} ms, p90 {extra['tracker_ms_p90']:.3f} ms per frame ({ok} the "
                 f"{TRACKER_TARGET_MS:.0f} ms target).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__, threads="1,2", reps=10, warmup=2, out="reports")
    p.add_argument("--model", default="ookd")
    a = p.parse_args(argv)
    run(a.model, [int(t) for t in a.threads.split(",")], a.reps, a.warmup, Path(a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
