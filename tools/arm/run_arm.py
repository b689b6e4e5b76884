"""Runs INSIDE the emulated aarch64 python (numpy + onnxruntime only, no torch, no edgevis package).

Reads a job .npz written by arm_check.py, runs every stage graph on the given per-stage inputs and the
chained pipeline (frame -> key -> mask) with the ARM session settings of edgevis/export/arm.py, and
writes the outputs to another .npz.

usage: python3 run_arm.py ARM_PY JOB.npz OUT.npz GRAPH_DIR [threads]
"""

import importlib.util
import json
import platform
import sys
import time

import numpy as np
import onnxruntime as ort


def main() -> int:
    arm_py, job_path, out_path, graph_dir = sys.argv[1:5]
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    spec = importlib.util.spec_from_file_location("edgevis_arm", arm_py)
    arm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(arm)
    job = np.load(job_path)
    files = json.loads(str(job["files"]))  # {"fp32:frame": "frame.arm.onnx", ...}
    out, sessions = {}, {}
    t0 = time.time()
    for key, name in files.items():
        sessions[key] = arm.arm_session(f"{graph_dir}/{name}", threads)
    for key, sess in sessions.items():
        feeds = {i.name: job[f"{key}:in:{i.name}"] for i in sess.get_inputs()}
        for name, val in zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)):
            out[f"{key}:out:{name}"] = val
    for prec in ("fp32", "int8"):  # chained, the way the runner calls them on a key frame
        if f"{prec}:frame" not in sessions:
            continue
        x_mask, x6 = sessions[f"{prec}:frame"].run(["x_mask", "x6"], {"image": job["chain:image"]})
        kernels = sessions["fp32:key"].run(["kernels"], {"x_mask": x_mask, "x6": x6})[0]
        out[f"chain:{prec}:masks"] = sessions["fp32:mask"].run(["masks"], {"kernels": kernels, "x_mask": x_mask})[0]
    out["info"] = np.array(json.dumps({
        "machine": platform.machine(), "onnxruntime": ort.__version__, "numpy": np.__version__,
        "providers": ort.get_available_providers(), "seconds": round(time.time() - t0, 1),
    }))
    np.savez(out_path, **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
