#include "worker/blob_store.h"

#include "worker/engine/base/status_macros.h"

namespace quantd::worker {

absl::StatusOr<bool> BlobStore::RemoveIf(const std::string& blob_id,
                                         absl::FunctionRef<absl::StatusOr<bool>()> removable) const {
  absl::MutexLock lock(&use_mu_);
  QUANTD_ASSIGN_OR_RETURN(bool remove, removable());
  if (!remove) return false;
  QUANTD_RETURN_IF_ERROR(Remove(blob_id));
  return true;
}

}  // namespace quantd::worker
