#include "worker/engine/data/batch_limits.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace quantd::engine {

absl::Status CheckBatchBytes(const std::vector<int64_t>& sample_shape, int64_t batch_size, int64_t max_bytes,
                             absl::string_view field) {
  if (max_bytes <= 0 || batch_size <= 0) return absl::OkStatus();
  int64_t image_bytes = static_cast<int64_t>(sizeof(float));
  for (int64_t d : sample_shape) image_bytes *= d;
  if (batch_size > max_bytes / image_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", batch_size, " images of ",
                                                   absl::StrJoin(sample_shape, "x"), " float32 take ",
                                                   batch_size * image_bytes, " bytes, over the limit of ", max_bytes,
                                                   " per batch (quantd --max_batch_bytes); at most ",
                                                   max_bytes / image_bytes));
  }
  return absl::OkStatus();
}

}  // namespace quantd::engine
