#ifndef QUANTD_WORKER_ENGINE_RUNTIME_PREPACK_H_
#define QUANTD_WORKER_ENGINE_RUNTIME_PREPACK_H_

// Prepacking quantized weights for LibTorch's int8 kernels. Packs are made
// for the quantized engine current at prepack time, which is process-global:
// every prepack goes through here, with the engine set and held.

#include <ATen/core/ivalue.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace quantd::engine {

// `args` as quantized::conv2d_prepack (weight, bias, stride, padding,
// dilation, groups) or quantized::linear_prepack (weight, bias) take them.
absl::StatusOr<c10::IValue> PrepackConv2d(const std::string& kernel_engine, const std::vector<c10::IValue>& args);
absl::StatusOr<c10::IValue> PrepackLinear(const std::string& kernel_engine, const std::vector<c10::IValue>& args);

// Runs `fn` with the process-global quantized engine set to `kernel_engine`:
// for operators (quantized::add) whose arithmetic follows the global engine
// rather than a pack, and for loading artifacts (packs are re-made on load).
// Calls for the same engine run concurrently; another engine waits until
// they are done. May nest on one thread (same engine). `what` names it in
// errors.
absl::Status WithKernelEngine(const std::string& kernel_engine, const std::string& what,
                              const std::function<void()>& fn);

// A thread's first LibTorch parallel call sets LibTorch's thread count, which
// rebuilds QNNPACK's global thread pool under any kernel running on it.
// The engine's entry points call this first: its first call on a thread
// does that set-up under onednn's lease, which no QNNPACK kernel holds;
// later calls are a thread-local check.
void PrepareThreadForLibTorch();

// "onednn", "qnnpack", ... as compiled into this LibTorch.
std::vector<std::string> AvailableKernelEngineNames();

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_RUNTIME_PREPACK_H_
