"""`make arm-check`: MobileInst's ARM graphs on aarch64 onnxruntime (qemu user mode) vs x86 onnxruntime.

1. exports the ARM set (``export_for_arm``: offline-optimised FP32 graphs + INT8 QDQ frame stage);
2. runs every graph on x86 onnxruntime with the ARM session settings, on letterboxed synthetic frames;
3. runs the same graphs on the same inputs in the arm64 root (tools/arm/build_root.sh) through
   ``qemu-aarch64-static -L <root>`` and the root's python3 (tools/arm/run_arm.py);
4. compares per output (IOSpec tolerances for FP32) and the chained key-frame masks (IoU of the
   binary masks of all queries); the last line says PASS or FAIL. Exit 0 on PASS, 1 on FAIL, 3 when
   qemu or the root is missing.

usage: python tools/arm/arm_check.py [--model mobileinst_tiny] [--root .cache/arm-root] [--frames 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ARM_PY = REPO / "src" / "edgevis" / "export" / "arm.py"


def binary_iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def host_outputs(files: dict[str, str], graphs: Path, image: np.ndarray, threads: int) -> dict[str, np.ndarray]:
    """x86 run: per-stage inputs (FP32 chain outputs feed the next stage) and the chained masks."""
    from edgevis.export.arm import arm_session

    s = {k: arm_session(graphs / v, threads) for k, v in files.items()}
    job: dict[str, np.ndarray] = {"chain:image": image, "files": np.array(json.dumps(files))}
    ref: dict[str, np.ndarray] = {}
    x_mask, x6 = s["fp32:frame"].run(["x_mask", "x6"], {"image": image})
    kernels, logits, obj = s["fp32:key"].run(None, {"x_mask": x_mask, "x6": x6})
    masks = s["fp32:mask"].run(None, {"kernels": kernels, "x_mask": x_mask})[0]
    feeds = {"frame": {"image": image}, "key": {"x_mask": x_mask, "x6": x6}, "mask": {"kernels": kernels, "x_mask": x_mask}}
    for key, sess in s.items():
        stage = key.split(":")[1]
        for name, val in feeds[stage].items():
            job[f"{key}:in:{name}"] = val
        for o, val in zip([o.name for o in sess.get_outputs()], sess.run(None, feeds[stage])):
            ref[f"{key}:out:{o}"] = val
    ref["chain:fp32:masks"] = masks
    if "int8:frame" in s:
        xm8, x68 = s["int8:frame"].run(["x_mask", "x6"], {"image": image})
        k8 = s["fp32:key"].run(["kernels"], {"x_mask": xm8, "x6": x68})[0]
        ref["chain:int8:masks"] = s["fp32:mask"].run(["masks"], {"kernels": k8, "x_mask": xm8})[0]
    return job, ref


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobileinst_tiny")
    p.add_argument("--root", default=os.environ.get("ARM_ROOT", str(REPO / ".cache" / "arm-root")))
    p.add_argument("--work", default=str(REPO / ".cache" / "arm-check"))
    p.add_argument("--frames", type=int, default=2, help="frames per stage call (the dynamic batch B)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-int8", action="store_true")
    a = p.parse_args(argv)
    qemu = shutil.which("qemu-aarch64-static")
    root = Path(a.root)
    if qemu is None or not (root / ".complete").is_file():
        print(f"SKIP: needs qemu-aarch64-static ({qemu or 'absent'}) and the arm64 root {root} "
              "(apt-get install qemu-user-static debootstrap; tools/arm/build_root.sh)")
        return 3
    sys.path.insert(0, str(REPO / "src"))
    from edgevis.data.synthetic import make_clip
    from edgevis.export.arm import export_for_arm
    from edgevis.models.zoo import build_model
    from edgevis.runtime.preprocess import prepare

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(a.model)
    t0 = time.time()
    for line in export_for_arm(model, work / "onnx", int8=not a.no_int8):
        print(line, flush=True)
    graphs = work / "onnx" / model.name
    info = json.loads((graphs / "arm.json").read_text())
    files = {f"fp32:{s}": n for s, n in info["fp32"].items()}
    files.update({f"int8:{s}": n for s, n in info.get("int8", {}).items()})
    pol = model.policy()
    clip = make_clip(5, num_frames=a.frames, height=pol.hw[0] + 30, width=pol.hw[1] - 20, num_objects=3)
    image = np.concatenate([prepare(f, pol.hw, pol.pre)[0].numpy() for f in clip.frames])  # (B, H, W, 3) uint8
    job, ref = host_outputs(files, graphs, image, a.threads)
    np.savez(work / "job.npz", **job)
    print(f"x86 reference ready ({time.time() - t0:.0f} s); running aarch64 onnxruntime under qemu ...", flush=True)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "/opt/site", "PYTHONDONTWRITEBYTECODE": "1",
           "OMP_NUM_THREADS": str(a.threads), "QEMU_CPU": os.environ.get("QEMU_CPU", "max")}
    cmd = [qemu, "-L", str(root), str(root / "usr" / "bin" / "python3"), str(HERE / "run_arm.py"), str(ARM_PY),
           str(work / "job.npz"), str(work / "arm_out.npz"), str(graphs), str(a.threads)]
    t1 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-3000:], sep="\n")
        print(f"FAIL: the aarch64 run exited with {proc.returncode}")
        return 1
    got = dict(np.load(work / "arm_out.npz"))
    arm_info = json.loads(str(got.pop("info")))
    print(f"aarch64 run: {arm_info} (wall {time.time() - t1:.0f} s under qemu)")
    specs = model.specs()
    ok, report = True, {"model": model.name, "arm": arm_info, "outputs": {}}
    for key, want in ref.items():
        have = got[key]
        err = float(np.abs(have.astype(np.float64) - want.astype(np.float64)).max())
        if key.startswith("chain:"):
            iou = binary_iou(have, want)
            line_ok = iou >= (0.99 if ":fp32:" in key else 0.9)
            msg = f"{key}: max abs err {err:.2e}, binary-mask IoU {iou:.4f} (needs >= {0.99 if ':fp32:' in key else 0.9})"
            report["outputs"][key] = {"max_abs_err": err, "mask_iou": iou}
        elif key.startswith("fp32:"):
            _, stage, _, name = key.split(":")
            tol = specs[stage].tolerances.get(name, 1e-4)
            line_ok = err <= tol
            msg = f"{key}: max abs err {err:.2e} (tolerance {tol:g})"
            report["outputs"][key] = {"max_abs_err": err, "tolerance": tol}
        else:  # int8 tensors: x86 and ARM use different integer kernels, so only the masks above are gated
            line_ok = True
            msg = f"{key}: max abs err {err:.2e} (int8 kernels differ across ISAs; informational)"
            report["outputs"][key] = {"max_abs_err": err}
        ok &= line_ok
        print(("  ok   " if line_ok else "  BAD  ") + msg)
    report["pass"] = bool(ok)
    (work / "report.json").write_text(json.dumps(report, indent=1))
    fp32_iou = report["outputs"]["chain:fp32:masks"]["mask_iou"]
    worst = max(v["max_abs_err"] for k, v in report["outputs"].items() if k.startswith("fp32:"))
    print(f"{'PASS' if ok else 'FAIL'} {model.name}: aarch64 onnxruntime {arm_info['onnxruntime']} (qemu) vs x86: "
          f"fp32 max abs err {worst:.1e}, key-frame mask IoU {fp32_iou:.4f} -> {work / 'report.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
