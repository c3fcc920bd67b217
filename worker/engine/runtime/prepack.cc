#include "worker/engine/runtime/prepack.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/base/torch_status.h"

namespace quantd::engine {
namespace {

std::mutex& EngineMutex() {
  static std::mutex mu;
  return mu;
}

absl::StatusOr<c10::IValue> Prepack(const std::string& kernel_engine, const char* op,
                                    const std::vector<c10::IValue>& args) {
  at::QEngine engine = at::QEngine::NoQEngine;
  for (at::QEngine e : at::globalContext().supportedQEngines()) {
    if (absl::AsciiStrToLower(c10::toString(e)) == kernel_engine) engine = e;
  }
  if (engine == at::QEngine::NoQEngine) {
    return absl::InvalidArgumentError(absl::StrCat("kernel engine '", kernel_engine,
                                                   "' is not compiled into this LibTorch (available: ",
                                                   absl::StrJoin(AvailableKernelEngineNames(), ", "), ")"));
  }
  c10::IValue packed;
  absl::Status status = TorchTry(absl::StrCat(op, " on ", kernel_engine), [&]() {
    std::lock_guard<std::mutex> lock(EngineMutex());
    at::globalContext().setQEngine(engine);
    torch::jit::Stack stack(args.begin(), args.end());
    c10::Dispatcher::singleton().findSchemaOrThrow(op, "").callBoxed(stack);
    packed = stack.at(0);
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return packed;
}

}  // namespace

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
