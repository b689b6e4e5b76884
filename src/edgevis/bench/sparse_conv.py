"""Sparsity study of the triple-gated sparse conv on SYNTHETIC camera-like footage (CPU).

There is no real footage on the development machines, so the frames are synthesised procedurally
and are *camera-like, not real*: a static textured background (smooth gradients, multi-scale texture,
hard-edged structures), sensor noise, global lighting flicker, a few textured objects of varied size
moving across it (they occlude each other and pass behind a static foreground pillar).

Features come from a fixed random conv stack (seeded, ReLU) over the 480x864 frames: 256 channels at
1/8 (60x108) and 1/16 (30x54). The layer under study is a ResNet-sized conv 256 -> 256, 3x3, fed those
features. For every frame it reports the REUSE / INTERPOLATE / COMPUTE fractions, FLOPs saved, the
wall-clock of the sparse fast path (gate included) vs dense ``conv2d`` with the same threads, and the
relative output error vs dense. A second part sweeps the active fraction with controlled random gates
to find the CPU break-even and the speedup at 75% REUSE, and times the same path with every block
COMPUTE, so the gain of the conv algorithm (Winograd cells, see fast.py) is told apart from the gain of
skipping.

    python -m edgevis.bench.sparse_conv                # 300 frames, 2 threads
    python -m edgevis.bench.sparse_conv --frames 40    # quick

Prints Markdown tables and appends a JSON row to reports/bench/sparse_conv.jsonl. Thresholds are given
relative to the mean |feature| of frame 0 (``--tau-t``, ``--tau-s``). Timings are per call; the study
interleaves dense and sparse calls so both see the same machine load, and reports medians.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from edgevis.bench.machine import append_jsonl, describe_machine, relative_error
from edgevis.plugins.sparse_conv.fast import SparseConvStats, triple_sparse_conv_fast
from edgevis.plugins.sparse_conv.reference import COMPUTE, INTERPOLATE, expand_blocks

REPORT = Path("reports/bench/sparse_conv.jsonl")


# ---- synthetic camera-like footage ----------------------------------------------------------------
def _texture(g: torch.Generator, h: int, w: int, scales: tuple[int, ...] = (4, 16, 64)) -> torch.Tensor:
    """Multi-scale smooth noise (3, h, w) in about [-1, 1]."""
    out = torch.zeros(3, h, w)
    for s in scales:
        low = torch.randn(1, 3, max(h // s, 2), max(w // s, 2), generator=g)
        out += F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)[0] / len(scales)
    return out


def camera_like_frames(n_frames: int, h: int = 480, w: int = 864, seed: int = 0, noise: float = 0.01):  # noqa: ANN201
    """Yield ``n_frames`` synthetic static-camera frames, each (1, 3, h, w) float in [0, 1].

    ``noise`` is the per-pixel Gaussian sensor noise (0.01 ~ 2.5/255)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    bg = 0.35 + 0.25 * xx + 0.15 * yy + 0.12 * _texture(g, h, w)  # gradients + texture
    for _ in range(12):  # hard-edged static structures (windows, shelves, tiles)
        y0, x0 = int(torch.randint(0, h - 40, (1,), generator=g)), int(torch.randint(0, w - 60, (1,), generator=g))
        hh, ww = int(torch.randint(20, 120, (1,), generator=g)), int(torch.randint(30, 200, (1,), generator=g))
        bg[:, y0:y0 + hh, x0:x0 + ww] = 0.2 + 0.6 * torch.rand(3, 1, 1, generator=g) + 0.05 * _texture(
            g, min(hh, h - y0), min(ww, w - x0), (2, 8))
    pillar = (slice(0, h), slice(int(0.62 * w), int(0.62 * w) + 40))  # static foreground occluder
    pillar_tex = 0.25 + 0.1 * _texture(g, h, 40, (2, 8))
    objects = []  # textured moving objects of varied size: (tex, mask, y, x, vy, vx)
    for size in (150, 90, 60, 35):
        oh, ow = size, int(size * (0.5 + torch.rand(1, generator=g).item()))
        ey, ex = torch.meshgrid(torch.linspace(-1, 1, oh), torch.linspace(-1, 1, ow), indexing="ij")
        mask = ((ey ** 2 + ex ** 2) < 1).float()
        tex = (0.3 + 0.5 * torch.rand(3, 1, 1, generator=g) + 0.2 * _texture(g, oh, ow, (2, 6))).clamp(0, 1)
        y = float(torch.randint(0, h - oh, (1,), generator=g))
        x = float(torch.randint(0, w - ow, (1,), generator=g))
        speed = 2.0 + 4.0 * torch.rand(1, generator=g).item()
        ang = 2 * math.pi * torch.rand(1, generator=g).item()
        objects.append([tex, mask, y, x, speed * math.sin(ang) * 0.4, speed * math.cos(ang)])
    for t in range(n_frames):
        f = bg.clone()
        for obj in objects:  # painter's order = occlusion order
            tex, mask, y, x, vy, vx = obj
            oh, ow = mask.shape
            iy, ix = int(y), int(x)
            f[:, iy:iy + oh, ix:ix + ow] = mask * tex + (1 - mask) * f[:, iy:iy + oh, ix:ix + ow]
            y, x = y + vy, x + vx
            if not 0 <= y <= h - oh:
                vy, y = -vy, min(max(y, 0), h - oh)
            if not 0 <= x <= w - ow:
                vx, x = -vx, min(max(x, 0), w - ow)
            obj[2:] = [y, x, vy, vx]
        f[:, pillar[0], pillar[1]] = pillar_tex
        flicker = 1.0 + 0.01 * math.sin(2 * math.pi * t / 50) + 0.003 * torch.randn(1, generator=g).item()
        f = f * flicker + noise * torch.randn(3, h, w, generator=g)  # lighting flicker + sensor noise
        yield f.clamp(0, 1).unsqueeze(0)


