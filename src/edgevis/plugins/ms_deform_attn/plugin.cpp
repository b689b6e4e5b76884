// TensorRT IPluginV3 for edgevis::MSDeformAttn (plugin name "MSDeformAttn", namespace "edgevis",
// version "1"), TensorRT >= 10.1. Built into libedgevis_plugins.so by plugins/CMakeLists.txt.
//
// Node (written by onnx_forms.msda_trt_node):
//   inputs  value [B,S,M,D] (FP32|FP16), spatial_shapes [L,2] (INT64|INT32), level_start_index [L]
//           (same int type), sampling_locations [B,Q,M,L,P,2], attention_weights [B,Q,M,L,P] (value's type)
//   output  [B,Q,M*D] (value's type)
//   attributes num_levels, num_points (checked against the shapes when > 0), plugin_namespace,
//           plugin_version (read by the ONNX parser to find this creator)
// All shapes may be dynamic. The math lives in kernel.cu (shared with the torch extension); this file
// only describes shapes, formats and serialisation, and launches it.
#include <NvInfer.h>

#include <cstdint>
#include <exception>

#include "common/plugin_utils.h"
#include "kernel.h"

namespace edgevis {
namespace msda_trt {

using namespace nvinfer1;

constexpr char const* kPluginName = "MSDeformAttn";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "edgevis";
constexpr trt::PluginIdentity kIdentity{kPluginName, kPluginVersion, kPluginNamespace};

class MsdaPlugin final : public trt::PluginV3Base<MsdaPlugin> {
 public:
  MsdaPlugin(int32_t numLevels, int32_t numPoints)
      : trt::PluginV3Base<MsdaPlugin>(kIdentity), mNumLevels(numLevels), mNumPoints(numPoints) {}

  // ---- IPluginV3OneBuild ----
  int32_t getNbOutputs() const noexcept override { return 1; }

  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/,
                          int32_t nbOutputs) noexcept override {
    if (nbInputs != 5 || nbOutputs != 1) return -1;
    Dims const& value = in[0].desc.dims;
    Dims const& loc = in[3].desc.dims;
    Dims const& attn = in[4].desc.dims;
    if (value.nbDims != 4 || in[1].desc.dims.nbDims != 2 || in[2].desc.dims.nbDims != 1 || loc.nbDims != 6 ||
        attn.nbDims != 5) {
      return -1;
    }
    if (!same(value.d[2], loc.d[2]) || !same(loc.d[3], in[1].desc.dims.d[0]) || !same(loc.d[4], attn.d[4])) return -1;
    if (mNumLevels > 0 && !same(loc.d[3], mNumLevels)) return -1;
    if (mNumPoints > 0 && !same(loc.d[4], mNumPoints)) return -1;
    return 0;
  }

  int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override {
    if (nbOutputs != 1 || nbInputs != 5) return -1;
    outputTypes[0] = inputTypes[0];
    return 0;
  }

  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                          int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
                          IExprBuilder& exprBuilder) noexcept override {
    if (nbInputs != 5 || nbOutputs != 1 || inputs[0].nbDims != 4 || inputs[3].nbDims != 6) return -1;
    outputs[0].nbDims = 3;
    outputs[0].d[0] = inputs[0].d[0];  // B
    outputs[0].d[1] = inputs[3].d[1];  // Q
    outputs[0].d[2] = exprBuilder.operation(DimensionOperation::kPROD, *inputs[0].d[2], *inputs[0].d[3]);  // M*D
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    if (nbInputs != 5 || nbOutputs != 1 || pos < 0 || pos >= 6) return false;
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR) return false;
    switch (pos) {
      case 0: return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
      case 1: return desc.type == DataType::kINT64 || desc.type == DataType::kINT32;
      case 2: return desc.type == inOut[1].desc.type;
      default: return desc.type == inOut[0].desc.type;  // sampling_locations, attention_weights, output
    }
  }

  // ---- IPluginV3OneRuntime ----
  int32_t onShapeChange(PluginTensorDesc const* /*in*/, int32_t nbInputs, PluginTensorDesc const* /*out*/,
                        int32_t nbOutputs) noexcept override {
    return (nbInputs == 5 && nbOutputs == 1) ? 0 : -1;
  }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/, void const* const* inputs,
                  void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept override {
    MsdaDims dims{};
    dims.batch = static_cast<int32_t>(inputDesc[0].dims.d[0]);
    dims.spatial = static_cast<int32_t>(inputDesc[0].dims.d[1]);
    dims.heads = static_cast<int32_t>(inputDesc[0].dims.d[2]);
    dims.channels = static_cast<int32_t>(inputDesc[0].dims.d[3]);
    dims.levels = static_cast<int32_t>(inputDesc[1].dims.d[0]);
    dims.queries = static_cast<int32_t>(inputDesc[3].dims.d[1]);
    dims.points = static_cast<int32_t>(inputDesc[3].dims.d[4]);
    MsdaDType const dtype = inputDesc[0].type == DataType::kHALF ? MsdaDType::kFloat16 : MsdaDType::kFloat32;
    MsdaIndexType const itype = inputDesc[1].type == DataType::kINT64 ? MsdaIndexType::kInt64 : MsdaIndexType::kInt32;
    cudaError_t const err = msda_forward(dtype, itype, dims, inputs[0], inputs[1], inputs[2], inputs[3], inputs[4],
                                         outputs[0], stream);
    return err == cudaSuccess ? 0 : -1;
  }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    mFields.clear();
    mFields.add("num_levels", &mNumLevels, PluginFieldType::kINT32, 1);
    mFields.add("num_points", &mNumPoints, PluginFieldType::kINT32, 1);
    return mFields.collection();
  }

 private:
  // Equal, or unknown (-1) at build time.
  static bool same(int64_t a, int64_t b) { return a < 0 || b < 0 || a == b; }

  int32_t mNumLevels;
  int32_t mNumPoints;
  trt::FieldList mFields;
};

class MsdaPluginCreator final : public trt::PluginCreatorBase {
 public:
  MsdaPluginCreator() : trt::PluginCreatorBase(kIdentity) {
    mFieldNames.add("num_levels", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.add("num_points", nullptr, PluginFieldType::kINT32, 1);
  }

  IPluginV3* createPlugin(char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept override {
    try {
      int32_t numLevels = 0;  // 0: not given, not checked
      int32_t numPoints = 0;
      for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
        PluginField const& f = fc->fields[i];
        if (trt::fieldIs(f, "num_levels") && !trt::readInt(f, numLevels)) return nullptr;
        if (trt::fieldIs(f, "num_points") && !trt::readInt(f, numPoints)) return nullptr;
        // plugin_namespace / plugin_version and unknown fields are ignored.
      }
      return new MsdaPlugin(numLevels, numPoints);
    } catch (std::exception const&) {
      return nullptr;
    }
  }
};

// REGISTER_TENSORRT_PLUGIN registers the creator under the empty namespace; ONNX nodes and serialised
// engines look it up under "edgevis", which the second line covers (see common/plugin_utils.h).
REGISTER_TENSORRT_PLUGIN(MsdaPluginCreator);
EDGEVIS_REGISTER_IN_PLUGIN_NAMESPACE(MsdaPluginCreator);

}  // namespace msda_trt
}  // namespace edgevis
