#include "worker/local_blob_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "worker/directory_listing.h"
#include "worker/engine/base/errno_status.h"
#include "worker/engine/base/log.h"
#include "worker/engine/base/sha256.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/sync_directory.h"
#include "worker/local_artifact_store.h"

namespace quantd::worker {

namespace {
// Bytes an upload of undeclared size reserves at a time.
constexpr int64_t kUndeclaredUploadStep = int64_t{16} << 20;

// A step of an undeclared upload: 16 MiB (or `at_least`, a larger chunk)
// where there is room, else exactly `at_least`, so that a small upload is
// not refused for room it will not use. Each reservation measures the data
// dir: one per step, not per chunk, while there is room.
absl::StatusOr<DataQuota::Reservation> ReserveStep(const DataQuota& quota, int64_t at_least) {
  absl::StatusOr<DataQuota::Reservation> step = quota.Reserve(std::max(kUndeclaredUploadStep, at_least), "upload");
  if (step.ok() || step.status().code() != absl::StatusCode::kResourceExhausted) return step;
  return quota.Reserve(at_least, "upload");
}
}  // namespace

namespace fs = std::filesystem;

absl::StatusOr<std::unique_ptr<LocalBlobStore>> LocalBlobStore::Open(const std::string& dir, int64_t max_bytes,
                                                          const DataQuota* quota) {
  std::error_code error;
  fs::create_directories(dir, error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create blob dir \"", dir, "\": ", error.message()));
  }
  RemoveTemporaryFiles(dir);
  return std::unique_ptr<LocalBlobStore>(new LocalBlobStore(dir, max_bytes, quota));
}

absl::StatusOr<std::unique_ptr<BlobUpload>> LocalBlobStore::BeginUpload(
    const std::string& expected_sha256, int64_t declared_size) const {
  if (!expected_sha256.empty() && !IsSha256Hex(expected_sha256)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metadata.expected_sha256: \"", expected_sha256, "\" is not 64 lower-case hex digits"));
  }
  if (declared_size < 0) {
    return absl::InvalidArgumentError(absl::StrCat("metadata.size_bytes: ", declared_size, " is negative"));
  }
  if (declared_size > max_bytes_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "metadata.size_bytes: ", declared_size, " bytes exceeds the upload limit of ", max_bytes_));
  }
  DataQuota::Reservation reservation;
  if (quota_ != nullptr) {
    // An undeclared size reserves a step now, and each next one before its
    // bytes are written (LocalBlobUpload::Append).
    QUANTD_ASSIGN_OR_RETURN(reservation, declared_size > 0 ? quota_->Reserve(declared_size, "upload")
                                                           : ReserveStep(*quota_, 0));
  }
  std::string tmp = (fs::path(dir_) / ".tmp.upload.XXXXXX").string();
  // Close-on-exec: model vetting spawns children while uploads are open.
  int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) {
    return ErrnoStatus(errno, "cannot create upload file");
  }
  return std::unique_ptr<BlobUpload>(
      new LocalBlobUpload(this, tmp, fd, expected_sha256, declared_size, std::move(reservation)));
}

absl::StatusOr<std::string> LocalBlobStore::PathOf(const std::string& blob_id,
                                              const std::string& field) const {
  if (!IsSha256Hex(blob_id)) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": \"", blob_id, "\" is not a blob id (64 lower-case hex digits)"));
  }
  std::string path = (fs::path(dir_) / blob_id).string();
  std::error_code error;
  if (!fs::is_regular_file(path, error)) {
    return absl::NotFoundError(
        absl::StrCat(field, ": blob ", blob_id, " is not in the store (never uploaded, or deleted)"));
  }
  return path;
}

