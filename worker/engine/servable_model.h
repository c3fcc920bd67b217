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

// quantd's default for LoadInt8Artifact's `batch_size_copies` (quantd's
// --batch_size_copies): every batch size up to its default --max_batch_size.
inline constexpr int kDefaultBatchSizeCopies = 64;

struct ServingOutput {
  std::vector<int64_t> shape;  // [N, ...]
  std::vector<float> values;   // row-major
};

class ServableModel {
 public:
  virtual ~ServableModel() = default;

  // An int8 artifact's bytes, run on `kernel_engine` (its packs are made for
  // it on load; see KernelEngineForArtifact for choosing one). `name` is for
  // messages. `batch_size_copies`: on onednn, how many batch sizes may get a
  // copy of the model of their own (see servable_model.cc for why); each is
  // built on a background thread the first time a batch of that size runs,
  // and costs about the artifact's bytes.
  static absl::StatusOr<std::unique_ptr<ServableModel>> LoadInt8Artifact(const std::string& bytes,
                                                                         const std::string& kernel_engine,
                                                                         const std::string& name,
                                                                         int batch_size_copies = 0);
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

  // Batch sizes that have a copy of their own now, and at most (0 when this
  // model keeps none: FP32, qnnpack).
  virtual int batch_size_copies() const = 0;
  virtual int batch_size_copy_limit() const = 0;
  // Returns once the copies asked for so far are built (or failed).
  virtual void WaitForBatchSizeCopies() const = 0;
};

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_SERVABLE_MODEL_H_
