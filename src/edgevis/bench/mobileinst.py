"""MobileInst on CPU: per-graph latency for PyTorch eager vs onnxruntime FP32 / INT8, 1 and 2 threads.

G1 = ``frame`` (backbone + mask decoder, every frame), G2 = ``key`` (instance decoder, key frames),
G3 = ``mask`` (kernels x X_mask, every frame). Per-frame latency of a non-key frame is G1 + G3, of a
key frame G1 + G2 + G3; amortised over a key interval T it is G1 + G3 + G2 / T. The onnxruntime
graphs are the ARM set (``export_for_arm``: offline-optimised FP32, INT8 QDQ frame stage) run with the
ARM session settings (spinning off, intra-op threads = cores). A last row runs the real StreamRunner
(policy included) for T = 3. Prints a Markdown table and appends JSON rows to
``reports/bench/mobileinst.jsonl``.

usage: python -m edgevis.bench.mobileinst [--model mobileinst] [--threads 1,2] [--reps 15]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgevis.bench.machine import append_jsonl, bench_parser, describe_machine, median_ms
from edgevis.models.zoo import build_model

PAPER_MS = 176.0  # MobileInst, one Snapdragon 778G CPU core (paper, COCO-size input)


def frames_for(model: Any, n: int = 4) -> list[np.ndarray]:
    from edgevis.data.synthetic import make_clip
    from edgevis.runtime.preprocess import prepare

    pol = model.policy()
    clip = make_clip(3, num_frames=n, height=pol.hw[0], width=pol.hw[1], num_objects=3)
    return [prepare(f, pol.hw, pol.pre)[0].numpy() for f in clip.frames]  # (1, H, W, 3) uint8 each


def time_torch(model: Any, image: np.ndarray, threads: int, reps: int, warmup: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    x = torch.from_numpy(image)
    with torch.inference_mode():
        x_mask, x6 = model.stage("frame")(x)
        kernels, _, _ = model.stage("key")(x_mask, x6)
        return {
            "G1": median_ms(lambda: model.stage("frame")(x), warmup=warmup, iters=reps),
            "G2": median_ms(lambda: model.stage("key")(x_mask, x6), warmup=warmup, iters=reps),
            "G3": median_ms(lambda: model.stage("mask")(kernels, x_mask), warmup=warmup, iters=reps),
        }


def time_ort(paths: dict[str, Path], image: np.ndarray, threads: int, reps: int, warmup: int) -> dict[str, float]:
    from edgevis.export.arm import arm_session

    s = {k: arm_session(p, threads) for k, p in paths.items()}
    x_mask, x6 = s["frame"].run(["x_mask", "x6"], {"image": image})
    kernels = s["key"].run(["kernels"], {"x_mask": x_mask, "x6": x6})[0]
    return {
        "G1": median_ms(lambda: s["frame"].run(None, {"image": image}), warmup=warmup, iters=reps),
        "G2": median_ms(lambda: s["key"].run(None, {"x_mask": x_mask, "x6": x6}), warmup=warmup, iters=reps),
        "G3": median_ms(lambda: s["mask"].run(None, {"kernels": kernels, "x_mask": x_mask}), warmup=warmup, iters=reps),
    }


def raw_mask_agreement(fp32: dict[str, Path], int8: dict[str, Path], images: list[np.ndarray]) -> float:
    """IoU of the binary masks of all queries (FP32 vs INT8 chain): meaningful even for untrained weights."""
    from edgevis.export.arm import arm_session

    def chain(paths: dict[str, Path], x: np.ndarray) -> np.ndarray:
        s = {k: arm_session(p, 2) for k, p in paths.items()}
        x_mask, x6 = s["frame"].run(["x_mask", "x6"], {"image": x})
        k = s["key"].run(["kernels"], {"x_mask": x_mask, "x6": x6})[0]
        return s["mask"].run(["masks"], {"kernels": k, "x_mask": x_mask})[0] > 0

    ious = []
    for x in images:
        a, b = chain(fp32, x), chain(int8, x)
        union = np.logical_or(a, b).sum()
        ious.append(1.0 if union == 0 else float(np.logical_and(a, b).sum() / union))
    return float(np.mean(ious))


def runner_ms(model: Any, onnx_dir: Path, threads: int, key_interval: int, frames: int = 18) -> float:
    """Mean per-frame wall time of the StreamRunner (onnxruntime FP32 ARM graphs, policy included)."""
    from edgevis.data.synthetic import make_clip
    from edgevis.runtime.backends import OrtBackend
    from edgevis.runtime.runner import StreamRunner

    pol = model.policy(key_interval=key_interval)
    backends = {s: OrtBackend(onnx_dir / f"{s}.arm.onnx", threads=threads, spinning=False) for s in model.stages}
    runner = StreamRunner(pol, backends)
    clip = make_clip(4, num_frames=frames + 3, height=pol.hw[0], width=pol.hw[1], num_objects=3)
    for f in clip.frames[:3]:
        runner.step([f])
    t0 = time.perf_counter()
    for f in clip.frames[3:]:
        runner.step([f])
    ms = (time.perf_counter() - t0) * 1e3 / frames
    runner.close()
    return ms


def run(model_name: str, threads: list[int], reps: int, warmup: int, out_dir: Path, reuse: bool) -> list[dict]:
    from edgevis.export.arm import export_for_arm

    model = build_model(model_name)
    hw = model.policy().hw
    onnx_root = out_dir / "bench" / "onnx-arm"
    graphs = onnx_root / model.name
    if not (reuse and (graphs / "arm.json").is_file()):
        for line in export_for_arm(model, onnx_root, int8=True):
            print(line, flush=True)
    info = json.loads((graphs / "arm.json").read_text())
    fp32 = {s: graphs / n for s, n in info["fp32"].items()}
    int8 = {s: graphs / info.get("int8", {}).get(s, info["fp32"][s]) for s in model.stages}
    images = frames_for(model)
    agreement_raw = raw_mask_agreement(fp32, int8, images[:2])
    machine = describe_machine()
    rows = []
    for t in threads:
        for backend, precision, fn in (
            ("torch", "fp32", lambda t=t: time_torch(model, images[0], t, reps, warmup)),
            ("ort", "fp32", lambda t=t: time_ort(fp32, images[0], t, reps, warmup)),
            ("ort", "int8", lambda t=t: time_ort(int8, images[0], t, reps, warmup)),
        ):
            ms = fn()
            rows.append({"model": model_name, "resolution": f"{hw[0]}x{hw[1]}", "backend": backend,
                         "precision": precision, "threads": t, **{k: round(v, 2) for k, v in ms.items()},
                         "G1+G3": round(ms["G1"] + ms["G3"], 2),
                         **{f"amortised_T{T}": round(ms["G1"] + ms["G3"] + ms["G2"] / T, 2) for T in (1, 3, 5)}})
            print(f"timed {backend} {precision} {t} thread(s): {rows[-1]['G1+G3']} ms per non-key frame", flush=True)
    for r in rows:
        base = next(b for b in rows if b["backend"] == "torch" and b["threads"] == r["threads"])
        r["speedup_vs_torch_T1"] = round(base["amortised_T1"] / r["amortised_T1"], 2)
    runner_t3 = runner_ms(model, graphs, threads[0], 3)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    extra = {"int8_instance_mask_agreement": info.get("int8_mask_agreement_iou"),
             "int8_raw_query_mask_iou": agreement_raw, f"runner_ort_fp32_T3_{threads[0]}thread_ms": runner_t3,
             "paper_ms_snapdragon778g_1core": PAPER_MS}
    for r in rows:
        append_jsonl(out_dir / "bench" / "mobileinst.jsonl", {**r, **extra, "machine": machine, "timestamp": stamp})
    print(table(rows, machine, extra, threads[0]))
    return rows


def table(rows: list[dict], machine: dict, extra: dict, t0: int) -> str:
    head = (f"**{rows[0]['model']}** at {rows[0]['resolution']} — {machine.get('cpu')} ({machine.get('cores')} cores, "
            f"shared), torch {machine.get('torch')}, onnxruntime {machine.get('onnxruntime')}; median ms per call\n\n"
            "| backend | precision | threads | G1 frame | G2 key | G3 mask | G1+G3 | T=1 | T=3 | T=5 | speedup vs torch (T=1) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head] + [
        f"| {r['backend']} | {r['precision']} | {r['threads']} | {r['G1']:.1f} | {r['G2']:.1f} | {r['G3']:.2f} | "
        f"{r['G1+G3']:.1f} | {r['amortised_T1']:.1f} | {r['amortised_T3']:.1f} | {r['amortised_T5']:.1f} | "
        f"{r['speedup_vs_torch_T1']:.2f}x |" for r in rows]
    inst = extra["int8_instance_mask_agreement"]
    lines.append(f"\nINT8 vs FP32 mask agreement: {inst if inst is None else round(inst, 3)} (mean IoU of instances matched by IoU; "
                 "trivially 1 when the weights detect nothing), "
                 f"all-query binary masks IoU {extra['int8_raw_query_mask_iou']:.3f}. StreamRunner (ORT FP32, {t0} "
                 f"thread, T=3, policy included): {extra[f'runner_ort_fp32_T3_{t0}thread_ms']:.1f} ms/frame; paper: "
                 f"{PAPER_MS:.0f} ms on one Snapdragon 778G core.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__, threads="1,2", reps=15, warmup=3, out="reports")
    p.add_argument("--model", default="mobileinst")
    p.add_argument("--reuse", action="store_true", help="reuse the exported ARM set under reports/bench/onnx-arm")
    a = p.parse_args(argv)
    run(a.model, [int(t) for t in a.threads.split(",")], a.reps, a.warmup, Path(a.out), a.reuse)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
