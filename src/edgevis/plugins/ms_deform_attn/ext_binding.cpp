// torch binding of kernel.cu for GPU tests and benchmarks (built on demand by ext.py).
// Not part of libedgevis_plugins.so: CMakeLists.txt only globs plugin.cpp and kernel.cu.
#include <torch/extension.h>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernel.h"

namespace {

torch::Tensor forward(torch::Tensor value, torch::Tensor spatial_shapes, torch::Tensor level_start_index,
                      torch::Tensor sampling_locations, torch::Tensor attention_weights) {
  TORCH_CHECK(value.is_cuda() && value.is_contiguous(), "value must be a contiguous CUDA tensor");
  TORCH_CHECK(value.dim() == 4 && sampling_locations.dim() == 6 && attention_weights.dim() == 5,
              "expected value [B,S,M,D], sampling_locations [B,Q,M,L,P,2], attention_weights [B,Q,M,L,P]");
  TORCH_CHECK(value.scalar_type() == at::kFloat || value.scalar_type() == at::kHalf, "value must be float32 or float16");
  TORCH_CHECK(sampling_locations.scalar_type() == value.scalar_type() &&
                  attention_weights.scalar_type() == value.scalar_type(),
              "sampling_locations and attention_weights must have value's dtype");
  TORCH_CHECK(spatial_shapes.scalar_type() == level_start_index.scalar_type() &&
                  (spatial_shapes.scalar_type() == at::kLong || spatial_shapes.scalar_type() == at::kInt),
              "spatial_shapes and level_start_index must both be int64 or int32");
  for (auto const& t : {spatial_shapes, level_start_index, sampling_locations, attention_weights}) {
    TORCH_CHECK(t.is_cuda() && t.is_contiguous() && t.get_device() == value.get_device(),
                "all inputs must be contiguous CUDA tensors on value's device");
  }
  c10::cuda::CUDAGuard guard(value.device());
  edgevis::MsdaDims dims{};
  dims.batch = static_cast<int32_t>(value.size(0));
  dims.spatial = static_cast<int32_t>(value.size(1));
  dims.heads = static_cast<int32_t>(value.size(2));
  dims.channels = static_cast<int32_t>(value.size(3));
  dims.levels = static_cast<int32_t>(sampling_locations.size(3));
  dims.queries = static_cast<int32_t>(sampling_locations.size(1));
  dims.points = static_cast<int32_t>(sampling_locations.size(4));
  auto output = torch::empty({dims.batch, dims.queries, dims.heads * dims.channels}, value.options());  // (B, Q, M*D)
  auto dtype = value.scalar_type() == at::kHalf ? edgevis::MsdaDType::kFloat16 : edgevis::MsdaDType::kFloat32;
  auto itype = spatial_shapes.scalar_type() == at::kLong ? edgevis::MsdaIndexType::kInt64 : edgevis::MsdaIndexType::kInt32;
  cudaError_t err = edgevis::msda_forward(dtype, itype, dims, value.data_ptr(), spatial_shapes.data_ptr(),
                                          level_start_index.data_ptr(), sampling_locations.data_ptr(),
                                          attention_weights.data_ptr(), output.data_ptr(),
                                          c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "msda_forward failed: ", cudaGetErrorString(err));
  return output;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "multi-scale deformable attention forward (CUDA)");
}
