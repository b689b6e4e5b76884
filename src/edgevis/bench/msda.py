"""Micro-benchmark of multi-scale deformable attention: ``python -m edgevis.bench.msda``.

Sizes are SeqFormer's at a 360x640 input (levels 45x80, 23x40, 12x20, 6x10; M=8, L=4, P=4, D=32):
``decoder`` (B=5 frames, Q=300 queries) and ``encoder`` (Q = S = 4820 tokens). On CPU it times the
PyTorch reference against the portable ONNX form in onnxruntime (both on ``--threads`` threads, 2
by default); with a CUDA GPU it also times the CUDA kernel (torch extension, built on first use)
against the reference on the GPU and reports the kernel's achieved memory bandwidth, counting the
compulsory traffic (inputs read once, output written once).

Prints a Markdown table and appends one JSON row per run, machine described, to
``reports/bench/msda.jsonl``. Timings: median of ``--iters`` runs after ``--warmup`` runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgevis.bench.machine import append_jsonl, describe_machine, median_ms
from edgevis.plugins.ms_deform_attn import level_starts, ms_deform_attn, ms_deform_attn_reference

LEVELS_360x640 = ((45, 80), (23, 40), (12, 20), (6, 10))
SIZES: dict[str, dict[str, Any]] = {
    "decoder": {"B": 5, "Q": 300, "M": 8, "P": 4, "D": 32, "shapes": LEVELS_360x640},
    "encoder": {"B": 5, "Q": sum(h * w for h, w in LEVELS_360x640), "M": 8, "P": 4, "D": 32, "shapes": LEVELS_360x640},
    "tiny": {"B": 2, "Q": 16, "M": 2, "P": 2, "D": 8, "shapes": ((6, 10), (3, 5))},  # smoke tests
}
REPORT = Path("reports/bench/msda.jsonl")


def make_inputs(B: int, Q: int, M: int, P: int, D: int, shapes: tuple, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    L, S = len(shapes), sum(h * w for h, w in shapes)
    w = torch.rand(B, Q, M, L, P, generator=g)
    return {
        "value": torch.randn(B, S, M, D, generator=g),  # (B, S, M, D)
        "spatial_shapes": torch.tensor(shapes, dtype=torch.int64),  # (L, 2)
        "level_start_index": torch.tensor(level_starts(shapes), dtype=torch.int64),  # (L,)
        "sampling_locations": torch.rand(B, Q, M, L, P, 2, generator=g),  # (B, Q, M, L, P, 2)
        "attention_weights": w / w.sum((-1, -2), keepdim=True),  # (B, Q, M, L, P)
    }


class _Msda(torch.nn.Module):
    def __init__(self, shapes: tuple) -> None:
        super().__init__()
        self.shapes = shapes

    def forward(self, value: torch.Tensor, loc: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return ms_deform_attn(value, None, None, loc, weights, shapes=self.shapes)


def portable_session(shapes: tuple, x: dict[str, torch.Tensor], threads: int, workdir: Path) -> Any:
    """Export the portable form for these input shapes and open an onnxruntime CPU session."""
    import onnxruntime as ort

    from edgevis.plugins.flavor import export_flavor

    path = workdir / "msda_portable.onnx"
    args = (x["value"], x["sampling_locations"], x["attention_weights"])
    with export_flavor("portable"):
        torch.onnx.export(
            _Msda(shapes).eval(),
            args,
            str(path),
            dynamo=True,
            input_names=["value", "loc", "weights"],
            output_names=["out"],
            external_data=False,
            opset_version=18,
            verbose=False,
        )
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def bench_cpu(name: str, threads: int, warmup: int, iters: int, workdir: Path) -> dict[str, Any]:
    cfg = SIZES[name]
    x = make_inputs(cfg["B"], cfg["Q"], cfg["M"], cfg["P"], cfg["D"], cfg["shapes"])
    torch.set_num_threads(threads)
    with torch.inference_mode():
        ref = ms_deform_attn_reference(**x)
        ref_ms = median_ms(lambda: ms_deform_attn_reference(**x), warmup=warmup, iters=iters)
    sess = portable_session(cfg["shapes"], x, threads, workdir)
    feeds = {
        "value": x["value"].numpy(),
        "loc": x["sampling_locations"].numpy(),
        "weights": x["attention_weights"].numpy(),
    }
    out = sess.run(None, feeds)[0]
    ort_ms = median_ms(lambda: sess.run(None, feeds), warmup=warmup, iters=iters)
    return {
        "size": name,
        "torch_reference_ms": ref_ms,
        "ort_portable_ms": ort_ms,
        "portable_max_abs_err": float(np.abs(out - ref.numpy()).max()),
    }


def bench_gpu(name: str, warmup: int, iters: int, dtype: torch.dtype) -> dict[str, Any]:
    from edgevis.plugins.ms_deform_attn import ext

    kernel = ext.load()
    cfg = SIZES[name]
    x = {k: v.cuda() for k, v in make_inputs(cfg["B"], cfg["Q"], cfg["M"], cfg["P"], cfg["D"], cfg["shapes"]).items()}
    for k in ("value", "sampling_locations", "attention_weights"):
        x[k] = x[k].to(dtype)
    args = (x["value"], x["spatial_shapes"], x["level_start_index"], x["sampling_locations"], x["attention_weights"])
    sync = torch.cuda.synchronize
    with torch.inference_mode():
        ref = ms_deform_attn_reference(*args)
        out = kernel.forward(*args)
        ref_ms = median_ms(lambda: ms_deform_attn_reference(*args), warmup=warmup, iters=iters, sync=sync)
        k_ms = median_ms(lambda: kernel.forward(*args), warmup=warmup, iters=iters, sync=sync)
    nbytes = sum(t.numel() * t.element_size() for t in args) + out.numel() * out.element_size()
    return {
        "size": name,
        "dtype": str(dtype).replace("torch.", ""),
        "torch_reference_gpu_ms": ref_ms,
        "cuda_kernel_ms": k_ms,
        "kernel_GBps": nbytes / (k_ms * 1e-3) / 1e9,
        "kernel_max_abs_err": float((out.float() - ref.float()).abs().max()),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="decoder,encoder", help="comma list of: " + ", ".join(SIZES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--no-gpu", action="store_true", help="skip the CUDA kernel even if a GPU is present")
    ap.add_argument("--report", type=Path, default=REPORT)
    a = ap.parse_args(argv)
    sizes = [s.strip() for s in a.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        ap.error(f"unknown size(s) {unknown}; expected a comma list of {list(SIZES)}")
    cpu_rows, gpu_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for s in sizes:
            cpu_rows.append(bench_cpu(s, a.threads, a.warmup, a.iters, Path(tmp)))
    if torch.cuda.is_available() and not a.no_gpu:
        for s in sizes:
            for dt in (torch.float32, torch.float16):
                gpu_rows.append(bench_gpu(s, a.warmup, a.iters, dt))
    for r in cpu_rows:
        r["ort_vs_torch"] = r["torch_reference_ms"] / r["ort_portable_ms"]
    print(f"### MSDA on CPU ({a.threads} threads; median ms)\n\n{_table(cpu_rows)}\n")
    if gpu_rows:
        print(f"### MSDA on GPU ({torch.cuda.get_device_name(0)}; median ms)\n\n{_table(gpu_rows)}\n")
    row = {
        "bench": "msda",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": describe_machine(),  # includes the load average
        "threads": a.threads,
        "iters": a.iters,
        "cpu": cpu_rows,
        "gpu": gpu_rows,
    }
    print(f"appended a row to {append_jsonl(a.report, row)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
