// Multi-scale deformable attention CUDA kernel: the one source shared by the TensorRT plugin
// (plugin.cpp) and the torch extension used in GPU tests (ext_binding.cpp).
//
// Plain C++ interface (no TensorRT, no torch, no cuda_fp16 types), so every caller can include it.
// Layouts (contiguous, Deformable DETR semantics):
//   value              [B, S, M, D]        FP32 or FP16
//   spatial_shapes     [L, 2]              int64 or int32, (H, W) per level
//   level_start_index  [L]                 int64 or int32
//   sampling_locations [B, Q, M, L, P, 2]  same dtype as value, normalised (x, y) in [0, 1]
//   attention_weights  [B, Q, M, L, P]     same dtype as value
//   output             [B, Q, M, D]        same dtype as value (== [B, Q, M*D])
// Bilinear sampling with zero padding, align_corners=False. Coordinates and accumulation in FP32.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace edgevis {

enum class MsdaDType : int32_t { kFloat32 = 0, kFloat16 = 1 };
enum class MsdaIndexType : int32_t { kInt64 = 0, kInt32 = 1 };

struct MsdaDims {
  int32_t batch;       // B
  int32_t spatial;     // S = sum of H_l * W_l
  int32_t heads;       // M
  int32_t channels;    // D
  int32_t levels;      // L
  int32_t queries;     // Q
  int32_t points;      // P
};

// Enqueues the kernel on `stream`. Returns cudaSuccess or the launch error.
cudaError_t msda_forward(MsdaDType dtype, MsdaIndexType index_type, MsdaDims const& dims,
                         void const* value, void const* spatial_shapes, void const* level_start_index,
                         void const* sampling_locations, void const* attention_weights, void* output,
                         cudaStream_t stream);

}  // namespace edgevis
