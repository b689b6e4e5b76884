// Multi-scale deformable attention forward kernel (see kernel.h for layouts and semantics).
//
// One thread per output element (b, q, m, d). Consecutive threads take consecutive channels d of
// the same (b, q, m), so a warp reads each sampled value row coalesced and the sampling location
// and weight loads are warp-wide broadcasts. Coordinates, bilinear weights and the accumulator are
// FP32 whatever the I/O dtype; FP16 is only the storage format.
#include "kernel.h"

#include <cuda_fp16.h>

namespace edgevis {
namespace {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

// value[y, x] of one level for this thread's (b, m, d); zero outside the map (zero padding).
template <typename T>
__device__ __forceinline__ float corner(T const* level, int32_t y, int32_t x, int32_t h, int32_t w, int64_t pitch) {
  if (y < 0 || x < 0 || y >= h || x >= w) return 0.0f;
  return to_float(level[(static_cast<int64_t>(y) * w + x) * pitch]);
}

template <typename T, typename I>
__global__ void msda_forward_kernel(T const* __restrict__ value, I const* __restrict__ spatial_shapes,
                                    I const* __restrict__ level_start_index, T const* __restrict__ sampling_locations,
                                    T const* __restrict__ attention_weights, T* __restrict__ output, MsdaDims dims) {
  int64_t const total = static_cast<int64_t>(dims.batch) * dims.queries * dims.heads * dims.channels;
  int64_t const pitch = static_cast<int64_t>(dims.heads) * dims.channels;  // elements between spatial positions
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int32_t const d = static_cast<int32_t>(i % dims.channels);
    int64_t rest = i / dims.channels;
    int32_t const m = static_cast<int32_t>(rest % dims.heads);
    rest /= dims.heads;  // b * Q + q
    int32_t const b = static_cast<int32_t>(rest / dims.queries);
    T const* base = value + static_cast<int64_t>(b) * dims.spatial * pitch + static_cast<int64_t>(m) * dims.channels + d;
    int64_t sample = (rest * dims.heads + m) * dims.levels * dims.points;  // index of (b, q, m, 0, 0)
    float acc = 0.0f;
    for (int32_t l = 0; l < dims.levels; ++l) {
      int32_t const h = static_cast<int32_t>(spatial_shapes[2 * l]);
      int32_t const w = static_cast<int32_t>(spatial_shapes[2 * l + 1]);
      T const* level = base + static_cast<int64_t>(level_start_index[l]) * pitch;
      float const hf = static_cast<float>(h);
      float const wf = static_cast<float>(w);
      for (int32_t p = 0; p < dims.points; ++p, ++sample) {
        // align_corners=False: pixel i covers [i, i+1) in units of 1/size, centre at i + 0.5.
        float const x = to_float(sampling_locations[2 * sample]) * wf - 0.5f;
        float const y = to_float(sampling_locations[2 * sample + 1]) * hf - 0.5f;
        if (!(x > -1.0f && y > -1.0f && x < wf && y < hf)) continue;  // all 4 corners outside (or NaN)
        float const x0f = floorf(x);
        float const y0f = floorf(y);
        int32_t const x0 = static_cast<int32_t>(x0f);
        int32_t const y0 = static_cast<int32_t>(y0f);
        float const fx = x - x0f;
        float const fy = y - y0f;
        float const top = (1.0f - fx) * corner(level, y0, x0, h, w, pitch) + fx * corner(level, y0, x0 + 1, h, w, pitch);
        float const bottom =
            (1.0f - fx) * corner(level, y0 + 1, x0, h, w, pitch) + fx * corner(level, y0 + 1, x0 + 1, h, w, pitch);
        acc += to_float(attention_weights[sample]) * ((1.0f - fy) * top + fy * bottom);
      }
    }
    output[i] = from_float<T>(acc);
  }
}

template <typename T, typename I>
cudaError_t launch(MsdaDims const& dims, void const* value, void const* spatial_shapes, void const* level_start_index,
                   void const* sampling_locations, void const* attention_weights, void* output, cudaStream_t stream) {
  int64_t const total = static_cast<int64_t>(dims.batch) * dims.queries * dims.heads * dims.channels;
  if (total == 0) return cudaSuccess;
  constexpr int32_t kThreads = 256;
  int64_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > (int64_t{1} << 30)) blocks = int64_t{1} << 30;  // grid-stride loop covers the rest
  msda_forward_kernel<T, I><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
      static_cast<T const*>(value), static_cast<I const*>(spatial_shapes), static_cast<I const*>(level_start_index),
      static_cast<T const*>(sampling_locations), static_cast<T const*>(attention_weights), static_cast<T*>(output),
      dims);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_index(MsdaIndexType index_type, MsdaDims const& dims, void const* value, void const* spatial_shapes,
                         void const* level_start_index, void const* sampling_locations, void const* attention_weights,
                         void* output, cudaStream_t stream) {
  if (index_type == MsdaIndexType::kInt64) {
    return launch<T, int64_t>(dims, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                              output, stream);
  }
  return launch<T, int32_t>(dims, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                            output, stream);
}

}  // namespace

cudaError_t msda_forward(MsdaDType dtype, MsdaIndexType index_type, MsdaDims const& dims, void const* value,
                         void const* spatial_shapes, void const* level_start_index, void const* sampling_locations,
                         void const* attention_weights, void* output, cudaStream_t stream) {
  if (dtype == MsdaDType::kFloat16) {
    return launch_index<__half>(index_type, dims, value, spatial_shapes, level_start_index, sampling_locations,
                                attention_weights, output, stream);
  }
  return launch_index<float>(index_type, dims, value, spatial_shapes, level_start_index, sampling_locations,
                             attention_weights, output, stream);
}

}  // namespace edgevis
