// Shared IPluginV3 boilerplate for the edgevis TensorRT plugins (plugins/<op>/plugin.cpp).
//
// Every edgevis plugin is one object that implements all three V3 capabilities (core, build, runtime),
// is cloned by copy, needs no per-context resources, and describes its attributes as a flat list of
// scalar PluginFields. This header holds exactly that common part:
//   PluginIdentity      name / version / namespace of a plugin and its creator
//   PluginV3Base<D>     IPluginV3 + IPluginV3OneCore + capability dispatch + clone + attachToContext
//   PluginCreatorBase   IPluginCreatorV3One name/version/namespace + getFieldNames
//   FieldList           a std::vector<PluginField> kept in sync with its PluginFieldCollection
//   readInt/readFloat   attribute parsing that tolerates the widths the ONNX parser / engines use
//   EDGEVIS_REGISTER_IN_PLUGIN_NAMESPACE(Creator)
//                       makes sure the creator is found under its own plugin namespace as well
// Needs TensorRT >= 10.1 headers (NvInferRuntime.h); only compiled into libedgevis_plugins.so.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <vector>

namespace edgevis {
namespace trt {

// Name, version and namespace strings (string literals: static storage) shared by a plugin and its creator.
struct PluginIdentity {
  char const* name;
  char const* version;
  char const* nspace;
};

// PluginFields plus the PluginFieldCollection that points at them. collection() re-points the
// collection on every call, so a copied FieldList (clone()) never refers to another object's vector.
class FieldList {
 public:
  void clear() noexcept { mFields.clear(); }

  void add(char const* name, void const* data, nvinfer1::PluginFieldType type, int32_t length = 1) {
    mFields.emplace_back(name, data, type, length);
  }

  nvinfer1::PluginFieldCollection const* collection() noexcept {
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
    return &mCollection;
  }

 private:
  std::vector<nvinfer1::PluginField> mFields;
  nvinfer1::PluginFieldCollection mCollection{};
};

inline bool fieldIs(nvinfer1::PluginField const& f, char const* name) noexcept {
  return f.name != nullptr && std::strcmp(f.name, name) == 0;
}

// An integer attribute. The ONNX parser passes INT attributes as kINT32; INT64/INT16/INT8 are
// accepted too. False when the field is empty or not an integer.
inline bool readInt(nvinfer1::PluginField const& f, int32_t& out) noexcept {
  using nvinfer1::PluginFieldType;
  if (f.data == nullptr || f.length < 1) return false;
  switch (f.type) {
    case PluginFieldType::kINT32: out = *static_cast<int32_t const*>(f.data); return true;
    case PluginFieldType::kINT64: out = static_cast<int32_t>(*static_cast<int64_t const*>(f.data)); return true;
    case PluginFieldType::kINT16: out = *static_cast<int16_t const*>(f.data); return true;
    case PluginFieldType::kINT8: out = *static_cast<int8_t const*>(f.data); return true;
    default: return false;
  }
}

// A float attribute: kFLOAT32 (what the ONNX parser passes) or kFLOAT64.
inline bool readFloat(nvinfer1::PluginField const& f, float& out) noexcept {
  using nvinfer1::PluginFieldType;
  if (f.data == nullptr || f.length < 1) return false;
  switch (f.type) {
    case PluginFieldType::kFLOAT32: out = *static_cast<float const*>(f.data); return true;
    case PluginFieldType::kFLOAT64: out = static_cast<float>(*static_cast<double const*>(f.data)); return true;
    default: return false;
  }
}

// The IPluginV3 side every edgevis plugin shares. Derived implements the build and runtime methods
// (getNbOutputs, getOutputDataTypes, getOutputShapes, supportsFormatCombination, configurePlugin,
// onShapeChange, enqueue, getFieldsToSerialize) and must be copy-constructible: clone() and
// attachToContext() copy it.
template <typename Derived>
class PluginV3Base : public nvinfer1::IPluginV3,
                     public nvinfer1::IPluginV3OneCore,
                     public nvinfer1::IPluginV3OneBuild,
                     public nvinfer1::IPluginV3OneRuntime {
 public:
  explicit PluginV3Base(PluginIdentity const& id) noexcept : mId(id) {}
  PluginV3Base(PluginV3Base const&) = default;
  PluginV3Base& operator=(PluginV3Base const&) = delete;
  ~PluginV3Base() override = default;

  // ---- IPluginV3 ----
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override {
    switch (type) {
      case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
      case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
      case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }

  nvinfer1::IPluginV3* clone() noexcept override {
    try {
      return new Derived(static_cast<Derived const&>(*this));
    } catch (std::exception const&) {
      return nullptr;
    }
  }

  // ---- IPluginV3OneCore ----
  nvinfer1::AsciiChar const* getPluginName() const noexcept override { return mId.name; }
  nvinfer1::AsciiChar const* getPluginVersion() const noexcept override { return mId.version; }
  nvinfer1::AsciiChar const* getPluginNamespace() const noexcept override { return mId.nspace; }

  // ---- IPluginV3OneRuntime: no per-context resources, so a context gets a plain copy ----
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept override {
    return clone();
  }

 private:
  PluginIdentity mId;
};

// The IPluginCreatorV3One side every edgevis creator shares; Derived fills mFieldNames in its
// constructor and implements createPlugin().
class PluginCreatorBase : public nvinfer1::IPluginCreatorV3One {
 public:
  explicit PluginCreatorBase(PluginIdentity const& id) noexcept : mId(id) {}

  nvinfer1::AsciiChar const* getPluginName() const noexcept override { return mId.name; }
  nvinfer1::AsciiChar const* getPluginVersion() const noexcept override { return mId.version; }
  nvinfer1::AsciiChar const* getPluginNamespace() const noexcept override { return mId.nspace; }
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return mFieldNames.collection(); }

 protected:
  FieldList mFieldNames;

 private:
  PluginIdentity mId;
};

// REGISTER_TENSORRT_PLUGIN registers a creator with namespace "". ONNX nodes (plugin_namespace
// attribute) and serialised engines (IPluginV3OneCore::getPluginNamespace()) ask for "edgevis". This
// registrar, placed after REGISTER_TENSORRT_PLUGIN, registers a second instance under the creator's
// own namespace unless the registry already resolves it there, so the lookup works whichever key
// the registry uses and no duplicate registration is attempted.
template <typename Creator>
class NamespaceRegistrar {
 public:
  NamespaceRegistrar() {
    nvinfer1::IPluginRegistry* registry = getPluginRegistry();
    if (registry == nullptr) return;
    char const* ns = mCreator.getPluginNamespace();
    if (ns == nullptr || ns[0] == '\0') return;
    if (registry->getCreator(mCreator.getPluginName(), mCreator.getPluginVersion(), ns) != nullptr) return;
    registry->registerCreator(mCreator, ns);
  }

 private:
  Creator mCreator{};
};

}  // namespace trt
}  // namespace edgevis

#define EDGEVIS_REGISTER_IN_PLUGIN_NAMESPACE(Creator) \
  static ::edgevis::trt::NamespaceRegistrar<Creator> edgevisNamespaceRegistrar##Creator {}
