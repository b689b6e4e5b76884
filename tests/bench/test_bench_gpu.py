from __future__ import annotations

import pytest
import torch

from edgevis.bench.gpu import GPU_SKIP, CudaStage, cuda_kernels, cuda_skip_reason, run_gpu_bench
from edgevis.runtime.backends.base import Backend
from edgevis.spec import IOSpec, StateSpec, TensorSpec

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU mode needs a CUDA device")
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip path of a machine without CUDA")


@cpu_only
def test_gpu_mode_skips_without_cuda(tmp_path, capsys):
    assert cuda_skip_reason().startswith(GPU_SKIP)
    assert run_gpu_bench("toy_convgru", quick=True, out_dir=tmp_path) == []
    out = capsys.readouterr().out
    assert GPU_SKIP in out and "torch.cuda.is_available() is False" in out
    assert not (tmp_path / "bench").exists()  # no GPU figure is written


class _Half(Backend):
    """Returns FP16 outputs, as a stage under FP16 autocast would."""

    def _run(self, feeds, dims):
        x = feeds["x"]
        return {"y": x.half() * 2, "h_out": (feeds["h_in"] + 1).half()}


def test_cuda_stage_restores_the_iospec_dtypes():
    spec = IOSpec(model="m", stage="s", inputs=[TensorSpec("x", "float32", ("B", 2))],
                  outputs=[TensorSpec("y", "float32", ("B", 2))],
                  states=[StateSpec("h_in", "h_out", ("B", 2), "float32", "zeros")])
    stage = CudaStage(_Half(spec))
    out = stage({"x": torch.ones(1, 2), "h_in": torch.zeros(1, 2)})
    assert out["y"].dtype == torch.float32 and out["h_out"].dtype == torch.float32  # state stays FP32
    assert torch.equal(out["y"], torch.full((1, 2), 2.0)) and out["y"].device.type == "cpu"


def test_kernel_switch_turns_the_kernels_off_and_back():
    from edgevis.plugins import kernels

    with cuda_kernels(False) as status:
        assert not kernels.enabled()
        assert set(status.values()) == {"pytorch"}
    assert kernels.enabled()


@needs_cuda
def test_gpu_mode_rows_on_cuda(tmp_path):
    rows = run_gpu_bench("toy_convgru", quick=True, out_dir=tmp_path)
    assert [r.backend for r in rows][:2] == ["torch-cuda", "torch-cuda+kernels"]
    for r in rows:
        assert r.device == "cuda" and r.peak_gpu_mem_mb > 0 and r.fps > 0
    (md,) = (tmp_path / "bench").glob("*-gpu-*.md")
    assert "peak GPU MB" in md.read_text()
