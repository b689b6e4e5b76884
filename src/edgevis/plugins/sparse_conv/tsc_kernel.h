// Triple-gated sparse convolution (SpVOS) CUDA kernels: the interface shared by the TensorRT plugin
// (plugin.cpp) and the torch extension (ext.py). No TensorRT or torch headers here.
//
// Semantics are those of reference.py (gate, stride-2 lattice interpolation, owner-tile x0 update).
// Tensors are NCHW, contiguous, all of one dtype (float32 or float16); decision is int32
// (N, ceil(Ho/block), ceil(Wo/block)); bias has Cout entries (zeros when the conv has none).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#if defined(__CUDACC__)
#define EDGEVIS_TSC_HD __host__ __device__
#else
#define EDGEVIS_TSC_HD
#endif

namespace edgevis {
namespace tsc {

enum class DType : int32_t { kFloat32 = 0, kFloat16 = 1 };

struct Params {
    int32_t n = 1, cin = 1, h = 1, w = 1, cout = 1;
    int32_t k = 3, stride = 1, padding = 1, block = 8;
    float tau_t = 0.05f, tau_s = 0.0f;
    int32_t force_dense = 0;
    // When (COMPUTE pixels + INTERPOLATE lattice points) exceeds dense_above * N*Ho*Wo, every block is
    // computed densely (no lattice pass, no skipping) and the result is selected per decision.
    float dense_above = 0.75f;
    DType dtype = DType::kFloat32;
};

EDGEVIS_TSC_HD inline int32_t outSize(int32_t size, int32_t k, int32_t stride, int32_t padding) {
    return (size + 2 * padding - k) / stride + 1;
}

// 0 when the configuration is supported (k in {1,3}, stride in {1,2}, 0 <= padding <= k/2,
// block in {1,4,8,16}, taus >= 0), otherwise a negative code.
int32_t validate(Params const& p);

// Scratch memory enqueue() needs (bytes).
size_t workspaceSize(Params const& p);

// Runs gate -> x0 update -> conv on active blocks (or dense fallback) -> select/fill on `stream`.
cudaError_t enqueue(Params const& p, void const* x, void const* x0, void const* y0, void const* weight,
                    void const* bias, void* y, void* x0New, void* y0New, int32_t* decision, void* workspace,
                    cudaStream_t stream);

}  // namespace tsc
}  // namespace edgevis
