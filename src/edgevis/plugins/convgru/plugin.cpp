// TensorRT plugin edgevis::ConvGRUCell (IPluginV3, TensorRT >= 10.1) for libedgevis_plugins.so.
//
// The fused ConvGRU state update after the gate convs (see kernel.h):
//   inputs : 0 zr_pre (B, 2C, H, W) FP32 or FP16   gate pre-activations [z, r]; only z is read
//            1 n_pre  (B, C, H, W)  same type as 0  candidate pre-activation conv_n([x, r*h])
//            2 h      (B, C, H, W)  FP32            hidden state (stays FP32 in FP16 engines)
//   outputs: 0 h_out  (B, C, H, W)  FP32            new hidden state
//            1 h_f16  (B, C, H, W)  FP16            only with emit_fp16=1: copy for the next FP16 layer
//   fields : emit_fp16 (int, 0/1). The ONNX node also carries plugin_namespace="edgevis", plugin_version="1".
// Formats: linear (NCHW) only. Thin by design: all the arithmetic lives in kernel.cu.
//
// Built only by src/edgevis/plugins/CMakeLists.txt (which defines EDGEVIS_TENSORRT_PLUGIN); the kernel
// and the torch-side extension never include TensorRT headers.
#if defined(EDGEVIS_TENSORRT_PLUGIN)

#include <NvInferRuntime.h>

#include <cstdint>
#include <exception>

#include "common/plugin_utils.h"
#include "convgru/kernel.h"

namespace edgevis {
namespace {

using namespace nvinfer1;

constexpr char const* kPluginName = "ConvGRUCell";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "edgevis";
constexpr char const* kEmitFp16 = "emit_fp16";
constexpr int32_t kNbInputs = 3;
constexpr trt::PluginIdentity kIdentity{kPluginName, kPluginVersion, kPluginNamespace};

class ConvGRUCellPlugin final : public trt::PluginV3Base<ConvGRUCellPlugin> {
 public:
  explicit ConvGRUCellPlugin(bool emitFp16)
      : trt::PluginV3Base<ConvGRUCellPlugin>(kIdentity), mEmitFp16(emitFp16 ? 1 : 0) {}

  // ---- IPluginV3OneBuild: shapes, types, formats -------------------------------------------
  int32_t getNbOutputs() const noexcept override { return mEmitFp16 ? 2 : 1; }

  int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override {
    if (nbInputs != kNbInputs || nbOutputs != getNbOutputs() || inputTypes[2] != DataType::kFLOAT) return -1;
    outputTypes[0] = DataType::kFLOAT;
    if (mEmitFp16) outputTypes[1] = DataType::kHALF;
    return 0;
  }

  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                          int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
                          IExprBuilder& /*exprBuilder*/) noexcept override {
    if (nbInputs != kNbInputs || nbOutputs != getNbOutputs() || inputs[2].nbDims != 4) return -1;
    for (int32_t i = 0; i < nbOutputs; ++i) outputs[i] = inputs[2];  // every output has h's shape
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    if (nbInputs != kNbInputs || nbOutputs != getNbOutputs() || pos < 0 || pos >= nbInputs + nbOutputs) return false;
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR) return false;
    switch (pos) {
      case 0: return d.type == DataType::kFLOAT || d.type == DataType::kHALF;  // zr_pre
      case 1: return d.type == inOut[0].desc.type;                            // n_pre: same as zr_pre
      case 2: return d.type == DataType::kFLOAT;                              // h: FP32 state
      case 3: return d.type == DataType::kFLOAT;                              // h_out
      default: return d.type == DataType::kHALF;                              // h_f16
    }
  }

  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/,
                          int32_t nbOutputs) noexcept override {
    if (nbInputs != kNbInputs || nbOutputs != getNbOutputs()) return -1;
    for (int32_t i = 0; i < nbInputs; ++i) {
      if (in[i].desc.dims.nbDims != 4) return -1;
    }
    return 0;
  }

  size_t getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
                          DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept override {
    return 0;
  }

  // ---- IPluginV3OneRuntime -----------------------------------------------------------------
  int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/,
                        int32_t nbOutputs) noexcept override {
    if (nbInputs != kNbInputs || nbOutputs != getNbOutputs()) return -1;
    Dims const& zr = in[0].dims;
    Dims const& n = in[1].dims;
    Dims const& h = in[2].dims;
    if (zr.nbDims != 4 || n.nbDims != 4 || h.nbDims != 4) return -1;
    for (int32_t i = 0; i < 4; ++i) {
      if (n.d[i] != h.d[i]) return -1;
      if (zr.d[i] != (i == 1 ? 2 * h.d[1] : h.d[i])) return -1;  // zr_pre is (B, 2C, H, W)
    }
    return 0;
  }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/, void const* const* inputs,
                  void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept override {
    Dims const& h = inputDesc[2].dims;
    int64_t const batch = h.d[0];
    int64_t const channels = h.d[1];
    int64_t const hw = static_cast<int64_t>(h.d[2]) * h.d[3];
    if (batch * channels * hw == 0) return 0;
    int const act = inputDesc[0].type == DataType::kHALF ? EDGEVIS_ACT_F16 : EDGEVIS_ACT_F32;
    int const rc = edgevis_convgru_update(inputs[0], inputs[1], act, static_cast<float const*>(inputs[2]),
                                          static_cast<float*>(outputs[0]), mEmitFp16 ? outputs[1] : nullptr, batch,
                                          channels, hw, stream);
    return rc == 0 ? 0 : -1;
  }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    mFields.clear();
    mFields.add(kEmitFp16, &mEmitFp16, PluginFieldType::kINT32, 1);
    return mFields.collection();
  }

 private:
  int32_t mEmitFp16{0};
  trt::FieldList mFields;
};

class ConvGRUCellCreator final : public trt::PluginCreatorBase {
 public:
  ConvGRUCellCreator() : trt::PluginCreatorBase(kIdentity) {
    mFieldNames.add(kEmitFp16, nullptr, PluginFieldType::kINT32, 1);
  }

  IPluginV3* createPlugin(char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept override {
    try {
      int32_t emit = 0;
      for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
        PluginField const& f = fc->fields[i];
        if (trt::fieldIs(f, kEmitFp16)) {
          if (!trt::readInt(f, emit) || (emit != 0 && emit != 1)) return nullptr;  // malformed attribute
        }
        // plugin_namespace / plugin_version and unknown fields are ignored
      }
      return new ConvGRUCellPlugin(emit != 0);
    } catch (std::exception const&) {
      return nullptr;
    }
  }
};

}  // namespace

// The macro pastes its argument into an identifier, so it takes the unqualified class name.
// REGISTER_TENSORRT_PLUGIN registers under namespace ""; the second line makes the creator resolvable
// under "edgevis" too, as ONNX nodes and engines ask (see common/plugin_utils.h).
REGISTER_TENSORRT_PLUGIN(ConvGRUCellCreator);
EDGEVIS_REGISTER_IN_PLUGIN_NAMESPACE(ConvGRUCellCreator);

}  // namespace edgevis

#endif  // EDGEVIS_TENSORRT_PLUGIN
