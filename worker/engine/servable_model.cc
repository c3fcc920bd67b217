#include "worker/engine/servable_model.h"

#include <torch/script.h>
#include <torch/version.h>

#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"
#include "worker/engine/runtime/prepack.h"

namespace quantd::engine {
namespace {

class TorchScriptServable final : public ServableModel {
 public:
  // `kernel_engine` empty: an FP32 model, run without holding any engine.
  TorchScriptServable(torch::jit::Module module, std::string kernel_engine, std::string name)
      : module_(std::move(module)),
        kernel_engine_(kernel_engine.empty() ? "fp32" : std::move(kernel_engine)),
        int8_(kernel_engine_ != "fp32"),
        name_(std::move(name)) {}

  absl::StatusOr<ServingOutput> Run(absl::Span<const float> input, const std::vector<int64_t>& shape) const override {
    return GuardEntryPoint(absl::StrCat("running ", name_), [&]() -> absl::StatusOr<ServingOutput> {
      int64_t count = 1;
      for (int64_t d : shape) count *= d;
      if (shape.size() != 4 || count != static_cast<int64_t>(input.size())) {
        return absl::InvalidArgumentError(absl::StrCat("input: shape [", absl::StrJoin(shape, ","), "] does not hold ",
                                                       input.size(), " values as [N, C, H, W]"));
      }
      // from_blob does not copy; forward does not write its input.
      at::Tensor batch = torch::from_blob(const_cast<float*>(input.data()), shape, torch::kFloat32);
      c10::IValue result;
      auto forward = [&]() {
        torch::NoGradGuard no_grad;
        result = module_.forward({batch});
      };
      if (int8_) {
        // quantized::add follows the process-global engine: hold ours.
        QUANTD_RETURN_IF_ERROR(WithKernelEngine(kernel_engine_, name_, forward));
      } else {
        forward();
      }
      if (result.isTuple()) result = result.toTupleRef().elements().at(0);
      if (!result.isTensor()) return absl::InternalError(absl::StrCat(name_, " returned no tensor"));
      at::Tensor out = result.toTensor();
      if (out.is_quantized()) out = out.dequantize();
      out = out.to(torch::kFloat32).contiguous();
      ServingOutput output;
      output.shape = out.sizes().vec();
      output.values.assign(out.data_ptr<float>(), out.data_ptr<float>() + out.numel());
      return output;
    });
  }

  const std::string& kernel_engine() const override { return kernel_engine_; }

 private:
  // TorchScript modules may run forward from several threads at once.
  mutable torch::jit::Module module_;
  const std::string kernel_engine_;
  const bool int8_;
  const std::string name_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ServableModel>> ServableModel::LoadInt8Artifact(const std::string& bytes,
                                                                               const std::string& kernel_engine,
                                                                               const std::string& name) {
  return GuardEntryPoint(absl::StrCat("loading ", name), [&]() -> absl::StatusOr<std::unique_ptr<ServableModel>> {
    torch::jit::Module module;
    std::istringstream stream(bytes);
    // Packs are re-made on load for the engine set now.
    QUANTD_RETURN_IF_ERROR(WithKernelEngine(kernel_engine, absl::StrCat("loading ", name),
                                            [&]() { module = torch::jit::load(stream); }));
    module.eval();
    return std::unique_ptr<ServableModel>(new TorchScriptServable(std::move(module), kernel_engine, name));
  });
}

namespace {

// torch::jit::load from `source` (a path or a stream). A model whose code does
// not compile here throws an ErrorReport whose what() can itself throw inside
// noexcept (see import_torchscript.cc): it is not called.
template <typename Source>
absl::StatusOr<std::unique_ptr<ServableModel>> LoadFp32From(Source&& source, const std::string& name) {
  return GuardEntryPoint(absl::StrCat("loading model ", name), [&]() -> absl::StatusOr<std::unique_ptr<ServableModel>> {
    torch::jit::Module module;
    try {
      module = torch::jit::load(source);
    } catch (const torch::jit::ErrorReport&) {
      return absl::FailedPreconditionError(absl::StrCat("loading model ", name, ": its code does not compile in this LibTorch (",
                                                        TORCH_VERSION, ")"));
    }
    module.eval();
    return std::unique_ptr<ServableModel>(new TorchScriptServable(std::move(module), "", name));
  });
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServableModel>> ServableModel::LoadFp32(const std::string& path) {
  return LoadFp32From(path, path);
}

absl::StatusOr<std::unique_ptr<ServableModel>> ServableModel::LoadFp32Bytes(const std::string& bytes,
                                                                            const std::string& name) {
  std::istringstream stream(bytes);
  return LoadFp32From(stream, name);
}

}  // namespace quantd::engine
