#ifndef QUANTD_WORKER_ENGINE_BASE_PEM_FILE_H_
#define QUANTD_WORKER_ENGINE_BASE_PEM_FILE_H_

// Reading the PEM files that quantd and quantctl take as TLS flags.

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace quantd {

// The file's text; INVALID_ARGUMENT naming `flag` when it cannot be read or
// holds no PEM block.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, absl::string_view flag);

}  // namespace quantd

#endif  // QUANTD_WORKER_ENGINE_BASE_PEM_FILE_H_
