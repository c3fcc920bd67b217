#ifndef QUANTD_WORKER_ENGINE_DATA_BATCH_LIMITS_H_
#define QUANTD_WORKER_ENGINE_DATA_BATCH_LIMITS_H_

// Batch arithmetic shared by calibration, evaluation and the worker's
// evaluations, free of LibTorch.

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace quantd::engine {

// INVALID_ARGUMENT naming `field` when `batch_size` images of `sample_shape`,
// as float32, would take more than `max_bytes` (0 = no limit): a batch's
// memory is bounded by bytes, not by a count that means little for 224x224.
// The shape's product must fit (datasets bound it against their file size).
absl::Status CheckBatchBytes(const std::vector<int64_t>& sample_shape, int64_t batch_size, int64_t max_bytes,
                             absl::string_view field);

// How many images of `sample_shape`, as float32, fit in `max_bytes`: at
// least 1; INT64_MAX when `max_bytes` is 0 (no limit).
int64_t ImagesWithinBytes(const std::vector<int64_t>& sample_shape, int64_t max_bytes);

// Batches of `batch_size` (> 0) covering `size` samples; not
// (size + batch_size - 1) / batch_size, which overflows for a huge batch_size.
inline int64_t BatchCount(int64_t size, int64_t batch_size) {
  return size / batch_size + (size % batch_size != 0 ? 1 : 0);
}

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_DATA_BATCH_LIMITS_H_
