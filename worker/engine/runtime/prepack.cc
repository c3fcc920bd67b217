#include "worker/engine/runtime/prepack.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <condition_variable>
#include <mutex>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"

namespace quantd::engine {
namespace {

// The process-global quantized engine, shared: any number of threads may
// run with the engine that is set; another engine waits until they are done,
// and once one waits, newcomers for the set engine wait behind it (no
// starvation). A thread already inside takes it again without waiting.
class EngineLease {
 public:
  static EngineLease& Get() {
    static EngineLease* lease = new EngineLease();
    return *lease;
  }

  void Acquire(at::QEngine engine) {
    if (depth_ > 0) {
      ++depth_;
      return;
    }
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t ticket = next_ticket_++;
    changed_.wait(lock, [&] {
      if (holders_ == 0) return ticket == serving_ticket_;
      return engine == current_ && ticket == serving_ticket_;
    });
    if (holders_ == 0) {  // set even if unchanged: tests may set it directly
      at::globalContext().setQEngine(engine);
      current_ = engine;
    }
    ++holders_;
    ++serving_ticket_;
    changed_.notify_all();
    depth_ = 1;
  }

  void Release() {
    if (--depth_ > 0) return;
    std::lock_guard<std::mutex> lock(mu_);
    --holders_;
    changed_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable changed_;
  // Tickets are served in order: the next one in line may enter when the
  // engine it needs is set (or nobody holds it).
  uint64_t next_ticket_ = 0;
  uint64_t serving_ticket_ = 0;
  int holders_ = 0;
  at::QEngine current_ = at::QEngine::NoQEngine;
  static thread_local int depth_;
};

thread_local int EngineLease::depth_ = 0;

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
  EngineLease::Get().Acquire(engine);
  // Released however this ends: a lease kept by an exception (one thrown
  // while TorchTry builds its message, under the OOM that caused the first)
  // would block the other engine for good.
  absl::Cleanup release = [] { EngineLease::Get().Release(); };
  return TorchTry(absl::StrCat(what, " on ", kernel_engine), [&]() {
    fn();
    return absl::OkStatus();
  });
}

void PrepareThreadForLibTorch() {
  thread_local bool prepared = false;
  if (prepared) return;
  prepared = true;
  auto init = [] { at::internal::lazy_init_num_threads(); };
  if (!WithKernelEngine("onednn", "preparing a thread for LibTorch", init).ok()) init();
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
