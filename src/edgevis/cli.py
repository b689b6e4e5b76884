"""`edgevis <verb>`: the command line. Each verb is a thin function over the library.

User errors (EdgevisError) print one line and exit 2; Ctrl-C exits 130. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edgevis.errors import EdgevisError

EPILOG = """pipeline:
  edgevis models                                  list models and their stages
  edgevis export --model M --flavor portable      torch -> ONNX (+ parity check)  [flavor trt: TensorRT plugin nodes]
  edgevis build  --model M --precision fp16       ONNX -> TensorRT engines (needs TensorRT)
  edgevis run    --model M --source 0 --save out.mp4 --json out.jsonl
  edgevis check  --model M                        PyTorch vs onnxruntime, both flavors, many frames
  edgevis bench  --model M --backends torch,ort   FPS / latency report under reports/
Sources: camera index (0) or /dev/videoN, a video file, an image folder or glob, rtsp:// or http:// URL.
"""


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model name (see `edgevis models`)")
    p.add_argument("--weights", help="checkpoint to load (default: the model's shipped weights, if any)")


def cmd_models(args: argparse.Namespace) -> int:
    from edgevis.models.zoo import MODELS

    if args.names:  # names only, one a line (the Makefile's model lists)
        for name, e in MODELS.items():
            if (args.size == "tiny" and not e.tiny) or (args.size == "full" and e.tiny):
                continue
            print(name)
        return 0
    print(f"{'model':<28} {'family':<20} {'stages':<28} description")
    for name, e in MODELS.items():
        try:
            stages = ",".join(e.build().stages) if args.stages else "-"
        except Exception as ex:  # a model that cannot be built is still listed, with the reason
            stages = f"(unavailable: {type(ex).__name__})"
        tag = " [tiny]" if e.tiny else ""
        tag += " [trained weights]" if e.trained else ""
        print(f"{name:<28} {e.family:<20} {stages:<28} {e.description}{tag}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from edgevis.export.onnx_export import export_stage
    from edgevis.models.zoo import build_model
    from edgevis.runtime.pipeline import onnx_path

    model = build_model(args.model, args.weights)
    stages = args.stage or list(model.stages)
    for s in stages:
        model.check_stage(s)
    if args.target == "arm":
        from edgevis.export.arm import export_for_arm  # portable ONNX tuned for onnxruntime on ARM (+ INT8 QDQ)

        for line in export_for_arm(model, Path(args.out), stages=stages, int8=not args.no_int8):
            print(line)
        return 0
    opts = {"msda_builtin": True} if args.msda_builtin else {}
    for s in tqdm(stages, desc=f"export {args.model} [{args.flavor}]", unit="stage", leave=False):
        report = export_stage(model, s, onnx_path(Path(args.out), model.name, s, args.flavor), args.flavor, **opts)
        print(report.summary())
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from edgevis.engines.build import build_engines

    build_engines(args.model, precision=args.precision, weights=args.weights, onnx_dir=Path(args.onnx_dir),
                  engine_dir=Path(args.engine_dir))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from edgevis.models.zoo import build_model
    from edgevis.runtime.pipeline import best_backend, open_backends, run_streams
    from edgevis.runtime.runner import StreamRunner
    from edgevis.runtime.sinks import open_sinks
    from edgevis.runtime.sources import open_source

    model = build_model(args.model, args.weights)  # fail fast on a bad model name before opening cameras
    sources = [open_source(s) for s in args.source]
    backend = args.backend or best_backend()
    runner = None
    sinks = None
    try:
        policy = model.policy(**_policy_options(args))
        runner = StreamRunner(policy, open_backends(model, backend, threads=args.threads), num_streams=len(sources))
        fps = sources[0].fps or 25.0
        sinks = open_sinks(save=args.save, json=args.json, ytvis=args.ytvis, show=args.show, fps=fps)
        summary = run_streams(runner, sources, [sinks], max_frames=args.max_frames, progress=not args.quiet)
    finally:
        for s in sources:
            s.close()
        if sinks is not None:
            sinks.close()
        if runner is not None:
            runner.close()
    print(summary.line(backend))
    return 0


def _policy_options(args: argparse.Namespace) -> dict:
    opts = {}
    for key in ("first_mask", "key_interval"):
        val = getattr(args, key, None)
        if val is not None:
            opts[key] = val
    return opts


def cmd_demo(args: argparse.Namespace) -> int:
    from edgevis.runtime.demo import run_demo

    run_demo(Path(args.out), model_name=args.model, backend=args.backend, frames=args.frames)
    return 0


def cmd_train(args: argparse.Namespace, rest: list[str], table: str = "TRAINERS") -> int:
    import edgevis.train as tr

    module = tr.entry(getattr(tr, table), args.verb, args.model)
    return int(module.main(args.model, rest) or 0)


def cmd_check(args: argparse.Namespace) -> int:
    import torch

    from edgevis.check.suite import run_checks

    torch.set_num_threads(args.torch_threads)  # correctness, not speed: don't fight onnxruntime's pool for cores

    ok = run_checks(args.model, weights=args.weights, frames=args.frames, out_dir=Path(args.out),
                    flavors=args.flavors.split(","), onnx_dir=Path(args.onnx_dir) if args.onnx_dir else None,
                    save_inputs=Path(args.save_inputs) if args.save_inputs else None,
                    save_outputs=Path(args.save_outputs) if args.save_outputs else None,
                    checks=tuple(args.checks.split(",")), agreement_frames=args.agreement_frames)
    return 0 if ok else 1


def cmd_bench(args: argparse.Namespace) -> int:
    if args.gpu:
        from edgevis.bench.gpu import run_gpu_bench

        run_gpu_bench(args.model, precision=args.precision, frames=args.frames, quick=args.quick,
                      streams=args.streams, out_dir=Path(args.out))
        return 0  # no CUDA device: a printed skip, not a failure
    from edgevis.bench.report import run_bench

    run_bench(args.model, backends=args.backends.split(","), frames=args.frames, quick=args.quick,
              streams=args.streams, threads=args.threads, resolution=args.resolution, out_dir=Path(args.out),
              precision=args.precision)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgevis", description="Deploy video segmentation models: PyTorch -> ONNX -> TensorRT / onnxruntime.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="verb", metavar="verb")
    sub.required = True

    s = sub.add_parser("models", help="list models and their stages")
    s.add_argument("--no-stages", dest="stages", action="store_false", help="skip building models to list stages")
    s.add_argument("--names", action="store_true", help="print model names only, one a line")
    size = s.add_mutually_exclusive_group()
    size.add_argument("--tiny", dest="size", action="store_const", const="tiny", help="with --names: tiny variants only")
    size.add_argument("--full", dest="size", action="store_const", const="full", help="with --names: full-size only")
    s.set_defaults(fn=cmd_models, size=None)

    s = sub.add_parser("export", help="export a model's stages to ONNX (with an onnxruntime parity check)")
    _add_model(s)
    s.add_argument("--flavor", choices=["portable", "trt"], default="portable",
                   help="portable: standard ONNX ops (any onnxruntime, ARM); trt: edgevis TensorRT plugin nodes")
    s.add_argument("--out", default="onnx", help="output folder (files: OUT/<model>/<stage>.<flavor>.onnx)")
    s.add_argument("--stage", action="append", help="export only this stage (repeatable)")
    s.add_argument("--msda-builtin", action="store_true", help="trt flavor: use TensorRT's built-in MSDA plugin")
    s.add_argument("--target", choices=["default", "arm"], default="default",
                   help="arm: portable ONNX tuned for onnxruntime on ARM CPUs, plus an INT8 QDQ variant")
    s.add_argument("--no-int8", action="store_true", help="--target arm: skip the INT8 QDQ variant")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("build", help="build TensorRT engines from the trt-flavor ONNX (needs TensorRT)")
    _add_model(s)
    s.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16")
    s.add_argument("--onnx-dir", default="onnx")
    s.add_argument("--engine-dir", default="engines_cache")
    s.set_defaults(fn=cmd_build)

    s = sub.add_parser("run", help="run a model on cameras, files, folders or streams")
    _add_model(s)
    s.add_argument("--source", action="append", required=True,
                   help="camera index, /dev/videoN, video file, image folder/glob, rtsp:// or http:// URL; repeat for more streams")
    s.add_argument("--backend", choices=["torch", "ort", "trt"], help="default: trt if TensorRT is installed, else ort")
    s.add_argument("--save", help="write an annotated video (one stream: this path; more: _<i> suffixes)")
    s.add_argument("--json", help="write per-frame results as JSON Lines")
    s.add_argument("--ytvis", help="write YouTube-VIS results (RLE masks) at the end")
    s.add_argument("--show", action="store_true", help="show an on-screen window (needs a display)")
    s.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    s.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    s.add_argument("--first-mask", help="spvos: first-frame object masks (DAVIS palette PNG)")
    s.add_argument("--key-interval", type=int, help="mobileinst: run the instance decoder every T frames")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("demo", help="run the default model on the camera or a generated clip; write an annotated video")
    s.add_argument("--model", help="default: the trained demo model (toy model until one ships)")
    s.add_argument("--backend", choices=["torch", "ort", "trt"], help="default: trt if installed, else ort")
    s.add_argument("--frames", type=int, default=60)
    s.add_argument("--out", default="demo_out")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("train", help="train a model on synthetic clips or a dataset (options: edgevis train --model M --help)",
                       add_help=False)
    s.add_argument("--model", required=True)
    s.set_defaults(fn=cmd_train, takes_rest=True)

    s = sub.add_parser("distill", help="distil a student from a teacher (options: edgevis distill --model M --help)",
                       add_help=False)
    s.add_argument("--model", required=True, help="the student model")
    s.set_defaults(fn=lambda a, rest: cmd_train(a, rest, "DISTILLERS"), takes_rest=True)

    s = sub.add_parser("check", help="accuracy checks: PyTorch vs onnxruntime (both flavors), single step and many frames")
    _add_model(s)
    s.add_argument("--frames", type=int, default=300, help="frames of the multi-frame checks (fewer for quick runs)")
    s.add_argument("--flavors", default="portable,trt")
    s.add_argument("--torch-threads", type=int, default=1, help="threads of the PyTorch reference (default 1)")
    s.add_argument("--agreement-frames", type=int, default=50,
                   help="frames of the task-level check (masks and track ids through two runners)")
    s.add_argument("--checks", default="single,drift,agreement", help="which checks (comma-separated)")
    s.add_argument("--out", default="reports/check", help="where JSON reports, PNG plots and the summary go")
    s.add_argument("--onnx-dir", help="where the checked ONNX go (default: OUT/onnx/<flavor>)")
    s.add_argument("--save-inputs", help="folder for polygraphy JSON inputs (default: OUT/polygraphy)")
    s.add_argument("--save-outputs", help="folder for polygraphy JSON reference outputs (default: OUT/polygraphy)")
    s.set_defaults(fn=cmd_check)

    s = sub.add_parser("bench", help="FPS / latency report vs the PyTorch baseline")
    s.add_argument("--model", required=True)
    s.add_argument("--backends", default="torch,ort", help="comma list of torch, ort, trt; or all (every backend present)")
    s.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"),
                   help="fp32 runs everywhere; trt builds engines at fp16/int8; torch fp16 needs --gpu; "
                        "ort runs fp32 only on CPU (default fp32)")
    s.add_argument("--gpu", action="store_true",
                   help="GPU mode: PyTorch eager vs PyTorch + edgevis CUDA kernels vs TensorRT (if installed), "
                        "CUDA-event timing and peak GPU memory; --backends and --threads do not apply (skipped "
                        "with a message where there is no CUDA device)")
    s.add_argument("--frames", type=int, default=None,
                   help="timed frames (default: per model, sized so `make bench` fits in 15 min on 2 cores)")
    s.add_argument("--streams", type=int, default=1)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--resolution", help="HxW (default: the model's deployment resolution)")
    s.add_argument("--quick", action="store_true", help="few frames, for smoke tests")
    s.add_argument("--out", default="reports")
    s.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "takes_rest", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return int((args.fn(args, rest) if getattr(args, "takes_rest", False) else args.fn(args)) or 0)
    except EdgevisError as e:
        print(f"edgevis {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
