#include "worker/engine/base/errno_status.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace quantd {

bool IsOutOfSpace(int errno_value) {
  return errno_value == ENOSPC || errno_value == EDQUOT || errno_value == EFBIG;
}

absl::Status ErrnoStatus(int errno_value, absl::string_view what) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(errno_value));
  return IsOutOfSpace(errno_value) ? absl::ResourceExhaustedError(message) : absl::InternalError(message);
}

}  // namespace quantd
