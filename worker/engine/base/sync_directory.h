#ifndef QUANTD_WORKER_ENGINE_BASE_SYNC_DIRECTORY_H_
#define QUANTD_WORKER_ENGINE_BASE_SYNC_DIRECTORY_H_

// A rename or unlink in a folder survives a power loss only once the folder
// itself is synced: a caller told a file is stored (or deleted) may act on it
// (record a job, tell a client) before the kernel writes the folder back.

#include <string>

#include "absl/status/status.h"

namespace quantd {

// fsync(2) of the folder `dir`; an error (ErrnoStatus's codes) names it.
absl::Status SyncDirectory(const std::string& dir);

}  // namespace quantd

#endif  // QUANTD_WORKER_ENGINE_BASE_SYNC_DIRECTORY_H_
