"""Micro-benchmark: the fused ConvGRU state update vs the same math as unfused PyTorch pointwise ops.

    python -m edgevis.bench.convgru_update [--reps 50] [--no-compile]

Shapes are the recurrent SeqFormer hidden maps at 360x640 (256 channels at strides 8 and 16) and a
4-stream batch. Rows, per device:
- CPU: ``unfused`` (sigmoid, tanh, 1-z, two muls, add: 6 passes), ``op`` (``edgevis::convgru_update``,
  3 passes: sigmoid, tanh, lerp) and ``inductor`` (the unfused formula through torch.compile: one
  generated C++ loop), when it compiles.
- CUDA, when available: ``unfused`` torch ops and the ``kernel.cu`` kernel, with FP32 and FP16
  activations (state always FP32), plus achieved bandwidth vs the device's peak.
Bandwidth counts the bytes the update must move (z and n read, h read, h' written), the same for every
row, so it compares implementations. Prints a Markdown table and appends a JSON row to
reports/bench/convgru_update.jsonl.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor

from edgevis.bench.convgru_drift import machine_info
from edgevis.bench.machine import append_jsonl, bench_parser
from edgevis.plugins.convgru import convgru_update

SHAPES = ((1, 256, 45, 80), (1, 256, 23, 40), (4, 256, 45, 80))


def unfused(zr_pre: Tensor, n_pre: Tensor, h: Tensor) -> Tensor:
    c = h.shape[1]
    z = torch.sigmoid(zr_pre[:, :c].float())
    n = torch.tanh(n_pre.float())
    return (1 - z) * h + z * n


def bytes_moved(shape: tuple[int, ...], act_bytes: int) -> int:
    b, c, hh, ww = shape
    return b * c * hh * ww * (2 * act_bytes + 4 + 4)  # z, n read; h read; h' written


def time_cpu(fn: Callable[[], Any], reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_cuda(fn: Callable[[], Any], reps: int) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def peak_bandwidth() -> float | None:
    """Device memory bandwidth in bytes/s from the reported memory clock and bus width (DDR: x2)."""
    props = torch.cuda.get_device_properties(0)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    return 2.0 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None


def inputs(shape: tuple[int, ...], act: torch.dtype, device: str) -> tuple[Tensor, Tensor, Tensor]:
    b, c, hh, ww = shape
    g = torch.Generator(device=device).manual_seed(0)
    zr = torch.randn(b, 2 * c, hh, ww, generator=g, device=device).to(act)  # (B, 2C, H, W)
    n = torch.randn(b, c, hh, ww, generator=g, device=device).to(act)  # (B, C, H, W)
    h = torch.randn(b, c, hh, ww, generator=g, device=device)  # (B, C, H, W) FP32 state
    return zr, n, h


def bench_cpu(reps: int, compile_: bool) -> list[dict[str, Any]]:
    rows = []
    compiled: Callable[..., Tensor] | None = None
    compile_note = "disabled (--no-compile)"
    if compile_:
        try:
            compiled = torch.compile(unfused, dynamic=False)
            compiled(*inputs(SHAPES[1], torch.float32, "cpu"))
            compile_note = "ok"
        except Exception as e:  # inductor needs a working C++ toolchain; report why it is missing
            compiled, compile_note = None, f"unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    for shape in SHAPES:
        zr, n, h = inputs(shape, torch.float32, "cpu")
        want = unfused(zr, n, h)
        impls: dict[str, Callable[[], Tensor]] = {
            "unfused": partial(unfused, zr, n, h),
            "op": partial(convgru_update, zr, n, h),
        }
        if compiled is not None:
            impls["inductor"] = partial(compiled, zr, n, h)
        for name, fn in impls.items():
            assert (fn() - want).abs().max().item() < 1e-5, name  # same numbers before timing
            sec = time_cpu(fn, reps)
            rows.append(
                {
                    "device": "cpu",
                    "impl": name,
                    "act": "fp32",
                    "shape": list(shape),
                    "ms": sec * 1e3,
                    "gbps": bytes_moved(shape, 4) / sec / 1e9,
                }
            )
    print(f"inductor: {compile_note}")
    return rows


def bench_cuda(reps: int) -> list[dict[str, Any]]:
    from edgevis.plugins.convgru import ext

    rows = []
    peak = peak_bandwidth()
    for act in (torch.float32, torch.float16):
        act_bytes = 4 if act == torch.float32 else 2
        for shape in SHAPES:
            zr, n, h = inputs(shape, act, "cuda")
            out = torch.empty_like(h)
            want = unfused(zr, n, h)
            impls = {
                "unfused": partial(unfused, zr, n, h),
                "kernel": partial(ext.convgru_update_cuda, zr, n, h, out=out),
            }
            for name, fn in impls.items():
                assert (fn()[0] if name == "kernel" else fn()).sub(want).abs().max().item() < 1e-5, name
                sec = time_cuda(fn, reps)
                gbps = bytes_moved(shape, act_bytes) / sec / 1e9
                rows.append(
                    {
                        "device": torch.cuda.get_device_name(),
                        "impl": name,
                        "act": str(act).split(".")[-1],
                        "shape": list(shape),
                        "ms": sec * 1e3,
                        "gbps": gbps,
                        "pct_peak": 100 * gbps * 1e9 / peak if peak else None,
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__, reps=50, threads=0, threads_help="torch CPU threads (0: torch's default)",
                     out="reports/bench/convgru_update.jsonl")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile (inductor) CPU row")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = bench_cpu(args.reps, not args.no_compile)
    if torch.cuda.is_available():
        rows += bench_cuda(args.reps)
    print("\n| device | impl | activations | shape (B, C, H, W) | median ms | GB/s | % of peak |")
    print("|---|---|---|---|---:|---:|---:|")
    for r in rows:
        pct = f"{r['pct_peak']:.0f}" if r.get("pct_peak") else "-"
        print(
            f"| {r['device']} | {r['impl']} | {r['act']} | {tuple(r['shape'])} | {r['ms']:.3f} | {r['gbps']:.1f} | {pct} |"
        )
    row = {
        "bench": "convgru_update",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine_info(),
        "args": vars(args),
        "rows": rows,
    }
    print(f"appended to {append_jsonl(args.out, row)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