absl::StatusOr<std::string> LocalBlobStore::VerifiedPathOf(const std::string& blob_id,
                                                            const std::string& field) const {
  QUANTD_ASSIGN_OR_RETURN(std::string path, PathOf(blob_id, field));
  absl::StatusOr<std::string> digest = engine::Sha256File(path);
  if (!digest.ok()) {
    // Not the file's name: the caller knows the blob by its id.
    Log(LogLevel::kWarning, "quantd: cannot read blob ", path, ": ", digest.status());
    return absl::Status(digest.status().code(),
                        absl::StrCat(field, ": blob ", blob_id, " cannot be read from the blob store"));
  }
  if (*digest != blob_id) {
    return absl::DataLossError(absl::StrCat(field, ": blob ", blob_id,
                                            " is corrupted in the blob store (its bytes now hash to ", *digest,
                                            "); upload the original file again"));
  }
  return path;
}

absl::StatusOr<std::vector<StoredBlob>> LocalBlobStore::List() const {
  std::vector<StoredBlob> blobs;
  const std::error_code error = ForEachDirectoryEntry(dir_, [this, &blobs](const fs::directory_entry& entry) {
    const std::string name = entry.path().filename().string();
    if (!IsSha256Hex(name)) return;  // temporaries
    absl::StatusOr<StoredBlob> blob = Stat(name, "blob_id");
    if (blob.ok()) blobs.push_back(std::move(*blob));
  });
  if (error) return absl::InternalError(absl::StrCat("cannot list blobs in ", dir_, ": ", error.message()));
  std::sort(blobs.begin(), blobs.end(), [](const StoredBlob& a, const StoredBlob& b) { return a.id < b.id; });
  return blobs;
}

absl::StatusOr<StoredBlob> LocalBlobStore::Stat(const std::string& blob_id, const std::string& field) const {
  QUANTD_ASSIGN_OR_RETURN(std::string path, PathOf(blob_id, field));
  struct stat st = {};
  if (::lstat(path.c_str(), &st) != 0) return absl::NotFoundError(absl::StrCat(field, ": blob ", blob_id, " is gone"));
  return StoredBlob{blob_id, static_cast<int64_t>(st.st_size),
                    absl::TimeFromTimespec(st.st_mtim)};
}

absl::Status LocalBlobStore::Remove(const std::string& blob_id) const {
  QUANTD_ASSIGN_OR_RETURN(std::string path, PathOf(blob_id, "id"));
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) {
      return absl::NotFoundError(absl::StrCat("blob ", blob_id, " is not in the store (never uploaded, or deleted)"));
    }
    return absl::InternalError(absl::StrCat("cannot delete blob ", blob_id, ": ", std::strerror(errno)));
  }
  // A deletion the caller is told of should survive a power loss. A sync
  // that fails does not undo it, though: logged, not answered as a failure
  // (a retry would find nothing to delete).
  if (absl::Status synced = SyncDirectory(dir_); !synced.ok()) {
    Log(LogLevel::kWarning, "quantd: deleted blob ", blob_id, ", but ", synced);
  }
  return absl::OkStatus();
}

