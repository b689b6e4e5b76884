// edgevis ConvGRU fused state update: the C launcher shared by the TensorRT plugin (plugin.cpp) and the
// torch-side extension (ext.py loads it through ctypes). No TensorRT or torch headers here.
//
//   h_out = (1 - sigmoid(z_pre)) * h + sigmoid(z_pre) * tanh(n_pre),   z_pre = zr_pre[:, 0:C]
//
// Layout: NCHW, contiguous. zr_pre (B, 2C, H, W) and n_pre (B, C, H, W) are FP32 or FP16 (act_dtype);
// h and h_out (B, C, H, W) are FP32 (mixed-precision state); h_out_f16 (B, C, H, W) FP16 is optional
// (nullptr: not written). The math runs in FP32.
#pragma once

#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

enum EdgevisActDtype { EDGEVIS_ACT_F32 = 0, EDGEVIS_ACT_F16 = 1 };

// Returns cudaSuccess, cudaErrorInvalidValue for bad sizes/dtype, or the launch error.
// In-place is allowed: h_out may equal h (each element is read before it is written by the same thread).
int edgevis_convgru_update(const void* zr_pre, const void* n_pre, int act_dtype, const float* h, float* h_out,
                           void* h_out_f16, int64_t batch, int64_t channels, int64_t hw, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
