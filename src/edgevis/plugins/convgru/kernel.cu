// edgevis ConvGRU fused state update (see kernel.h for the contract).
//
// One pass over the state: per element 2 activation reads (z, n), one FP32 read of h, one FP32 write
// of h' and optionally one FP16 write. Vectorised by 4 elements (float4 for FP32 data, 8-byte loads of
// 4 halves for FP16 activations) with a scalar tail; rows whose pointers are not aligned take the
// scalar path. Grid: x strides over one batch item's C*H*W elements, y is the batch index, so the z
// half of zr_pre (channel stride 2C) is read in place without a Slice.
//
// Standalone: compiles with nvcc alone (no TensorRT, no torch):
//   nvcc -c kernel.cu -gencode arch=compute_87,code=sm_87 -gencode arch=compute_90,code=sm_90 -Xcompiler -fPIC
#include "kernel.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace {

constexpr int kThreads = 256;
constexpr int kVec = 4;
constexpr int64_t kMaxBlocksX = 4096;
constexpr int64_t kMaxBatch = 65535;  // gridDim.y limit

__device__ __forceinline__ float gru_update(float z_pre, float n_pre, float h) {
  const float z = 1.0f / (1.0f + expf(-z_pre));  // expf -> +inf for very negative z_pre gives z = 0
  const float n = tanhf(n_pre);
  return fmaf(z, n - h, h);  // (1 - z) * h + z * n
}

template <typename Act>
struct ActIO;

template <>
struct ActIO<float> {
  static constexpr uintptr_t kAlign = 16;
  __device__ __forceinline__ static float load1(const float* p) { return __ldg(p); }
  __device__ __forceinline__ static void load4(const float* p, float v[4]) {
    const float4 t = __ldg(reinterpret_cast<const float4*>(p));
    v[0] = t.x;
    v[1] = t.y;
    v[2] = t.z;
    v[3] = t.w;
  }
};

union Half4 {
  uint2 raw;
  __half2 h2[2];
};

template <>
struct ActIO<__half> {
  static constexpr uintptr_t kAlign = 8;
  __device__ __forceinline__ static float load1(const __half* p) { return __half2float(p[0]); }
  __device__ __forceinline__ static void load4(const __half* p, float v[4]) {
    Half4 t;
    t.raw = __ldg(reinterpret_cast<const uint2*>(p));
    const float2 a = __half22float2(t.h2[0]);
    const float2 b = __half22float2(t.h2[1]);
    v[0] = a.x;
    v[1] = a.y;
    v[2] = b.x;
    v[3] = b.y;
  }
};

__device__ __forceinline__ bool aligned(const void* p, uintptr_t bytes) {
  return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

// h and h_out may alias (in-place update), so they are neither __restrict__ nor read through __ldg.
template <typename Act, bool kEmit16>
__global__ void __launch_bounds__(kThreads)
    convgru_update_kernel(const Act* __restrict__ zr_pre, const Act* __restrict__ n_pre, const float* h,
                          float* h_out, __half* __restrict__ h_out_f16, int64_t row) {
  const int64_t b = blockIdx.y;
  const Act* z_row = zr_pre + b * 2 * row;  // z is channels [0, C) of the 2C gate channels
  const Act* n_row = n_pre + b * row;
  const float* h_row = h + b * row;
  float* o_row = h_out + b * row;
  __half* o16_row = kEmit16 ? h_out_f16 + b * row : nullptr;

  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const bool vec_ok = aligned(z_row, ActIO<Act>::kAlign) && aligned(n_row, ActIO<Act>::kAlign) &&
                      aligned(h_row, 16) && aligned(o_row, 16) && (!kEmit16 || aligned(o16_row, 8));
  const int64_t n_vec = vec_ok ? row / kVec : 0;

  for (int64_t i = tid; i < n_vec; i += stride) {
    const int64_t e = i * kVec;
    float zv[kVec], nv[kVec];
    ActIO<Act>::load4(z_row + e, zv);
    ActIO<Act>::load4(n_row + e, nv);
    const float4 hv = *reinterpret_cast<const float4*>(h_row + e);
    float4 ov;
    ov.x = gru_update(zv[0], nv[0], hv.x);
    ov.y = gru_update(zv[1], nv[1], hv.y);
    ov.z = gru_update(zv[2], nv[2], hv.z);
    ov.w = gru_update(zv[3], nv[3], hv.w);
    *reinterpret_cast<float4*>(o_row + e) = ov;
    if (kEmit16) {
      Half4 t;
      t.h2[0] = __floats2half2_rn(ov.x, ov.y);
      t.h2[1] = __floats2half2_rn(ov.z, ov.w);
      *reinterpret_cast<uint2*>(o16_row + e) = t.raw;
    }
  }
  // scalar tail (row % 4 elements), or the whole row when the pointers are not aligned
  for (int64_t e = n_vec * kVec + tid; e < row; e += stride) {
    const float o = gru_update(ActIO<Act>::load1(z_row + e), ActIO<Act>::load1(n_row + e), h_row[e]);
    o_row[e] = o;
    if (kEmit16) o16_row[e] = __float2half_rn(o);
  }
}

template <typename Act>
cudaError_t launch(const void* zr_pre, const void* n_pre, const float* h, float* h_out, void* h_out_f16,
                   int64_t batch, int64_t row, cudaStream_t stream) {
  const int64_t work = (row + kVec - 1) / kVec;
  int64_t blocks = (work + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocksX) blocks = kMaxBlocksX;
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(batch));
  const Act* zr = static_cast<const Act*>(zr_pre);
  const Act* n = static_cast<const Act*>(n_pre);
  if (h_out_f16 != nullptr) {
    convgru_update_kernel<Act, true>
        <<<grid, kThreads, 0, stream>>>(zr, n, h, h_out, static_cast<__half*>(h_out_f16), row);
  } else {
    convgru_update_kernel<Act, false><<<grid, kThreads, 0, stream>>>(zr, n, h, h_out, nullptr, row);
  }
  return cudaGetLastError();
}

}  // namespace

extern "C" int edgevis_convgru_update(const void* zr_pre, const void* n_pre, int act_dtype, const float* h,
                                      float* h_out, void* h_out_f16, int64_t batch, int64_t channels, int64_t hw,
                                      cudaStream_t stream) {
  if (zr_pre == nullptr || n_pre == nullptr || h == nullptr || h_out == nullptr || batch <= 0 || channels <= 0 ||
      hw <= 0 || batch > kMaxBatch) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int64_t row = channels * hw;
  if (act_dtype == EDGEVIS_ACT_F32) {
    return static_cast<int>(launch<float>(zr_pre, n_pre, h, h_out, h_out_f16, batch, row, stream));
  }
  if (act_dtype == EDGEVIS_ACT_F16) {
    return static_cast<int>(launch<__half>(zr_pre, n_pre, h, h_out, h_out_f16, batch, row, stream));
  }
  return static_cast<int>(cudaErrorInvalidValue);
}