class FeatureStack(torch.nn.Module):
    """Fixed random conv stack: frame (1, 3, 480, 864) -> 256-ch features at 1/8 and 1/16.

    He-initialised random 3x3 convs with ReLU; every stride-2 conv is preceded by a binomial blur
    (anti-aliased downsampling, as in BlurPool / ResNet-D), so sensor noise is not aliased into the
    features the way untrained white-noise filters with plain striding would.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        chans = [(3, 32, 2), (32, 64, 2), (64, 128, 2), (128, 256, 1), (256, 256, 2)]
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(a, b, 3, stride=s, padding=1) for a, b, s in chans)
        for c in self.convs:
            torch.nn.init.kaiming_normal_(c.weight, nonlinearity="relu")
            torch.nn.init.zeros_(c.bias)
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("blur", (k[:, None] * k[None, :] / 16).view(1, 1, 3, 3))

    def _conv(self, i: int, h: torch.Tensor) -> torch.Tensor:
        c = self.convs[i]
        if c.stride[0] == 2:
            h = F.conv2d(h, self.blur.expand(h.shape[1], 1, 3, 3), padding=1, groups=h.shape[1])
        return F.relu(c(h))

    @torch.no_grad()
    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = (img - 0.5) / 0.25
        for i in range(4):
            h = self._conv(i, h)
        return h, self._conv(4, h)  # (1, 256, 60, 108), (1, 256, 30, 54)


def noise_floor(stack: FeatureStack, layer: torch.nn.Conv2d, noise: float) -> tuple[float, float]:
    """Relative change of the dense output between two noise draws of the same static frame, (1/8, 1/16):
    the error any REUSE decision pays at least."""
    frame = next(camera_like_frames(1, noise=0.0))
    g = torch.Generator().manual_seed(7)
    a, b = (stack((frame + noise * torch.randn(frame.shape, generator=g)).clamp(0, 1)) for _ in range(2))
    rel = [relative_error(layer(u), layer(v)) for u, v in zip(a, b)]
    return rel[0], rel[1]


# ---- measurements ---------------------------------------------------------------------------------
def _timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t) * 1e3


def _median(v: list[float]) -> float:
    s = sorted(v)
    return s[len(s) // 2] if s else float("nan")


def study_video(feats: list[torch.Tensor], layer: torch.nn.Conv2d, tau_t: float, tau_s: float, block: int,
                refresh: int, timing: bool = True) -> dict[str, Any]:
    """Run dense and sparse over the feature sequence; per-frame fractions, FLOPs, ms, error."""
    w, b = layer.weight.detach(), layer.bias.detach()
    x0 = y0 = None
    stats = SparseConvStats()
    rows = []
    for i, x in enumerate(feats):
        t0 = time.perf_counter()
        dense = F.conv2d(x, w, b, padding=1)
        t_dense = (time.perf_counter() - t0) * 1e3
        force = x0 is None or (refresh > 0 and i % refresh == 0)
        if x0 is None:
            x0, y0 = x.clone(), torch.zeros_like(dense)
        st = SparseConvStats()
        t0 = time.perf_counter()
        y, x0, y0, _ = triple_sparse_conv_fast(x, x0, y0, w, b, stride=1, padding=1, block=block, tau_t=tau_t,
                                               tau_s=tau_s, force_dense=force, stats=st)
        t_sparse = (time.perf_counter() - t0) * 1e3
        stats.add(st)
        rows.append(dict(frame=i, dense_frame=force, fractions=st.fractions(), flops_saved=st.flops_saved,
                         ms_dense=t_dense, ms_sparse=t_sparse,
                         rel_err=relative_error(y, dense)))
    steady = [r for r in rows if not r["dense_frame"]] or rows
    return dict(
        frames=len(rows), tau_t=tau_t, tau_s=tau_s, block=block, refresh=refresh,
        fractions=list(stats.fractions()), flops_saved=stats.flops_saved,
        mean_rel_err=sum(r["rel_err"] for r in rows) / len(rows), max_rel_err=max(r["rel_err"] for r in rows),
        ms_dense=_median([r["ms_dense"] for r in rows]), ms_sparse=_median([r["ms_sparse"] for r in rows]),
        ms_sparse_steady=_median([r["ms_sparse"] for r in steady]), per_frame=rows,
    )


def controlled_x0(x: torch.Tensor, block: int, fraction: float, seed: int = 0) -> torch.Tensor:
    """A previous input for ``x`` that differs (by +1) only inside ``round(fraction * blocks)`` random
    full b x b blocks (partial edge blocks are left static, so the changed pixel fraction is
    exactly what was asked for, up to one block), away from their 1-pixel border, so that the real gate
    marks exactly those blocks changed (3x3 receptive fields of neighbouring blocks do not see the change)."""
    h, w = x.shape[-2:]
    nbh, nbw = h // block, w // block
    g = torch.Generator().manual_seed(seed)
    want = round(fraction * h * w / (block * block))
    x0 = x.clone()
    for i in torch.randperm(nbh * nbw, generator=g)[: min(want, nbh * nbw)].tolist():
        bi, bj = divmod(i, nbw)
        x0[:, :, bi * block + 1:bi * block + block - 1, bj * block + 1:bj * block + block - 1] += 1
    return x0


def _pixel_fraction(d: torch.Tensor, block: int, ho: int, wo: int, which: int) -> float:
    """Fraction of output pixels whose block decision is ``which`` (edge blocks count their real size)."""
    return float((expand_blocks(d, block, ho, wo) == which).float().mean())


def sweep_active(x: torch.Tensor, layer: torch.nn.Conv2d, block: int, fractions: list[float], reps: int,
                 tau_t: float, tau_s: float, seed: int = 0, x0: torch.Tensor | None = None) -> list[dict[str, float]]:
    """Controlled gates: random blocks change (see :func:`controlled_x0`), the rest is static. Each sparse
    call is the whole :func:`triple_sparse_conv_fast` (gate, gather, GEMM, scatter, cache update) with
    the caches in the layout it produces itself (channels-last), timed interleaved with dense ``conv2d``.

    Two layouts of the input ``x``: NCHW (as a default PyTorch network hands it over; dense ``conv2d``
    on it is the baseline of the target) and channels-last (a network kept in channels-last memory
    format, where dense ``conv2d`` is itself faster); each sparse call is compared with the dense call on
    the same input. ``x0`` overrides the controlled previous input (one fraction then)."""
    w, b = layer.weight.detach(), layer.bias.detach()
    y0 = F.conv2d(x, w, b, padding=1).contiguous(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    ho, wo = y0.shape[-2:]
    out = []
    for f in tqdm(fractions, desc="active-fraction sweep", leave=False):
        prev = (controlled_x0(x, block, f, seed) if x0 is None else x0).contiguous(memory_format=torch.channels_last)
        times: dict[str, list[float]] = {"dense": [], "sparse": [], "dense_cl": [], "sparse_cl": []}
        d = None
        for _ in range(reps):  # interleaved, so all see the same load
            for key, xin in (("", x), ("_cl", x_cl)):
                times["dense" + key].append(_timed(lambda: F.conv2d(xin, w, b, padding=1))[1])  # noqa: B023
                res, ms = _timed(lambda: triple_sparse_conv_fast(xin, prev, y0, w, b, stride=1, padding=1,  # noqa: B023
                                                                 block=block, tau_t=tau_t, tau_s=tau_s,
                                                                 dense_above=2.0))
                times["sparse" + key].append(ms)
                d = res[3]
        assert d is not None
        row = dict(target=f, active=_pixel_fraction(d, block, ho, wo, COMPUTE),
                   interpolate=_pixel_fraction(d, block, ho, wo, INTERPOLATE),
                   load_1m=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
        for key, t in times.items():
            row[f"ms_{key}"] = _median(t)
            row[f"ms_{key}_min"] = min(t)
        out.append(row)
    return out


def break_even(sweep: list[dict[str, float]], key: str = "", layout: str = "") -> float:
    """Active fraction where sparse time crosses dense time (linear interpolation); 1.0 if never.
    ``key`` "" (medians) or "_min"; ``layout`` "" (NCHW input) or "_cl" (channels-last input)."""
    pts = [(r["active"], r[f"ms_sparse{layout}{key}"] / r[f"ms_dense{layout}{key}"]) for r in sweep]
    for (a0, r0), (a1, r1) in zip(pts, pts[1:]):
        if r0 < 1 <= r1:
            return a0 + (1 - r0) * (a1 - a0) / (r1 - r0)
    return 1.0 if all(r < 1 for _, r in pts) else 0.0


# ---- program --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--block", type=int, default=8)
    p.add_argument("--refresh", type=int, default=30)
    p.add_argument("--tau-t", type=float, default=0.1, help="tau_t relative to mean |feature| of frame 0")
    p.add_argument("--tau-s", type=float, default=0.15, help="tau_s relative to mean |feature| of frame 0")
    p.add_argument("--sweep-taus", default="0.05,0.1,0.2,0.4", help="relative tau_t values for the FLOPs/error sweep")
    p.add_argument("--sweep-frames", type=int, default=60)
    p.add_argument("--reps", type=int, default=21)
    p.add_argument("--noise", type=float, default=0.01, help="sensor noise sigma (frames in [0, 1])")
    p.add_argument("--out", default=str(REPORT))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    stack = FeatureStack()
    f8, f16 = [], []
    for frame in camera_like_frames(args.frames, noise=args.noise):
        a, b = stack(frame)
        f8.append(a)
        f16.append(b)
    torch.manual_seed(1)
    layer = torch.nn.Conv2d(256, 256, 3, padding=1)
    torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")

    with torch.no_grad():
        floor = noise_floor(stack, layer, args.noise)
    print("Synthetic camera-like footage (procedural static camera, moving textured objects; NOT real video), "
          f"{args.frames} frames of 480x864; conv 256->256 3x3; CPU, {args.threads} threads; block {args.block}, "
          f"dense refresh every {args.refresh}.\nNoise floor (dense output change between two sensor-noise draws of a "
          f"static frame, the least error a REUSE costs): {floor[0]:.2%} at 1/8, {floor[1]:.2%} at 1/16.\n")
    results: dict[str, Any] = {}
    for name, feats in (("1/8 (60x108)", f8), ("1/16 (30x54)", f16)):
        scale = float(feats[0].abs().mean())
        sweep = []
        with torch.no_grad():
            for rel in [float(v) for v in args.sweep_taus.split(",")]:
                r = study_video(feats[: args.sweep_frames], layer, rel * scale, args.tau_s * scale, args.block,
                                args.refresh)
                sweep.append(dict(rel_tau_t=rel, **{k: v for k, v in r.items() if k != "per_frame"}))
            main_run = study_video(feats, layer, args.tau_t * scale, args.tau_s * scale, args.block, args.refresh)
        results[name] = dict(feature_scale=scale, tau_sweep=sweep,
                             main={k: v for k, v in main_run.items() if k != "per_frame"},
                             per_frame=[dict(frame=r["frame"], fractions=[round(f, 4) for f in r["fractions"]],
                                             rel_err=round(r["rel_err"], 5)) for r in main_run["per_frame"]])
        print(f"### {name}: tau sweep over {min(args.sweep_frames, len(feats))} frames "
              f"(tau_s = {args.tau_s} x mean|x|)\n")
        print("| tau_t / mean|x| | REUSE | INTERP | COMPUTE | FLOPs saved | mean rel err | max rel err | "
              "ms dense | ms sparse |\n|---|---|---|---|---|---|---|---|---|")
        for r in sweep + [dict(rel_tau_t=f"{args.tau_t} (all {main_run['frames']} frames)", **results[name]["main"])]:
            fr = r["fractions"]
            print(f"| {r['rel_tau_t']} | {fr[0]:.1%} | {fr[1]:.1%} | {fr[2]:.1%} | {r['flops_saved']:.1%} | "
                  f"{r['mean_rel_err']:.2%} | {r['max_rel_err']:.2%} | {r['ms_dense']:.1f} | {r['ms_sparse']:.1f} |")
        print()

    fracs = [0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0]
    with torch.no_grad():
        x5 = f8[min(5, len(f8) - 1)]
        scale8 = float(f8[0].abs().mean())
        sw = sweep_active(x5, layer, args.block, fracs, args.reps, args.tau_t * scale8, args.tau_s * scale8)
    at25 = min(sw, key=lambda r: abs(r["active"] - 0.25))
    with torch.no_grad():  # the sparse path with every block COMPUTE: how much of the gain is the conv algorithm
        all_compute = sweep_active(x5, layer, args.block, [1.0], args.reps, args.tau_t * scale8, args.tau_s * scale8,
                                   x0=x5 + 1.0)[0]
    summary = dict(break_even_active=break_even(sw), break_even_active_min=break_even(sw, "_min"),
                   break_even_active_cl=break_even(sw, "", "_cl"),
                   speedup_at_75_reuse=at25["ms_dense"] / at25["ms_sparse"],
                   speedup_at_75_reuse_min=at25["ms_dense_min"] / at25["ms_sparse_min"],
                   speedup_at_75_reuse_cl=at25["ms_dense_cl"] / at25["ms_sparse_cl"],
                   ms_all_compute=all_compute["ms_sparse"], ms_all_compute_dense=all_compute["ms_dense"],
                   speedup_at_75_reuse_vs_all_compute=all_compute["ms_sparse"] / at25["ms_sparse"])
    print(f"### Controlled gates at 1/8 (60x108), block {args.block}, triple gate timed (tau_s = {args.tau_s} x "
          f"mean|x|), median (min) of {args.reps} interleaved calls; active = COMPUTE share of output pixels\n")
    print("| active (COMPUTE) | ms dense NCHW | ms sparse (whole call) | speedup | ms dense channels-last | "
          "ms sparse, channels-last x | speedup channels-last | load 1m |\n|---|---|---|---|---|---|---|---|")
    for r in sw:
        print(f"| {r['active']:.1%} | {r['ms_dense']:.1f} ({r['ms_dense_min']:.1f}) | {r['ms_sparse']:.1f} "
              f"({r['ms_sparse_min']:.1f}) | {r['ms_dense'] / r['ms_sparse']:.2f}x "
              f"({r['ms_dense_min'] / r['ms_sparse_min']:.2f}x) | {r['ms_dense_cl']:.1f} | {r['ms_sparse_cl']:.1f} | "
              f"{r['ms_dense_cl'] / r['ms_sparse_cl']:.2f}x | {r['load_1m']:.2f} |")
    def be(v: float) -> str:
        return f"{v:.0%}" if v < 1.0 else "not reached"

    print(f"\nbreak-even active fraction: {be(summary['break_even_active'])} (from min times: "
          f"{be(summary['break_even_active_min'])}; channels-last: {be(summary['break_even_active_cl'])}); "
          f"speedup at 75% REUSE ({at25['active']:.1%} active): {summary['speedup_at_75_reuse']:.2f}x "
          f"(min times {summary['speedup_at_75_reuse_min']:.2f}x; channels-last input and dense baseline "
          f"{summary['speedup_at_75_reuse_cl']:.2f}x)")
    print(f"every block COMPUTE (x0 = x + 1, the same kernels on the whole map): {all_compute['ms_sparse']:.1f} ms vs "
          f"dense conv2d {all_compute['ms_dense']:.1f} ms, so the Winograd cells alone are "
          f"{all_compute['ms_dense'] / all_compute['ms_sparse']:.2f}x; skipping at 75% REUSE gains "
          f"{summary['speedup_at_75_reuse_vs_all_compute']:.2f}x over that")

    load = os.getloadavg() if hasattr(os, "getloadavg") else None  # timings are only valid on a quiet machine
    busy = load is not None and load[0] > (os.cpu_count() or 1)
    print(f"load average at the end: {tuple(round(x, 2) for x in load or ())}"
          + (" — over the core count: other processes distorted the timings" if busy else ""))
    row = dict(bench="sparse_conv", time=time.strftime("%Y-%m-%dT%H:%M:%S"), machine=describe_machine(),
               load_average=load,
               threads=args.threads, footage="synthetic camera-like (procedural)", frames=args.frames,
               noise=args.noise, noise_floor=dict(zip(("1/8", "1/16"), floor)),
               block=args.block, refresh=args.refresh, rel_tau_t=args.tau_t, rel_tau_s=args.tau_s,
               videos={k: {kk: vv for kk, vv in v.items() if kk != "per_frame"} for k, v in results.items()},
               active_sweep=sw, **summary)
    print(f"\nappended to {append_jsonl(args.out, row)}")
    return row


if __name__ == "__main__":
    main()
