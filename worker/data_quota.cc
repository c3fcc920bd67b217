#include "worker/data_quota.h"

#include <algorithm>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"

namespace quantd::worker {

namespace fs = std::filesystem;

DataQuota::Reservation& DataQuota::Reservation::operator=(Reservation&& other) noexcept {
  if (this != &other) {
    Release();
    quota_ = std::exchange(other.quota_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DataQuota::Reservation::Consume(int64_t bytes) {
  bytes = std::min(std::max<int64_t>(bytes, 0), bytes_);
  if (quota_ != nullptr && bytes > 0) quota_->Return(bytes);
  bytes_ -= bytes;
}

void DataQuota::Reservation::Release() {
  if (quota_ != nullptr && bytes_ > 0) quota_->Return(bytes_);
  quota_ = nullptr;
  bytes_ = 0;
}

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

int64_t DataQuota::ReservedBytes() const {
  absl::MutexLock lock(&mu_);
  return reserved_;
}

absl::Status DataQuota::CheckRoom(int64_t more_bytes, const std::string& what) const {
  if (max_bytes_ <= 0) return absl::OkStatus();
  const int64_t reserved_before = ReservedBytes();
  absl::StatusOr<int64_t> used = UsedBytes();
  if (!used.ok()) return used.status();
  // Compared without the sum, which a client's declared size could overflow.
  if (more_bytes > max_bytes_ - *used - reserved_before) {
    const std::string reserved =
        reserved_before > 0 ? absl::StrCat(" + ", reserved_before, " reserved by uploads in progress") : "";
    return absl::ResourceExhaustedError(absl::StrCat(what, ": the data dir quota is full (", *used, " bytes used",
                                                     reserved, " + ", more_bytes, " needed > ", max_bytes_,
                                                     " allowed by --max_data_bytes); delete jobs or blobs"));
  }
  return absl::OkStatus();
}

absl::Status DataQuota::Check(int64_t more_bytes, const std::string& what) const {
  absl::MutexLock check_lock(&check_mu_);
  return CheckRoom(more_bytes, what);
}

absl::StatusOr<DataQuota::Reservation> DataQuota::Reserve(int64_t bytes, const std::string& what) const {
  absl::MutexLock check_lock(&check_mu_);
  absl::Status room = CheckRoom(bytes, what);
  if (!room.ok()) return room;
  if (max_bytes_ <= 0 || bytes <= 0) return Reservation();  // nothing to hold
  absl::MutexLock lock(&mu_);
  reserved_ += bytes;
  return Reservation(this, bytes);
}

void DataQuota::Return(int64_t bytes) const {
  absl::MutexLock lock(&mu_);
  reserved_ -= bytes;
}

}  // namespace quantd::worker
