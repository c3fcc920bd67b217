#include "worker/local_artifact_store.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "worker/directory_listing.h"
#include "worker/engine/base/errno_status.h"
#include "worker/engine/base/log.h"
#include "worker/engine/base/sha256.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/sync_directory.h"
#include "worker/engine/serialization/artifact_file.h"

namespace quantd::worker {

namespace fs = std::filesystem;

int RemoveTemporaryFiles(const std::string& dir) {
  int removed = 0;
  (void)ForEachDirectoryEntry(dir, [&removed](const fs::directory_entry& entry) {
    std::error_code error;
    if (absl::StartsWith(entry.path().filename().string(), ".tmp.") && fs::remove(entry.path(), error)) ++removed;
  });
  return removed;
}

absl::StatusOr<std::unique_ptr<LocalArtifactStore>> LocalArtifactStore::Open(const std::string& dir,
                                                                              const DataQuota* quota) {
  std::error_code error;
  fs::create_directories(dir, error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create artifact dir \"", dir, "\": ", error.message()));
  }
  RemoveTemporaryFiles(dir);
  return std::unique_ptr<LocalArtifactStore>(new LocalArtifactStore(dir, quota));
}

std::string LocalArtifactStore::ArtifactPath(const std::string& sha256) const {
  return (fs::path(dir_) / (sha256 + ".pt")).string();
}

std::string LocalArtifactStore::ManifestPath(const std::string& sha256, const std::string& job_id) const {
  return (fs::path(dir_) / (sha256 + "." + job_id + ".manifest.json")).string();
}

