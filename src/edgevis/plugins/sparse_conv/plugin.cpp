// TensorRT IPluginV3 for edgevis::TripleSparseConv (TensorRT >= 10.1). Thin: shapes, formats, fields;
// the work is in kernel.cu (tsc_kernel.h). Caches are explicit I/O:
//   inputs  0 x (N,Cin,H,W)  1 x0 (N,Cin,H,W)  2 y0 (N,Cout,Ho,Wo)  3 weight (Cout,Cin,k,k)  4 bias (Cout)
//   outputs 0 y (N,Cout,Ho,Wo)  1 x0' (N,Cin,H,W)  2 y0' (N,Cout,Ho,Wo)  3 decision (N,ceil(Ho/b),ceil(Wo/b)) int32
// Float tensors are all FP32 or all FP16 (FP16 runs on tensor cores); formats are linear (NCHW).
// Fields: stride, padding, block, force_dense (int), tau_t, tau_s, dense_above (float). The ONNX
// parser finds the creator by op_type / plugin_version / plugin_namespace and passes the node's
// attributes as fields. Capability dispatch, clone and attachToContext: common/plugin_utils.h.
#include <cstdint>
#include <exception>

#include <NvInfer.h>

#include "common/plugin_utils.h"
#include "tsc_kernel.h"

namespace edgevis {
namespace {

using namespace nvinfer1;
constexpr char const* kName = "TripleSparseConv";
constexpr char const* kVersion = "1";
constexpr char const* kNamespace = "edgevis";
constexpr trt::PluginIdentity kIdentity{kName, kVersion, kNamespace};
constexpr int32_t kNbIn = 5, kNbOut = 4;

struct Attrs {
    int32_t stride = 1, padding = 1, block = 8, forceDense = 0;
    float tauT = 0.05f, tauS = 0.0f, denseAbove = 0.75f;
};

class TripleSparseConvPlugin final : public trt::PluginV3Base<TripleSparseConvPlugin> {
public:
    explicit TripleSparseConvPlugin(Attrs const& a) : trt::PluginV3Base<TripleSparseConvPlugin>(kIdentity), mAttrs(a) {}

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return kNbOut; }

    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*,
                            int32_t nbOutputs) noexcept override {
        if (nbInputs != kNbIn || nbOutputs != kNbOut) return -1;
        int32_t k = static_cast<int32_t>(in[3].desc.dims.d[2]);
        return k == 1 || k == 3 ? 0 : -1;
    }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                               int32_t nbInputs) const noexcept override {
        if (nbOutputs != kNbOut || nbInputs != kNbIn) return -1;
        outputTypes[0] = inputTypes[2];
        outputTypes[1] = inputTypes[0];
        outputTypes[2] = inputTypes[2];
        outputTypes[3] = DataType::kINT32;
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* outputs,
                            int32_t nbOutputs, IExprBuilder& eb) noexcept override {
        if (nbInputs != kNbIn || nbOutputs != kNbOut || inputs[0].nbDims != 4 || inputs[2].nbDims != 4) return -1;
        outputs[0] = inputs[2];
        outputs[1] = inputs[0];
        outputs[2] = inputs[2];
        IDimensionExpr const* b = eb.constant(mAttrs.block);
        outputs[3].nbDims = 3;
        outputs[3].d[0] = inputs[0].d[0];
        outputs[3].d[1] = eb.operation(DimensionOperation::kCEIL_DIV, *inputs[2].d[2], *b);
        outputs[3].d[2] = eb.operation(DimensionOperation::kCEIL_DIV, *inputs[2].d[3], *b);
        return 0;
    }

    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override {
        if (nbInputs != kNbIn || nbOutputs != kNbOut || pos < 0 || pos >= kNbIn + kNbOut) return false;
        PluginTensorDesc const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR) return false;
        if (pos == kNbIn + 3) return d.type == DataType::kINT32;  // decision
        if (pos == 0) return d.type == DataType::kFLOAT || d.type == DataType::kHALF;
        return d.type == inOut[0].desc.type;
    }

    size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t, DynamicPluginTensorDesc const*,
                            int32_t) const noexcept override {
        return tsc::workspaceSize(params(inputs[0].max, inputs[3].max, DataType::kFLOAT));
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*,
                          int32_t nbOutputs) noexcept override {
        if (nbInputs != kNbIn || nbOutputs != kNbOut) return -1;
        return tsc::validate(params(in[0].dims, in[3].dims, in[0].type)) == 0 ? 0 : -1;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
                    void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
        tsc::Params p = params(inputDesc[0].dims, inputDesc[3].dims, inputDesc[0].type);
        cudaError_t err = tsc::enqueue(p, inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], outputs[0],
                                       outputs[1], outputs[2], static_cast<int32_t*>(outputs[3]), workspace, stream);
        return err == cudaSuccess ? 0 : -1;
    }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override {
        mFields.clear();
        mFields.add("stride", &mAttrs.stride, PluginFieldType::kINT32, 1);
        mFields.add("padding", &mAttrs.padding, PluginFieldType::kINT32, 1);
        mFields.add("block", &mAttrs.block, PluginFieldType::kINT32, 1);
        mFields.add("force_dense", &mAttrs.forceDense, PluginFieldType::kINT32, 1);
        mFields.add("tau_t", &mAttrs.tauT, PluginFieldType::kFLOAT32, 1);
        mFields.add("tau_s", &mAttrs.tauS, PluginFieldType::kFLOAT32, 1);
        mFields.add("dense_above", &mAttrs.denseAbove, PluginFieldType::kFLOAT32, 1);
        return mFields.collection();
    }

