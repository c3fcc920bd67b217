#ifndef QUANTD_WORKER_INPUT_LOCATOR_H_
#define QUANTD_WORKER_INPUT_LOCATOR_H_

// A job's inputs as the job store keeps them: references that whichever
// replica claims the job resolves to its own files, never one replica's
// local paths. Three forms:
//
//   "blob:<sha256>"     an upload, looked up in the resolving replica's blob
//                       store;
//   "data:<relative>"   a file under the resolving replica's --data_dir (the
//                       path after symlinks were resolved at submission);
//   "/absolute/path"    a file under a --read_roots folder, which is
//                       deployment configuration (the same mount on every
//                       replica), or any input of a job stored before
//                       references existed.

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/blob_store.h"
#include "worker/job.h"

namespace quantd::worker {

std::string BlobReference(const std::string& blob_id);
// `relative` is relative to the data dir, without "..".
std::string DataDirReference(const std::string& relative);

class InputLocator {
 public:
  // `blobs` may be null: blob references are then FAILED_PRECONDITION.
  InputLocator(std::string data_dir, const BlobStore* blobs);

  // This replica's file for `reference`. `field` names the job field in
  // errors ("calibration.dataset", ...). NOT_FOUND for a blob or file that
  // is not here; DATA_LOSS for a blob whose bytes no longer match its id;
  // FAILED_PRECONDITION for a data-dir path that now leads
  // through a link (it was resolved without one at submission);
  // INVALID_ARGUMENT for a reference that is none of the forms above.
  absl::StatusOr<std::string> LocalPath(const std::string& reference, const std::string& field) const;

 private:
  std::string data_dir_;  // canonical
  const BlobStore* blobs_;
};

// `spec` with every input reference replaced by this replica's file. A null
// locator leaves the spec as it is (worker tests whose fake engines read no
// files).
absl::StatusOr<JobSpec> LocalizeJobSpec(const JobSpec& spec, const InputLocator* locator);

// `message` (an engine error about `local`, LocalizeJobSpec's result for
// `stored`) with this replica's file names replaced by the references the
// client knows them by: no server layout in a job's result.
std::string ReferToInputs(absl::string_view message, const JobSpec& stored, const JobSpec& local);
// The same for one dataset's files (an evaluation's); a file with no
// reference keeps its name.
std::string ReferToDataset(absl::string_view message, const engine::DatasetSpec& stored,
                           const engine::DatasetSpec& local);

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_INPUT_LOCATOR_H_