absl::Status LocalBlobStore::Touch(const std::string& blob_id, absl::Time now) const {
  QUANTD_ASSIGN_OR_RETURN(std::string path, PathOf(blob_id, "blob_id"));
  const timespec when = absl::ToTimespec(now);
  const timespec times[2] = {when, when};
  if (::utimensat(AT_FDCWD, path.c_str(), times, 0) != 0) {
    return absl::InternalError(absl::StrCat("cannot mark blob ", blob_id, " used: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

LocalBlobUpload::LocalBlobUpload(const LocalBlobStore* store, std::string tmp_path, int fd, std::string expected_sha256,
                       int64_t declared_size, DataQuota::Reservation reservation)
    : store_(store),
      tmp_path_(std::move(tmp_path)),
      fd_(fd),
      expected_sha256_(std::move(expected_sha256)),
      declared_size_(declared_size),
      reservation_(std::move(reservation)) {}

LocalBlobUpload::~LocalBlobUpload() { Discard(); }

void LocalBlobUpload::Discard() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!tmp_path_.empty()) {
    ::unlink(tmp_path_.c_str());
    tmp_path_.clear();
  }
  reservation_.Release();
}

absl::Status LocalBlobUpload::Append(const std::string& chunk) {
  if (fd_ < 0) return absl::FailedPreconditionError("upload already finished");
  size_ += static_cast<int64_t>(chunk.size());
  if (size_ > store_->max_bytes()) {
    Discard();
    return absl::ResourceExhaustedError(absl::StrCat(
        "upload exceeds the server's limit of ", store_->max_bytes(), " bytes (--max_upload_bytes)"));
  }
  if (declared_size_ > 0 && size_ > declared_size_) {
    Discard();
    return absl::InvalidArgumentError(absl::StrCat("upload sends more than metadata.size_bytes (",
                                                   declared_size_, " bytes)"));
  }
  // Undeclared sizes: room for the next step is reserved before it is
  // written (earlier chunks are in the temporary file, which the quota
  // counts). Checked only every 16 MiB received, uploads under 16 MiB were
  // never checked, and any number of them overran the quota together.
  if (store_->quota() != nullptr && declared_size_ == 0 &&
      reservation_.bytes() < static_cast<int64_t>(chunk.size())) {
    absl::StatusOr<DataQuota::Reservation> more =
        ReserveStep(*store_->quota(), static_cast<int64_t>(chunk.size()));
    if (!more.ok()) {
      Discard();
      return more.status();
    }
    reservation_ = *std::move(more);  // what was left of the last step goes back
  }
  hash_.Update(chunk);
  size_t written = 0;
  while (written < chunk.size()) {
    ssize_t n = ::write(fd_, chunk.data() + written, chunk.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status status = ErrnoStatus(errno, "cannot write upload");
      Discard();
      return status;
    }
    written += static_cast<size_t>(n);
  }
  reservation_.Consume(static_cast<int64_t>(chunk.size()));  // now counted in the file
  return absl::OkStatus();
}

absl::StatusOr<BlobInfo> LocalBlobUpload::Commit() {
  if (fd_ < 0) return absl::FailedPreconditionError("upload already finished");
  BlobInfo info{hash_.HexDigest(), size_, false};
  if (declared_size_ > 0 && size_ != declared_size_) {
    Discard();
    return absl::DataLossError(absl::StrCat("upload cut off: received ", size_, " of the ", declared_size_,
                                            " bytes in metadata.size_bytes; nothing was stored"));
  }
  if (!expected_sha256_.empty() && expected_sha256_ != info.sha256) {
    Discard();
    // The client's hash or its bytes are wrong: from here the two look alike.
    return absl::DataLossError(absl::StrCat("received ", info.size_bytes, " bytes with sha256 ", info.sha256,
                                            ", but metadata.expected_sha256 is ", expected_sha256_,
                                            " (a wrong hash given, or bytes changed on the way); nothing was stored"));
  }
  if (::fchmod(fd_, 0644) != 0 || ::fsync(fd_) != 0) {
    absl::Status status = ErrnoStatus(errno, "cannot sync upload");
    Discard();
    return status;
  }
  ::close(fd_);
  fd_ = -1;
  reservation_.Release();  // every byte is in the file: the rest of a step goes back
  std::string target = (fs::path(store_->dir()) / info.sha256).string();
  {
    // Not while the sweep decides on this blob (RemoveIf): it would delete the
    // fresh file it saw as old, after this upload was told it was stored.
    BlobStore::Use use(*store_);
    std::error_code error;
    info.already_existed = fs::is_regular_file(target, error);
    if (::rename(tmp_path_.c_str(), target.c_str()) != 0) {
      absl::Status status = ErrnoStatus(errno, "cannot store upload");
      Discard();
      return status;
    }
  }
  tmp_path_.clear();
  // Not stored until the rename is durable: the caller records jobs that
  // name this blob. (A retry finds the bytes in place.)
  QUANTD_RETURN_IF_ERROR(SyncDirectory(store_->dir()));
  return info;
}

}  // namespace quantd::worker
