"""SeqFormer vs Recurrent SeqFormer: per-stage latency, encoder-only latency and MACs, PyTorch vs onnxruntime CPU.

    python -m edgevis.bench.seqformer [--frames 3] [--threads 2] [--tiny]

For each model (full size at 360x640 by default; ``--tiny`` for a quick smoke run) it measures:
- ``frame`` stage (backbone + encoder + mask features) and ``clip`` stage (decoder over T = 5 frames
  + top-K masks) per call, on PyTorch eager (CPU) and onnxruntime CPU (portable ONNX);
- the encoder alone (projected levels -> memory): SeqFormer's 6-layer deformable encoder vs the
  recurrent ConvGRU encoder, same backends;
- MACs of each (torch.utils.flop_counter; the deformable sampling itself is not counted).
Ratios SeqFormer / Recurrent SeqFormer: encoder only, and the whole per-frame pipeline (frame + clip,
decoding every frame). Timings: median of ``--frames`` runs after ``--warmup``. Prints a Markdown
table and appends one JSON row (machine described) to ``reports/bench/seqformer.jsonl``.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgevis.bench.machine import append_jsonl, bench_parser, describe_machine, median_ms
from edgevis.models.deformable import flatten_levels

REPORT = Path("reports/bench/seqformer.jsonl")


class AttentionEncoderOnly(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, l0: torch.Tensor, l1: torch.Tensor, l2: torch.Tensor, l3: torch.Tensor) -> torch.Tensor:
        return self.net.encode([l0, l1, l2, l3])


class RecurrentEncoderOnly(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, l0: torch.Tensor, l1: torch.Tensor, l2: torch.Tensor, l3: torch.Tensor, h1: torch.Tensor,
                h2: torch.Tensor, h3: torch.Tensor, h4: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs, new = self.net.encode_recurrent([l0, l1, l2, l3], [h1, h2, h3, h4])
        return (flatten_levels(outs), *new)


def gmacs(module: nn.Module, args: tuple[torch.Tensor, ...]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    module.requires_grad_(False)  # views of parameters taken under no_grad confuse the counter's module tracker
    with FlopCounterMode(display=False) as c, torch.no_grad():
        module(*args)
    return c.get_total_flops() / 2e9


def ort_session(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, threads: int) -> Any:
    """Portable ONNX (static batch 1) of a module that is not a stage, for the encoder-only timings."""
    import onnxruntime as ort

    from edgevis.plugins.flavor import export_flavor

    names = [f"in{i}" for i in range(len(args))]
    with export_flavor("portable"), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=True, input_names=names, external_data=False, opset_version=18)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    return lambda: sess.run(None, feeds)


def bench_model(name: str, frames: int, warmup: int, threads: int, onnx_dir: Path) -> dict[str, Any]:
    from edgevis.models.zoo import build_model
    from edgevis.runtime.backends import OrtBackend, TorchBackend
    from edgevis.runtime.pipeline import ensure_onnx

    torch.manual_seed(0)
    model = build_model(name)
    net = model.module
    recurrent = bool(model.iospec("frame").states)
    row: dict[str, Any] = {"model": name, "resolution": f"{model.cfg.height}x{model.cfg.width}", "window": model.cfg.window}
    feeds = {s: model.iospec(s).example_inputs() for s in model.stages}
    levels = [torch.randn(1, model.cfg.d_model, h, w) for h, w in model.cfg.shapes]
    enc: nn.Module = RecurrentEncoderOnly(net) if recurrent else AttentionEncoderOnly(net)
    enc_args = tuple(levels + (net.init_hidden(1) if recurrent else []))
    row["gmacs"] = {s: round(gmacs(model.stage(s), tuple(feeds[s][n] for n in model.iospec(s).input_names)), 2)
                    for s in model.stages}
    row["gmacs"]["encoder"] = round(gmacs(enc, enc_args), 2)
    torch.set_num_threads(threads)
    ms: dict[str, dict[str, float]] = {"torch": {}, "ort": {}}
    for s in model.stages:
        spec = model.iospec(s)
        tb = TorchBackend(model.stage(s), spec)
        ms["torch"][s] = median_ms(lambda tb=tb, f=feeds[s]: tb(f), warmup=warmup, iters=frames)
        ob = OrtBackend(ensure_onnx(model, s, "portable", onnx_dir), threads=threads)
        ms["ort"][s] = median_ms(lambda ob=ob, f=feeds[s]: ob(f), warmup=warmup, iters=frames)
        ob.close()
    with torch.inference_mode():
        ms["torch"]["encoder"] = median_ms(lambda: enc(*enc_args), warmup=warmup, iters=frames)
    run = ort_session(enc, enc_args, onnx_dir / f"{name}.encoder.onnx", threads)
    ms["ort"]["encoder"] = median_ms(run, warmup=warmup, iters=frames)
    row["latency_ms"] = {b: {k: round(v, 1) for k, v in d.items()} for b, d in ms.items()}
    return row


def markdown(rows: list[dict[str, Any]], ratios: dict[str, Any], machine: dict[str, Any], frames: int) -> str:
    lines = [f"SeqFormer vs Recurrent SeqFormer — median of {frames} runs, batch 1, {machine.get('cpu')} "
             f"({machine.get('cores')} cores visible, threads {ratios['threads']}), no GPU, torch {machine.get('torch')}, "
             f"onnxruntime {machine.get('onnxruntime')}", "",
             "| model | res | backend | frame ms | clip ms (T=5) | encoder ms | frame+clip ms | GMACs frame / clip / encoder |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = r["gmacs"]
        for b, d in r["latency_ms"].items():
            lines.append(f"| {r['model']} | {r['resolution']} | {b} | {d['frame']} | {d['clip']} | {d['encoder']} | "
                         f"{round(d['frame'] + d['clip'], 1)} | {g['frame']} / {g['clip']} / {g['encoder']} |")
    lines.append("")
    for b in ("torch", "ort"):
        lines.append(f"- {b}: encoder speed-up {ratios[b]['encoder']:.2f}x, whole frame+clip pipeline "
                     f"{ratios[b]['pipeline']:.2f}x (paper: 2x end to end)")
    lines.append(f"- encoder MACs ratio {ratios['encoder_macs']:.1f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__, prog="python -m edgevis.bench.seqformer", warmup=1, threads=2)
    p.add_argument("--frames", type=int, default=3, help="timed runs per measurement")
    p.add_argument("--tiny", action="store_true", help="tiny variants (smoke run)")
    p.add_argument("--onnx-dir", default=None, help="where the ONNX files go (default: a temporary folder)")
    p.add_argument("--report", default=str(REPORT))
    args = p.parse_args(argv)
    names = ("seqformer_tiny", "recurrent_seqformer_tiny") if args.tiny else ("seqformer_r50", "recurrent_seqformer")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = Path(args.onnx_dir or tmp)
        rows = [bench_model(n, args.frames, args.warmup, args.threads, onnx_dir) for n in names]
    teacher, student = rows
    ratios: dict[str, Any] = {"threads": args.threads,
                              "encoder_macs": teacher["gmacs"]["encoder"] / max(student["gmacs"]["encoder"], 1e-9)}
    for b in ("torch", "ort"):
        t, s = teacher["latency_ms"][b], student["latency_ms"][b]
        ratios[b] = {"encoder": t["encoder"] / s["encoder"],
                     "pipeline": (t["frame"] + t["clip"]) / (s["frame"] + s["clip"])}
    machine = describe_machine()
    print(markdown(rows, ratios, machine, args.frames))
    append_jsonl(args.report, {"bench": "seqformer", "rows": rows, "ratios": ratios, "frames": args.frames,
                               "machine": machine, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
                               "note": "2-core shared CPU; timings noisy" if machine.get("cores") == 2 else ""})
    print(f"row appended to {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
