#ifndef QUANTD_WORKER_ENGINE_RUNTIME_FP32_BLOCKED_EXECUTOR_H_
#define QUANTD_WORKER_ENGINE_RUNTIME_FP32_BLOCKED_EXECUTOR_H_

// Calibration's FP32 forward with activations kept in oneDNN's blocked layout
// (nChw16c on AVX-512 CPUs, nChw8c on AVX2 ones) from one convolution to the next.
//
// LibTorch runs an FP32 conv2d on oneDNN too, but converts every input to the
// blocked layout and every output back to NCHW; on ResNet8 those reorders are
// a quarter of the forward pass. Here the same oneDNN convolution kernels
// (same library, same primitive descriptors as LibTorch's) run back to back,
// and adds, ReLUs and zero pads work on the blocked tensors element by element.
// Every value is therefore bit-identical to Fp32Executor's; only the order of
// elements in a tapped tensor differs, which observers (extrema, histograms)
// do not depend on. Other ops get NCHW tensors and run through LibTorch.

#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "worker/engine/ir/graph.h"
#include "worker/engine/runtime/fp32_executor.h"

namespace quantd::engine {

// How a tapped tensor holds its value's elements.
enum class TapLayout {
  kPlain,      // the value itself
  kBlocked,  // a 4-D value [N, C, H, W] as [N, C/B, H, W, B] (oneDNN's nChw16c or nChw8c; B = size(4))
};
using LayoutTap = std::function<void(int value, const at::Tensor& tensor, TapLayout layout)>;

class Fp32BlockedExecutor {
 public:
  // Null when this build has no oneDNN path (LibTorch not on the shared
  // oneDNN), when the graph writes into its values in place, or when it has
  // no convolution to speed up: the caller uses Fp32Executor.
  static absl::StatusOr<std::unique_ptr<Fp32BlockedExecutor>> Create(const Graph* graph);
  virtual ~Fp32BlockedExecutor() = default;

  // Whether Run takes this batch: LibTorch itself runs every convolution of
  // a float NCHW batch of at least 16 images on oneDNN, so the kernels match.
  virtual bool Accepts(const at::Tensor& input) const = 0;

  // Runs forward, handing every produced tensor to `tap` with its layout.
  virtual absl::Status Run(const at::Tensor& input, const LayoutTap& tap) const = 0;
};

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_RUNTIME_FP32_BLOCKED_EXECUTOR_H_
