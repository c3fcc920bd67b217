#include "worker/engine/runtime/prepack.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"

namespace quantd::engine {
namespace {

std::mutex& EngineMutex() {
  static std::mutex mu;
  return mu;
}

absl::StatusOr<at::QEngine> FindEngine(const std::string& kernel_engine) {
  for (at::QEngine e : at::globalContext().supportedQEngines()) {
    if (absl::AsciiStrToLower(c10::toString(e)) == kernel_engine) return e;
  }
  return absl::InvalidArgumentError(absl::StrCat("kernel engine '", kernel_engine,
                                                 "' is not compiled into this LibTorch (available: ",
                                                 absl::StrJoin(AvailableKernelEngineNames(), ", "), ")"));
}

absl::StatusOr<c10::IValue> Prepack(const std::string& kernel_engine, const char* op,
                                    const std::vector<c10::IValue>& args) {
  c10::IValue packed;
  QUANTD_RETURN_IF_ERROR(WithKernelEngine(kernel_engine, op, [&]() {
    torch::jit::Stack stack(args.begin(), args.end());
    c10::Dispatcher::singleton().findSchemaOrThrow(op, "").callBoxed(stack);
    packed = stack.at(0);
  }));
  return packed;
}

}  // namespace

absl::Status WithKernelEngine(const std::string& kernel_engine, const std::string& what,
                              const std::function<void()>& fn) {
  QUANTD_ASSIGN_OR_RETURN(at::QEngine engine, FindEngine(kernel_engine));
  return TorchTry(absl::StrCat(what, " on ", kernel_engine), [&]() {
    std::lock_guard<std::mutex> lock(EngineMutex());
    at::globalContext().setQEngine(engine);
    fn();
    return absl::OkStatus();
  });
}

absl::StatusOr<c10::IValue> PrepackConv2d(const std::string& kernel_engine, const std::vector<c10::IValue>& args) {
  return Prepack(kernel_engine, "quantized::conv2d_prepack", args);
}

absl::StatusOr<c10::IValue> PrepackLinear(const std::string& kernel_engine, const std::vector<c10::IValue>& args) {
  return Prepack(kernel_engine, "quantized::linear_prepack", args);
}

std::vector<std::string> AvailableKernelEngineNames() {
  std::vector<std::string> names;
  for (at::QEngine e : at::globalContext().supportedQEngines()) {
    if (e != at::QEngine::NoQEngine) names.push_back(absl::AsciiStrToLower(c10::toString(e)));
  }
  return names;
}

}  // namespace quantd::engine
