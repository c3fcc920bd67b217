#include "worker/data_quota.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace quantd::worker {

namespace fs = std::filesystem;

absl::StatusOr<int64_t> DataQuota::UsedBytes() const {
  int64_t used = 0;
  std::error_code error;
  fs::recursive_directory_iterator it(root_, fs::directory_options::skip_permission_denied, error);
  if (error) return absl::InternalError(absl::StrCat("cannot measure data dir ", root_, ": ", error.message()));
  for (; it != fs::recursive_directory_iterator(); it.increment(error)) {
    if (error) break;  // a file removed while we walk: count what is there
    std::error_code file_error;
    if (it->is_regular_file(file_error) && !it->is_symlink(file_error)) {
      const uintmax_t size = it->file_size(file_error);
      if (!file_error) used += static_cast<int64_t>(size);
    }
  }
  return used;
}

absl::Status DataQuota::Check(int64_t more_bytes, const std::string& what) const {
  if (max_bytes_ <= 0) return absl::OkStatus();
  absl::StatusOr<int64_t> used = UsedBytes();
  if (!used.ok()) return used.status();
  if (*used + more_bytes > max_bytes_) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": the data dir quota is full (", *used, " bytes used + ",
                                                     more_bytes, " needed > ", max_bytes_,
                                                     " allowed by --max_data_bytes); delete jobs or blobs"));
  }
  return absl::OkStatus();
}

}  // namespace quantd::worker
