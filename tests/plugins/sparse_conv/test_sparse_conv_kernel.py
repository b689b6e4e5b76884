"""kernel.cu: nvcc compile check (sm_87 + sm_90) and, on a CUDA machine, the extension vs the reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgevis.plugins.sparse_conv.reference import out_size, triple_sparse_conv_reference

PLUGINS = Path(__file__).resolve().parents[3] / "src" / "edgevis" / "plugins"


@pytest.mark.slow  # ~25 s on 2 cores
def test_kernel_compiles_for_orin_and_hopper(compile_kernel):
    compile_kernel("sparse_conv")


def test_kernel_never_includes_tensorrt():
    for name in ("kernel.cu", "tsc_kernel.h"):
        includes = [ln for ln in (PLUGINS / "sparse_conv" / name).read_text().splitlines() if ln.startswith("#include")]
        assert includes and not [i for i in includes if "NvInfer" in i or "torch" in i or "ATen" in i], includes


def test_plugin_registers_a_v3_creator():
    src = (PLUGINS / "sparse_conv" / "plugin.cpp").read_text()
    assert "IPluginV3OneRuntime" in src and "IPluginCreatorV3One" in src and "REGISTER_TENSORRT_PLUGIN" in src
    assert '"TripleSparseConv"' in src and '"edgevis"' in src


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("k,s,b", [(3, 1, 8), (3, 2, 4), (1, 1, 16), (3, 1, 1)])
@pytest.mark.parametrize("dense_above", [2.0, 0.0])
def test_cuda_kernel_matches_reference(k, s, b, dtype, dense_above):
    from edgevis.plugins.sparse_conv import ext

    g = torch.Generator().manual_seed(0)
    p = k // 2
    x0 = torch.randn(2, 32, 23, 37, generator=g)
    x = x0.clone()
    x[:, :, 3:12, 2:15] += 2 * torch.randn(2, 32, 9, 13, generator=g)  # textured change -> COMPUTE
    x[:, :, :, 26:] = 0.5  # flat band that changed -> INTERPOLATE
    x0[:, :, :, 26:] = 3.0
    w, bias = 0.1 * torch.randn(40, 32, k, k, generator=g), torch.randn(40, generator=g)
    y0 = torch.randn(2, 40, out_size(23, k, s, p), out_size(37, k, s, p), generator=g)
    kw = dict(stride=s, padding=p, block=b, tau_t=0.3, tau_s=0.2, force_dense=False)
    ref = triple_sparse_conv_reference(x, x0, y0, w, bias, **kw)
    dev = [t.cuda().to(dtype) for t in (x, x0, y0, w, bias)]
    out = ext.forward(*dev, dense_above=dense_above, **kw)
    assert torch.equal(out[3].cpu(), ref[3])
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for a, e in zip(out[:3], ref[:3]):
        torch.testing.assert_close(a.float().cpu(), e, atol=tol, rtol=tol)
