#include "worker/engine/data/batch_limits.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace quantd::engine {

namespace {

int64_t ImageBytes(const std::vector<int64_t>& sample_shape) {
  int64_t image_bytes = static_cast<int64_t>(sizeof(float));
  for (int64_t d : sample_shape) image_bytes *= d;
  return image_bytes;
}

}  // namespace

int64_t ImagesWithinBytes(const std::vector<int64_t>& sample_shape, int64_t max_bytes) {
  if (max_bytes <= 0) return INT64_MAX;
  const int64_t image_bytes = ImageBytes(sample_shape);
  return image_bytes <= 0 ? INT64_MAX : std::max<int64_t>(1, max_bytes / image_bytes);
}

absl::Status CheckBatchBytes(const std::vector<int64_t>& sample_shape, int64_t batch_size, int64_t max_bytes,
                             absl::string_view field) {
  if (max_bytes <= 0 || batch_size <= 0) return absl::OkStatus();
  const int64_t image_bytes = ImageBytes(sample_shape);
  if (batch_size > max_bytes / image_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", batch_size, " images of ",
                                                   absl::StrJoin(sample_shape, "x"), " float32 take ",
                                                   batch_size * image_bytes, " bytes, over the limit of ", max_bytes,
                                                   " per batch (quantd --max_batch_bytes); ",
                                                   max_bytes < image_bytes
                                                       ? absl::StrCat("not even one image (", image_bytes,
                                                                      " bytes) fits: raise --max_batch_bytes")
                                                       : absl::StrCat("at most ", max_bytes / image_bytes)));
  }
  return absl::OkStatus();
}

}  // namespace quantd::engine
