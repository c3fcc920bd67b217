#include "worker/engine/base/errno_status.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace quantd {

bool IsOutOfSpace(int errno_value) {
  return errno_value == ENOSPC || errno_value == EDQUOT || errno_value == EFBIG;
}

bool IsNotWritable(int errno_value) { return errno_value == EROFS || errno_value == EACCES || errno_value == EPERM; }

absl::Status ErrnoStatus(int errno_value, absl::string_view what) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(errno_value));
  if (IsOutOfSpace(errno_value)) return absl::ResourceExhaustedError(message);
  // Not quantd's fault, nor transient: whoever runs it must make room for writes.
  if (IsNotWritable(errno_value)) return absl::FailedPreconditionError(message);
  return absl::InternalError(message);
}

}  // namespace quantd
