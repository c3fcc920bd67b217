#include "worker/input_locator.h"

#include <algorithm>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "worker/data_dir_layout.h"
#include "worker/engine/base/status_macros.h"

namespace quantd::worker {
namespace {

namespace fs = std::filesystem;

constexpr absl::string_view kBlobPrefix = "blob:";
constexpr absl::string_view kDataDirPrefix = "data:";

absl::Status LocalizeDataset(engine::DatasetSpec& dataset, const std::string& field, const InputLocator* locator) {
  // Errors name the request's field: an upload was given as a blob id.
  auto localize = [&](std::string& reference, const std::string& path_field,
                      const std::string& blob_field) -> absl::Status {
    if (reference.empty()) return absl::OkStatus();
    const bool blob = absl::StartsWith(reference, kBlobPrefix);
    QUANTD_ASSIGN_OR_RETURN(reference, locator->LocalPath(reference, absl::StrCat(field, blob ? blob_field : path_field)));
    return absl::OkStatus();
  };
  QUANTD_RETURN_IF_ERROR(localize(dataset.path, ".path", ".blob_id"));
  return localize(dataset.labels_path, ".labels_path", ".labels_blob_id");
}

}  // namespace

std::string BlobReference(const std::string& blob_id) { return absl::StrCat(kBlobPrefix, blob_id); }

std::string DataDirReference(const std::string& relative) { return absl::StrCat(kDataDirPrefix, relative); }

InputLocator::InputLocator(std::string data_dir, const BlobStore* blobs) : blobs_(blobs) {
  std::error_code error;
  fs::path canonical = fs::weakly_canonical(data_dir, error);
  data_dir_ = error ? data_dir : canonical.string();
}

absl::StatusOr<std::string> InputLocator::LocalPath(const std::string& reference, const std::string& field) const {
  if (absl::StartsWith(reference, kBlobPrefix)) {
    if (blobs_ == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(field, ": ", reference, " needs a blob store"));
    }
    // Read with its bytes checked: a blob is the only copy of an upload.
    return blobs_->VerifiedPathOf(reference.substr(kBlobPrefix.size()), field);
  }
  if (absl::StartsWith(reference, kDataDirPrefix)) {
    const fs::path relative(reference.substr(kDataDirPrefix.size()));
    if (!StaysUnderItsRoot(relative)) return absl::InvalidArgumentError(absl::StrCat(field, ": \"", reference, "\" leaves the data dir"));
    const fs::path full = fs::path(data_dir_) / relative;
    std::error_code error;
    if (!fs::is_regular_file(full, error)) {
      return absl::NotFoundError(absl::StrCat(field, ": \"", relative.string(),
                                              "\" is no longer a file under this server's data dir"));
    }
    // Submission resolved every link; one that appeared since could lead
    // anywhere, so the job does not follow it.
    const fs::path resolved = fs::canonical(full, error);
    if (error || resolved != full) {
      return absl::FailedPreconditionError(absl::StrCat(
          field, ": \"", relative.string(), "\" now leads through a symbolic link (none was there at submission)"));
    }
    return full.string();
  }
  if (fs::path(reference).is_absolute()) {
    // A file under a read root, stored as submission resolved it (every
    // link followed): a link that appeared since (a folder of the shared
    // mount swapped for one) could lead out of the roots, into quantd's own
    // state even; the job does not follow it.
    std::error_code error;
    if (!fs::is_regular_file(reference, error)) {
      return absl::NotFoundError(absl::StrCat(field, ": \"", reference, "\" is no longer a file"));
    }
    const fs::path resolved = fs::canonical(reference, error);
    if (error || resolved != fs::path(reference)) {
      return absl::FailedPreconditionError(absl::StrCat(
          field, ": \"", reference, "\" now leads through a symbolic link (none was there at submission)"));
    }
    return reference;
  }
  return absl::InvalidArgumentError(absl::StrCat(field, ": \"", reference, "\" is not an input reference"));
}

absl::StatusOr<JobSpec> LocalizeJobSpec(const JobSpec& spec, const InputLocator* locator) {
  if (locator == nullptr) return spec;
  JobSpec local = spec;
  QUANTD_ASSIGN_OR_RETURN(local.model_path, locator->LocalPath(spec.model_path, "model"));
  QUANTD_RETURN_IF_ERROR(LocalizeDataset(local.calibration, "calibration.dataset", locator));
  if (local.evaluation) QUANTD_RETURN_IF_ERROR(LocalizeDataset(*local.evaluation, "evaluation.dataset", locator));
  if (local.accuracy_goal) {
    QUANTD_RETURN_IF_ERROR(LocalizeDataset(local.accuracy_goal->tuning, "accuracy_goal.tuning", locator));
  }
  return local;
}

namespace {

// Pairs of this replica's file name and the reference the client knows it by.
using FileNames = std::vector<std::pair<std::string, std::string>>;

void AddName(FileNames& names, const std::string& path, const std::string& reference) {
  if (!path.empty() && !reference.empty() && path != reference) names.emplace_back(path, reference);
}

void AddDatasetNames(FileNames& names, const engine::DatasetSpec& local, const engine::DatasetSpec& stored) {
  AddName(names, local.path, stored.path);
  AddName(names, local.labels_path, stored.labels_path);
}

std::string ReplaceNames(absl::string_view message, FileNames names) {
  // Longest first: one file's path may begin another's.
  std::sort(names.begin(), names.end(), [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  std::string out(message);
  for (const auto& [path, reference] : names) out = absl::StrReplaceAll(out, {{path, reference}});
  return out;
}

}  // namespace

std::string ReferToInputs(absl::string_view message, const JobSpec& stored, const JobSpec& local) {
  FileNames names;
  AddName(names, local.model_path, stored.model_path);
  AddDatasetNames(names, local.calibration, stored.calibration);
  if (local.evaluation && stored.evaluation) AddDatasetNames(names, *local.evaluation, *stored.evaluation);
  if (local.accuracy_goal && stored.accuracy_goal) {
    AddDatasetNames(names, local.accuracy_goal->tuning, stored.accuracy_goal->tuning);
  }
  return ReplaceNames(message, std::move(names));
}

std::string ReferToDataset(absl::string_view message, const engine::DatasetSpec& stored,
                           const engine::DatasetSpec& local) {
  FileNames names;
  AddDatasetNames(names, local, stored);
  return ReplaceNames(message, std::move(names));
}

}  // namespace quantd::worker