namespace {

// Job ids become file names: letters, digits, '-' and '_' only.
absl::Status CheckJobId(const std::string& job_id) {
  const bool ok = !job_id.empty() && job_id.size() <= 128 &&
                  std::all_of(job_id.begin(), job_id.end(),
                              [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'; });
  return ok ? absl::OkStatus() : absl::InvalidArgumentError(absl::StrCat("bad job id for a manifest: \"", job_id, "\""));
}

// Whether the file at `path` holds exactly `bytes`.
bool FileHolds(const std::string& path, const std::string& bytes) {
  std::error_code error;
  const uintmax_t size = fs::file_size(path, error);
  if (error || size != bytes.size()) return false;
  std::ifstream in(path, std::ios::binary);
  std::string chunk(1 << 20, '\0');
  size_t offset = 0;
  while (offset < bytes.size()) {
    const size_t want = std::min(chunk.size(), bytes.size() - offset);
    if (!in.read(chunk.data(), static_cast<std::streamsize>(want))) return false;
    if (bytes.compare(offset, want, chunk.data(), want) != 0) return false;
    offset += want;
  }
  return true;
}

}  // namespace

absl::StatusOr<StoredArtifact> LocalArtifactStore::Put(const std::string& job_id, const std::string& bytes,
                                                       const std::string& manifest_json) {
  QUANTD_RETURN_IF_ERROR(CheckJobId(job_id));
  StoredArtifact stored{engine::Sha256Hex(bytes), static_cast<int64_t>(bytes.size())};
  // Held while the files are written (then counted as files): two workers
  // storing at once, or a job beside an upload, cannot both take the room
  // that is left.
  // Bytes already stored (an identical job's) are kept, and cost only the
  // manifest, when they are intact: a file damaged since (a disk error, a
  // hand edit) is replaced, so that running the job again repairs it.
  const bool intact = FileHolds(ArtifactPath(stored.sha256), bytes);
  DataQuota::Reservation room;
  if (quota_ != nullptr) {
    const int64_t new_bytes = intact ? 0 : static_cast<int64_t>(bytes.size());
    QUANTD_ASSIGN_OR_RETURN(room, quota_->Reserve(new_bytes + static_cast<int64_t>(manifest_json.size()), "artifact"));
  }
  // Manifest first: an artifact file that is visible always has a manifest.
  const std::string manifest = ManifestPath(stored.sha256, job_id);
  QUANTD_RETURN_IF_ERROR(engine::WriteFileAtomically(manifest, manifest_json));
  // Each file, once written, counts as a file: no longer also as reserved
  // (another writer's check meanwhile would count its bytes twice).
  room.Consume(static_cast<int64_t>(manifest_json.size()));
  if (!intact) {
    absl::Status written = engine::WriteFileAtomically(ArtifactPath(stored.sha256), bytes);
    if (!written.ok()) {
      // No manifest without its artifact (a full disk left one behind).
      std::error_code ignored;
      if (!Contains(stored.sha256)) fs::remove(manifest, ignored);
      return written;
    }
    room.Consume(static_cast<int64_t>(bytes.size()));
  }
  return stored;
}

absl::StatusOr<std::string> LocalArtifactStore::Read(const std::string& sha256) {
  if (!IsSha256Hex(sha256) || !Contains(sha256)) {
    return absl::NotFoundError(absl::StrCat("artifact file ", sha256, " is not in the store"));
  }
  std::ifstream in(ArtifactPath(sha256), std::ios::binary);
  std::ostringstream data;
  data << in.rdbuf();
  if (!in) return absl::DataLossError(absl::StrCat("cannot read artifact ", sha256));
  return data.str();
}

absl::StatusOr<std::string> LocalArtifactStore::ReadRange(const std::string& sha256, uint64_t offset,
                                                          uint64_t max_bytes) {
  if (!IsSha256Hex(sha256) || !Contains(sha256)) {
    return absl::NotFoundError(absl::StrCat("artifact file ", sha256, " is not in the store"));
  }
  std::ifstream in(ArtifactPath(sha256), std::ios::binary);
  in.seekg(0, std::ios::end);
  const auto end = static_cast<uint64_t>(std::max<std::streamoff>(in.tellg(), 0));
  if (!in) return absl::DataLossError(absl::StrCat("cannot read artifact ", sha256));
  if (offset >= end) return std::string();
  std::string data(static_cast<size_t>(std::min(max_bytes, end - offset)), '\0');
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(data.data(), static_cast<std::streamsize>(data.size()));
  if (!in) return absl::DataLossError(absl::StrCat("cannot read artifact ", sha256, " at byte ", offset));
  return data;
}

namespace {

// Removals should survive a power loss, so the folder is synced; one that
// fails does not undo them, though: logged, not answered as a failure.
void LogUnsyncedRemoval(const std::string& dir) {
  if (absl::Status synced = SyncDirectory(dir); !synced.ok()) {
    Log(LogLevel::kWarning, "quantd: removed artifact files, but ", synced);
  }
}

}  // namespace

absl::Status LocalArtifactStore::RemoveManifest(const std::string& sha256, const std::string& job_id) {
  if (!IsSha256Hex(sha256)) return absl::InvalidArgumentError("bad artifact sha256");
  QUANTD_RETURN_IF_ERROR(CheckJobId(job_id));
  std::error_code error;
  if (!fs::remove(ManifestPath(sha256, job_id), error)) {
    if (error) return ErrnoStatus(error.value(), absl::StrCat("cannot remove the manifest of job ", job_id));
    return absl::OkStatus();  // none
  }
  LogUnsyncedRemoval(dir_);
  return absl::OkStatus();
}

absl::Status LocalArtifactStore::Remove(const std::string& sha256) {
  if (!IsSha256Hex(sha256)) return absl::InvalidArgumentError("bad artifact sha256");
  // The bytes first: a manifest never outlives them for long (the sweep
  // removes one left alone). The first error is the answer: the caller (a
  // deletion, the sweep) must not count the files gone while they stay.
  std::error_code error;
  fs::remove(ArtifactPath(sha256), error);
  absl::Status status =
      error ? ErrnoStatus(error.value(), absl::StrCat("cannot remove artifact ", sha256)) : absl::OkStatus();
  const std::error_code listed = ForEachDirectoryEntry(dir_, [&](const fs::directory_entry& entry) {
    const std::string name = entry.path().filename().string();
    if (absl::StartsWith(name, sha256 + ".") && absl::EndsWith(name, ".manifest.json")) {
      std::error_code manifest_error;
      if (!fs::remove(entry.path(), manifest_error) && manifest_error && status.ok()) {
        status = ErrnoStatus(manifest_error.value(), absl::StrCat("cannot remove ", name));
      }
    }
  });
  if (status.ok() && listed) status = ErrnoStatus(listed.value(), absl::StrCat("cannot list ", dir_));
  LogUnsyncedRemoval(dir_);
  return status;
}

absl::StatusOr<std::map<std::string, std::vector<std::string>>> LocalArtifactStore::List() {
  std::map<std::string, std::vector<std::string>> listed;
  const std::error_code error = ForEachDirectoryEntry(dir_, [&listed](const fs::directory_entry& entry) {
    const std::string name = entry.path().filename().string();
    if (name.size() < 65 || name[64] != '.' || !IsSha256Hex(name.substr(0, 64))) return;
    const std::string sha256 = name.substr(0, 64);
    const std::string rest = name.substr(65);
    if (rest == "pt") {
      listed[sha256];
    } else if (absl::EndsWith(rest, ".manifest.json")) {
      const std::string job_id = rest.substr(0, rest.size() - std::string(".manifest.json").size());
      if (CheckJobId(job_id).ok()) listed[sha256].push_back(job_id);
    }
  });
  if (error) return absl::InternalError(absl::StrCat("listing artifacts in ", dir_, ": ", error.message()));
  for (auto& [sha256, jobs] : listed) std::sort(jobs.begin(), jobs.end());
  return listed;
}

absl::StatusOr<int64_t> LocalArtifactStore::SizeOf(const std::string& sha256) {
  std::error_code error;
  const uintmax_t size = IsSha256Hex(sha256) && fs::is_regular_file(ArtifactPath(sha256), error)
                             ? fs::file_size(ArtifactPath(sha256), error)
                             : static_cast<uintmax_t>(-1);
  if (error || size == static_cast<uintmax_t>(-1)) {
    return absl::NotFoundError(absl::StrCat("artifact file ", sha256, " is not in the store"));
  }
  return static_cast<int64_t>(size);
}

bool LocalArtifactStore::Contains(const std::string& sha256) {
  std::error_code error;
  return IsSha256Hex(sha256) && fs::is_regular_file(ArtifactPath(sha256), error);
}

}  // namespace quantd::worker
