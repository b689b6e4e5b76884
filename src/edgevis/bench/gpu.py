"""`edgevis bench --gpu`: the same runner on an NVIDIA GPU, three ways.

- ``torch-cuda``: PyTorch eager on CUDA with edgevis's CUDA kernels switched off (the ops' PyTorch
  paths run on the GPU); the baseline of this mode's speedups;
- ``torch-cuda+kernels``: the same with the kernels of ``plugins/*/ext.py`` built (on demand) and used;
- ``trt``: TensorRT engines at the requested precision, when ``tensorrt`` is importable.

Each step (plus its masks) is timed with CUDA events on torch's current stream and synchronised before
the elapsed time is read. ``--precision fp16`` runs PyTorch under ``torch.autocast("cuda", float16)``
and builds FP16 engines; peak GPU memory is ``torch.cuda.max_memory_allocated`` (torch's allocator,
so TensorRT's own engine memory is not in it). Without a CUDA device the mode prints
:data:`GPU_SKIP` and returns no rows: this module claims no GPU figure it did not measure.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from edgevis.errors import MissingDependencyError
from edgevis.runtime.backends.base import Backend
from edgevis.spec import DTYPES

GPU_SKIP = "no CUDA device: GPU mode skipped"
BASELINE = "torch-cuda"
KERNELS = "torch-cuda+kernels"


def cuda_skip_reason() -> str | None:
    """Why GPU mode cannot run here (the skip line), or None when a CUDA device is usable."""
    if torch.cuda.is_available():
        return None
    return (f"{GPU_SKIP} (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}, "
            "torch.cuda.is_available() is False); run `edgevis bench --gpu` on a machine with an NVIDIA GPU "
            "and a CUDA build of torch")


class CudaStage(Backend):
    """A stage backend on CUDA whose floating outputs are cast back to their IOSpec dtype (FP16 autocast
    must not change the contract: recurrent state stays FP32). ``autocast`` runs the wrapped backend
    under FP16 autocast; the runner's StageCaller brings plain outputs to the host."""

    kind = "cuda"

    def __init__(self, inner: Backend, *, autocast: bool = False) -> None:
        super().__init__(inner.spec)
        self.inner = inner
        self.autocast = autocast
        self.dtypes = {t.name: DTYPES[t.dtype][0] for t in inner.spec.output_specs}

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._run(feeds, {})  # the wrapped backend validates the feeds

    def _run(self, feeds: dict[str, torch.Tensor], dims: dict[str, int]) -> dict[str, torch.Tensor]:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.autocast(device_type, dtype=torch.float16, enabled=self.autocast):
            out = self.inner(feeds)
        res = {}
        for name, v in out.items():
            want = self.dtypes.get(name)
            if want is not None and v.is_floating_point() and v.dtype != want:
                v = v.to(want)
            res[name] = v
        return res

    def close(self) -> None:
        self.inner.close()


@contextmanager
def cuda_kernels(enabled: bool) -> Iterator[dict[str, str]]:
    """Switch edgevis's CUDA kernels on (built on demand) or off for PyTorch eager on CUDA.

    Yields what each op runs on CUDA inside the block. Off: :mod:`edgevis.plugins.kernels` is switched
    off, so each op takes its PyTorch path on the GPU; the setting is restored on exit.
    """
    from edgevis.plugins import kernels
    from edgevis.plugins.ms_deform_attn import ext as msda_ext
    from edgevis.plugins.sparse_conv import ext as tsc_ext

    with kernels.switched(enabled):
        if enabled:
            yield _enable_kernels(msda_ext, tsc_ext)
        else:
            yield dict.fromkeys(("ms_deform_attn", "triple_sparse_conv", "convgru_update"), "pytorch")


def _enable_kernels(msda_ext: Any, tsc_ext: Any) -> dict[str, str]:
    from edgevis.plugins.convgru import ext as gru_ext

    status = {}
    for name, load in (("ms_deform_attn", msda_ext.load), ("convgru_update", gru_ext.load)):
        try:
            load()
            status[name] = "cuda kernel"
        except (MissingDependencyError, RuntimeError, OSError) as e:  # no nvcc / build error: PyTorch path
            status[name] = f"pytorch ({type(e).__name__}: {str(e)[:100]})"
    status["triple_sparse_conv"] = "cuda kernel" if tsc_ext.available() else "pytorch (extension did not build)"
    return status


def _open(model: Any, variant: str, precision: str, onnx_dir: Path) -> dict[str, Backend]:
    from edgevis.runtime.pipeline import open_backends

    if variant == "trt":  # engines built (or reused) at ``precision``
        return open_backends(model, "trt", threads=1, onnx_dir=onnx_dir, precision=precision)
    stages = open_backends(model, "torch", device="cuda")
    return {s: CudaStage(b, autocast=precision == "fp16") for s, b in stages.items()}


def _to_cpu(model: Any) -> None:
    """Free the GPU for the next variant (so its peak memory is its own)."""
    for s in model.stages:
        model.stage(s).to("cpu")
    torch.cuda.empty_cache()


def run_gpu_bench(model_name: str, *, precision: str = "fp32", frames: int | None = None, quick: bool = False,
                  streams: int = 1, out_dir: Path = Path("reports")) -> list[Any]:
    """GPU-mode rows (see the module doc); [] with the printed skip line where there is no CUDA device."""
    why = cuda_skip_reason()
    if why is not None:
        print(why)
        return []
    from edgevis.bench import report
    from edgevis.bench.machine import describe_machine
    from edgevis.bench.sparsity import make_probe
    from edgevis.models.zoo import build_model
    from edgevis.runtime.pipeline import best_backend
    from edgevis.runtime.runner import StreamRunner

    report.check_precision(precision)
    model = build_model(model_name)
    hw = model.policy().input_hw(model.stages[0])
    variants = [BASELINE, KERNELS] + (["trt"] if best_backend() == "trt" else [])
    if "trt" not in variants:
        print("edgevis bench --gpu: TensorRT is not installed: no trt row")
    plan = report.plan_precisions(variants, precision, cuda=True, baseline=BASELINE)
    n, warmup = report.bench_length(model_name, frames, quick)
    clip = report.bench_clip(hw, n + warmup)
    options = report.policy_options(model, clip)
    machine, gflops, stamp = describe_machine(), report.count_gflops(model), time.strftime("%Y%m%d-%H%M%S")
    rows, all_lat = [], {}
    for variant, prec in plan.items():
        with cuda_kernels(variant == KERNELS) as kernels:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            runner = StreamRunner(model.policy(**options), _open(model, variant, prec, Path(out_dir) / "onnx"),
                                  num_streams=streams)
            probe = make_probe(model, variant)
            try:
                stats, lat = report.measure(runner, clip.frames, warmup=warmup, streams=streams, cuda=True,
                                            label=f"bench --gpu {model_name} [{variant}]", probe=probe)
            finally:
                runner.close()
            peak = torch.cuda.max_memory_allocated() / 2**20
            _to_cpu(model)
        all_lat[variant] = lat
        sparse = probe.summary(gflops.get(probe.stage)) if probe is not None else None
        rows.append(report.make_row(model_name, variant, prec, hw, streams=streams, threads=torch.get_num_threads(),
                                    frames=n, stats=stats, latencies=lat, gflops=gflops, machine=machine,
                                    stamp=stamp, sparse=sparse, device="cuda", peak_gpu_mem_mb=peak,
                                    kernels=dict(kernels) if variant != "trt" else None))
    report.set_speedups(rows, BASELINE)
    report.write_reports(rows, all_lat, Path(out_dir), model_name, stamp, baseline="PyTorch eager on CUDA")
    return rows
