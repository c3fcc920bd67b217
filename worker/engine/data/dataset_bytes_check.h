#ifndef QUANTD_WORKER_ENGINE_DATA_DATASET_BYTES_CHECK_H_
#define QUANTD_WORKER_ENGINE_DATA_DATASET_BYTES_CHECK_H_

// What a dataset file's bytes say about its format, checked as they stream in
// (an upload), so a truncated or mislabelled file is refused before it is
// stored rather than when a job first opens it. Free of LibTorch.

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "worker/engine/data/dataset_spec.h"

namespace quantd::engine {

// One CIFAR-10 binary record: a label byte (0-9), then 3x32x32 pixels.
inline constexpr int64_t kCifar10RecordBytes = 1 + 3 * 32 * 32;
inline constexpr int kCifar10Classes = 10;
// What every .npy file starts with.
inline constexpr absl::string_view kNpyMagic("\x93NUMPY", 6);

// INVALID_ARGUMENT unless `size_bytes` is a whole number of CIFAR-10 records;
// `what` names the file in the message.
absl::Status CheckCifar10Size(int64_t size_bytes, absl::string_view what);

class DatasetBytesCheck {
 public:
  explicit DatasetBytesCheck(DatasetFormat format) : format_(format) {}

  // The file's next bytes. CIFAR-10: every record's label must be 0-9 (the
  // binary release's); NPY: the file must start with NumPy's magic.
  absl::Status Add(absl::string_view bytes);
  // The whole file has arrived: CIFAR-10 is whole records, NPY has its magic.
  absl::Status Finish() const;

 private:
  DatasetFormat format_;
  int64_t size_ = 0;
  std::string head_;  // NPY: the first bytes, up to the magic's length
};

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_DATA_DATASET_BYTES_CHECK_H_
