#ifndef QUANTD_WORKER_ENGINE_SERVABLE_MODEL_H_
#define QUANTD_WORKER_ENGINE_SERVABLE_MODEL_H_

// A model loaded to serve requests: an int8 artifact on a kernel engine, or
// an FP32 TorchScript model (its source, for side-by-side comparison).
// Batches go in as float32 NCHW, already preprocessed; outputs come back as
// float32. Thread-safe: requests may run concurrently. No LibTorch types here.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace quantd::engine {

struct ServingOutput {
  std::vector<int64_t> shape;  // [N, ...]
  std::vector<float> values;   // row-major
};

class ServableModel {
 public:
  virtual ~ServableModel() = default;

  // An int8 artifact's bytes, run on `kernel_engine` (its packs are made for
  // it on load; see KernelEngineForArtifact for choosing one). `name` is for
  // messages.
  static absl::StatusOr<std::unique_ptr<ServableModel>> LoadInt8Artifact(const std::string& bytes,
                                                                         const std::string& kernel_engine,
                                                                         const std::string& name);
  // An FP32 TorchScript model.
  static absl::StatusOr<std::unique_ptr<ServableModel>> LoadFp32(const std::string& path);
  // The same from the file's `bytes` (read and checked by the caller);
  // `name` is for messages.
  static absl::StatusOr<std::unique_ptr<ServableModel>> LoadFp32Bytes(const std::string& bytes,
                                                                      const std::string& name);

  // Runs forward on `shape` ([N, C, H, W]) float32 values. The model's first
  // output (a tuple's first element) comes back as float32.
  virtual absl::StatusOr<ServingOutput> Run(absl::Span<const float> input, const std::vector<int64_t>& shape) const = 0;

  // "onednn", "qnnpack", ... or "fp32".
  virtual const std::string& kernel_engine() const = 0;
};

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_SERVABLE_MODEL_H_
