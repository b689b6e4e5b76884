"""Drift study: does a long FP16 stream through ConvGRU cells drift, and does an FP32 state prevent it?

    python -m edgevis.bench.convgru_drift [--frames 1000] [--height 48] [--width 64]

Input (procedural, "real-looking"): a 3-channel textured scene, a sum of 24 oriented sinusoidal
gratings per channel with random frequencies and phases, panned along a slow Lissajous path with
sub-pixel motion (evaluated analytically at the shifted coordinates), plus a bright Gaussian blob
moving across it on its own path and i.i.d. Gaussian sensor noise (sigma 0.05) in every frame.

Network: a stack of three cells, ConvGRUCell(3, 16, dense) -> ConvGRUCell(16, 16, separable) ->
ConvGRUCell(16, 16, separable); each cell's new state is the next cell's input. Weights are the
default PyTorch init (seeded); the z-gate biases follow "chrono" initialisation (Tallec & Ollivier,
2018): each hidden channel gets a time constant T drawn log-uniformly in [2, 200] frames and bias
-log(T - 1), so z ~ 1/T. Slow channels are what a recurrent encoder uses to carry context across
frames, and they are where state precision matters: an FP16 state loses updates below half an ulp.

Three precisions, 1000 frames each from the same zero state:
  (a) FP32 everything (the reference);
  (b) FP16 convs + FP32 state (what edgevis deploys: TensorRT FP16 convs, ConvGRUCell keeps h FP32);
  (c) everything FP16 (state rounded to FP16 after every update).
FP16 is *emulated* on CPU: conv weights/biases, conv inputs and conv outputs are rounded to FP16
(``t.half().float()``) around FP32 convs, i.e. FP16 storage with FP32 accumulation, as TensorRT's
FP16 tensor-core convs do. (torch's CPU float16 conv works but is ~25x slower than FP32 here.) The
pointwise math runs in FP32 on those rounded values. A real CPU-FP16 run of (b) over the first frames
checks the emulation. Reported: relative L2 error of the stacked hidden states vs (a) over time.
Prints a Markdown table and appends a JSON row to reports/bench/convgru_drift.jsonl.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor, nn

from edgevis.bench.machine import append_jsonl, bench_parser, describe_machine, relative_error
from edgevis.plugins.convgru import ConvGRUCell

REPORT_FRAMES = (1, 10, 100, 300, 1000)
MODES = {"a": "FP32 reference", "b": "FP16 convs + FP32 state", "c": "everything FP16"}


def machine_info() -> dict[str, Any]:
    """The shared machine description plus torch's thread count (this study runs torch only)."""
    return {**describe_machine(), "torch_threads": torch.get_num_threads()}


# ---- input ----------------------------------------------------------------------------------
class TexturedScene:
    """Smoothly panning multi-grating texture + a moving blob + sensor noise; frame(t) -> (1, 3, H, W)."""

    def __init__(self, height: int, width: int, seed: int = 0, gratings: int = 24, noise: float = 0.05) -> None:
        g = torch.Generator().manual_seed(seed)
        self.h, self.w, self.noise, self.g = height, width, noise, g
        angle = torch.rand(3, gratings, generator=g) * math.pi
        freq = 0.02 + 0.18 * torch.rand(3, gratings, generator=g)  # cycles per pixel
        self.fx, self.fy = freq * torch.cos(angle), freq * torch.sin(angle)  # (3, K)
        self.phase = torch.rand(3, gratings, generator=g) * 2 * math.pi
        self.amp = 1.0 / (1.0 + 8 * freq)  # smoother components dominate, like natural images
        yy, xx = torch.meshgrid(
            torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
        )
        self.yy, self.xx = yy, xx  # (H, W)

    def frame(self, t: int) -> Tensor:
        dx = 20.0 * math.sin(2 * math.pi * t / 400) + 0.15 * t  # sub-pixel pan, pixels
        dy = 12.0 * math.sin(2 * math.pi * t / 270 + 1.0)
        x, y = self.xx + dx, self.yy + dy  # (H, W)
        arg = 2 * math.pi * (self.fx[..., None, None] * x + self.fy[..., None, None] * y) + self.phase[..., None, None]
        img = (self.amp[..., None, None] * torch.sin(arg)).sum(1)  # (3, H, W)
        img = img / self.amp.sum(1).sqrt()[:, None, None]
        cx = self.w * (0.5 + 0.35 * math.sin(2 * math.pi * t / 150))
        cy = self.h * (0.5 + 0.3 * math.cos(2 * math.pi * t / 210))
        blob = torch.exp(-((self.xx - cx) ** 2 + (self.yy - cy) ** 2) / (2 * (0.12 * self.h) ** 2))  # (H, W)
        img = img + torch.tensor([1.5, 1.0, 0.5], dtype=torch.float64)[:, None, None] * blob
        img = img + self.noise * torch.randn(img.shape, generator=self.g, dtype=torch.float64)
        return img.float()[None]  # (1, 3, H, W)


