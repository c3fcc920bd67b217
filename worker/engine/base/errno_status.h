#ifndef QUANTD_WORKER_ENGINE_BASE_ERRNO_STATUS_H_
#define QUANTD_WORKER_ENGINE_BASE_ERRNO_STATUS_H_

// One rule for failed system calls on the data dir: running out of room (a
// full disk, a quota, a file size limit) is RESOURCE_EXHAUSTED, which the
// caller may retry once space is freed; a file system or folder that cannot
// be written (read-only, permissions) is FAILED_PRECONDITION, for whoever
// runs quantd to fix; anything else is INTERNAL.

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace quantd {

// ENOSPC, EDQUOT or EFBIG.
bool IsOutOfSpace(int errno_value);
// EROFS, EACCES or EPERM.
bool IsNotWritable(int errno_value);

// "<what>: <strerror(errno_value)>" with the code the rule above gives.
absl::Status ErrnoStatus(int errno_value, absl::string_view what);

}  // namespace quantd

#endif  // QUANTD_WORKER_ENGINE_BASE_ERRNO_STATUS_H_
