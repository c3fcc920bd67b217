#ifndef QUANTD_WORKER_ENGINE_SERIALIZATION_ARTIFACT_FILE_H_
#define QUANTD_WORKER_ENGINE_SERIALIZATION_ARTIFACT_FILE_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace quantd::engine {

// Writes `bytes` to `path` so that readers see either the old file or the
// whole new one: temporary file in the same folder, fsync, rename, fsync of
// the folder. On failure the temporary file is removed.
absl::Status WriteFileAtomically(const std::string& path, std::string_view bytes);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_SERIALIZATION_ARTIFACT_FILE_H_