# ---- network and precision emulation ----------------------------------------------------------
def build_stack(hid: int = 16, seed: int = 0, max_timescale: float = 200.0) -> nn.ModuleList:
    """Three seeded cells; z-gate biases get "chrono" time constants T ~ logU[2, max_timescale] frames."""
    torch.manual_seed(seed)
    cells = nn.ModuleList(
        [ConvGRUCell(3, hid), ConvGRUCell(hid, hid, separable=True), ConvGRUCell(hid, hid, separable=True)]
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for cell in cells:
            last = cell.conv_zr[-1] if isinstance(cell.conv_zr, nn.Sequential) else cell.conv_zr
            timescale = torch.exp(math.log(2.0) + torch.rand(hid, generator=g) * math.log(max_timescale / 2.0))
            last.bias[:hid] = -torch.log(timescale - 1.0)  # z ~ 1/T: z channels come first
    return cells.eval()


def _q(t: Tensor) -> Tensor:
    return t.half().float()


def emulate_fp16_convs(stack: nn.ModuleList) -> nn.ModuleList:
    """Round every conv's weights, inputs and outputs to FP16 (FP32 accumulation in between), in place."""
    for m in stack.modules():
        if isinstance(m, nn.Conv2d):
            with torch.no_grad():
                m.weight.copy_(_q(m.weight))
                if m.bias is not None:
                    m.bias.copy_(_q(m.bias))
            m.register_forward_pre_hook(lambda _m, args: tuple(_q(a) for a in args))
            m.register_forward_hook(lambda _m, _args, out: _q(out))
    return stack


def step_stack(stack: nn.ModuleList, x: Tensor, states: list[Tensor], fp16_state: bool) -> list[Tensor]:
    new = []
    for cell, h in zip(stack, states, strict=True):
        h, x = cell.step(x, h)  # x: the new state in the activation dtype, the next cell's input
        if fp16_state:
            h = x = _q(h)  # the state itself is stored in FP16
        new.append(h)
    return new


def rel_err(states: list[Tensor], ref: list[Tensor]) -> float:
    """:func:`relative_error` of all the state tensors together."""
    return relative_error(torch.cat([s.flatten() for s in states]), torch.cat([s.flatten() for s in ref]))


def run(frames: int, height: int, width: int, hid: int, seed: int, check_frames: int) -> dict[str, Any]:
    scene = TexturedScene(height, width, seed=seed)
    ref = build_stack(hid, seed)
    stacks = {
        "a": ref,
        "b": emulate_fp16_convs(build_stack(hid, seed)),
        "c": emulate_fp16_convs(build_stack(hid, seed)),
    }
    real16 = build_stack(hid, seed).half()  # real CPU FP16 convs + FP32 state, first frames only
    zeros = [torch.zeros(1, hid, height, width) for _ in stacks["a"]]
    states = {k: list(zeros) for k in stacks}
    real_states = list(zeros)
    errs: dict[str, list[float]] = {"b": [], "c": []}
    emu_check = 0.0
    norms = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for t in range(frames):
            x = scene.frame(t)
            for k, stack in stacks.items():
                states[k] = step_stack(stack, x, states[k], fp16_state=(k == "c"))
            for k in errs:
                errs[k].append(rel_err(states[k], states["a"]))
            norms.append(torch.cat([s.flatten() for s in states["a"]]).norm().item())
            if t < check_frames:
                real_states = step_stack(real16, x.half(), real_states, fp16_state=False)
                emu_check = max(emu_check, rel_err(real_states, states["b"]))
    seconds = time.perf_counter() - t0
    at = {k: {f: v[f - 1] for f in REPORT_FRAMES if f <= frames} for k, v in errs.items()}
    return {
        "errors_at": at,
        "max_error": {k: max(v) for k, v in errs.items()},
        "seconds": seconds,
        "state_rms_at_end": norms[-1] / math.sqrt(sum(s.numel() for s in zeros)),
        "emulation_vs_real_fp16_b": emu_check,
        "check_frames": min(check_frames, frames),
    }


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__, threads=1, threads_help="torch CPU threads (tiny tensors: 1 is fastest)",
                     out="reports/bench/convgru_drift.jsonl")
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--height", type=int, default=48)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--hid", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-frames", type=int, default=10, help="frames of real CPU-FP16 convs to check the emulation")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        res = run(args.frames, args.height, args.width, args.hid, args.seed, args.check_frames)
    finally:
        torch.set_num_threads(threads)
    at = res["errors_at"]
    print(
        f"ConvGRU drift, {args.frames} frames of a {args.height}x{args.width} textured scene, "
        f"3-cell stack (hid {args.hid}); relative L2 error of all hidden states vs (a) FP32\n"
    )
    print("| frame | (b) " + MODES["b"] + " | (c) " + MODES["c"] + " |")
    print("|---:|---:|---:|")
    for f in at["b"]:
        print(f"| {f} | {at['b'][f]:.2e} | {at['c'][f]:.2e} |")
    print(f"| max over all frames | {res['max_error']['b']:.2e} | {res['max_error']['c']:.2e} |")
    last = max(at["b"])
    ok_b = at["b"][last] <= 1e-2
    ratio = at["c"][last] / max(at["b"][last], 1e-12)
    print(
        f"\n(b) at frame {last}: {at['b'][last]:.2e} ({'within' if ok_b else 'OUTSIDE'} 1e-2); "
        f"(c)/(b) = {ratio:.1f}x; state RMS {res['state_rms_at_end']:.3f}; "
        f"emulated vs real CPU-FP16 (b) over {res['check_frames']} frames: {res['emulation_vs_real_fp16_b']:.1e}; "
        f"{res['seconds']:.0f} s"
    )
    row = {
        "bench": "convgru_drift",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine_info(),
        "backend": "torch CPU, FP16 emulated by rounding",
        "args": vars(args),
        **{k: v for k, v in res.items() if k != "errors_at"},
        "errors_at": {k: {str(f): e for f, e in v.items()} for k, v in at.items()},
    }
    print(f"appended to {append_jsonl(args.out, row)}")
    return 0 if ok_b and ratio > 2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
