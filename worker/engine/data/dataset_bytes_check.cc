#include "worker/engine/data/dataset_bytes_check.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace quantd::engine {

absl::Status CheckCifar10Size(int64_t size_bytes, absl::string_view what) {
  if (size_bytes == 0) return absl::InvalidArgumentError(absl::StrCat(what, " is empty: it holds no CIFAR-10 record"));
  if (size_bytes % kCifar10RecordBytes == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, " is truncated or not CIFAR-10 binary: ", size_bytes,
                                                 " bytes is not a multiple of ", kCifar10RecordBytes,
                                                 " (one record: a label byte and 3x32x32 pixels)"));
}

absl::Status DatasetBytesCheck::Add(absl::string_view bytes) {
  const int64_t start = size_;
  size_ += static_cast<int64_t>(bytes.size());
  if (format_ == DatasetFormat::kNpy) {
    if (head_.size() < kNpyMagic.size()) {
      const size_t take = std::min(kNpyMagic.size() - head_.size(), bytes.size());
      head_.append(bytes.data(), take);
      if (!absl::StartsWith(kNpyMagic, head_)) {
        return absl::InvalidArgumentError("not a .npy file: it does not start with NumPy's magic \\x93NUMPY");
      }
    }
    return absl::OkStatus();
  }
  // The first record that starts in `bytes`, and each one after it.
  const int64_t into_record = start % kCifar10RecordBytes;
  for (int64_t at = into_record == 0 ? 0 : kCifar10RecordBytes - into_record;
       at < static_cast<int64_t>(bytes.size()); at += kCifar10RecordBytes) {
    const int label = static_cast<unsigned char>(bytes[static_cast<size_t>(at)]);
    if (label >= kCifar10Classes) {
      return absl::InvalidArgumentError(absl::StrCat("not CIFAR-10 binary: record ", (start + at) / kCifar10RecordBytes,
                                                     " has label ", label, " (CIFAR-10's are 0-9)"));
    }
  }
  return absl::OkStatus();
}

absl::Status DatasetBytesCheck::Finish() const {
  if (format_ == DatasetFormat::kNpy) {
    if (head_.size() < kNpyMagic.size()) {
      return absl::InvalidArgumentError(absl::StrCat("not a .npy file: ", size_, " bytes, shorter than its magic"));
    }
    return absl::OkStatus();
  }
  return CheckCifar10Size(size_, "the file");
}

}  // namespace quantd::engine