private:
    tsc::Params params(Dims const& x, Dims const& w, DataType type) const {
        tsc::Params p;
        p.n = static_cast<int32_t>(x.d[0]);
        p.cin = static_cast<int32_t>(x.d[1]);
        p.h = static_cast<int32_t>(x.d[2]);
        p.w = static_cast<int32_t>(x.d[3]);
        p.cout = static_cast<int32_t>(w.d[0]);
        p.k = static_cast<int32_t>(w.d[2]);
        p.stride = mAttrs.stride;
        p.padding = mAttrs.padding;
        p.block = mAttrs.block;
        p.tau_t = mAttrs.tauT;
        p.tau_s = mAttrs.tauS;
        p.force_dense = mAttrs.forceDense;
        p.dense_above = mAttrs.denseAbove;
        p.dtype = type == DataType::kHALF ? tsc::DType::kFloat16 : tsc::DType::kFloat32;
        return p;
    }

    Attrs mAttrs;
    trt::FieldList mFields;
};

// IPluginCreatorV3One: name/version/namespace and getFieldNames() come from trt::PluginCreatorBase.
class TripleSparseConvCreator final : public trt::PluginCreatorBase {
public:
    TripleSparseConvCreator() : trt::PluginCreatorBase(kIdentity) {
        mFieldNames.add("stride", nullptr, PluginFieldType::kINT32, 1);
        mFieldNames.add("padding", nullptr, PluginFieldType::kINT32, 1);
        mFieldNames.add("block", nullptr, PluginFieldType::kINT32, 1);
        mFieldNames.add("force_dense", nullptr, PluginFieldType::kINT32, 1);
        mFieldNames.add("tau_t", nullptr, PluginFieldType::kFLOAT32, 1);
        mFieldNames.add("tau_s", nullptr, PluginFieldType::kFLOAT32, 1);
        mFieldNames.add("dense_above", nullptr, PluginFieldType::kFLOAT32, 1);
    }

    IPluginV3* createPlugin(AsciiChar const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept override {
        try {
            Attrs a;
            for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
                PluginField const& f = fc->fields[i];
                if (f.data == nullptr) continue;  // an attribute without a value keeps its default
                bool ok = true;
                if (trt::fieldIs(f, "stride")) ok = trt::readInt(f, a.stride);
                else if (trt::fieldIs(f, "padding")) ok = trt::readInt(f, a.padding);
                else if (trt::fieldIs(f, "block")) ok = trt::readInt(f, a.block);
                else if (trt::fieldIs(f, "force_dense")) ok = trt::readInt(f, a.forceDense);
                else if (trt::fieldIs(f, "tau_t")) ok = trt::readFloat(f, a.tauT);
                else if (trt::fieldIs(f, "tau_s")) ok = trt::readFloat(f, a.tauS);
                else if (trt::fieldIs(f, "dense_above")) ok = trt::readFloat(f, a.denseAbove);
                if (!ok) return nullptr;  // a field of the wrong type
            }
            tsc::Params probe;  // validate the attributes (shapes come later)
            probe.k = 3;
            probe.h = probe.w = 3;
            probe.stride = a.stride;
            probe.padding = a.padding;
            probe.block = a.block;
            probe.tau_t = a.tauT;
            probe.tau_s = a.tauS;
            if (tsc::validate(probe) != 0) return nullptr;
            return new TripleSparseConvPlugin(a);
        } catch (std::exception const&) {
            return nullptr;
        }
    }
};

}  // namespace
}  // namespace edgevis

// REGISTER_TENSORRT_PLUGIN registers under namespace ""; the second line makes the creator resolvable
// under "edgevis" too, as ONNX nodes and engines ask (see common/plugin_utils.h).
namespace edgevis {
REGISTER_TENSORRT_PLUGIN(TripleSparseConvCreator);
EDGEVIS_REGISTER_IN_PLUGIN_NAMESPACE(TripleSparseConvCreator);
}  // namespace edgevis
