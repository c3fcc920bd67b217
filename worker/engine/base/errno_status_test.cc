#include "worker/engine/base/errno_status.h"

#include <cerrno>

#include <gtest/gtest.h>

namespace quantd {
namespace {

TEST(ErrnoStatusTest, RoomNotWritableAndTheRest) {
  for (int e : {ENOSPC, EDQUOT, EFBIG}) EXPECT_EQ(ErrnoStatus(e, "x").code(), absl::StatusCode::kResourceExhausted);
  // A read-only artifacts folder failed jobs with INTERNAL, as if quantd were at fault.
  for (int e : {EROFS, EACCES, EPERM}) EXPECT_EQ(ErrnoStatus(e, "x").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ErrnoStatus(EIO, "x").code(), absl::StatusCode::kInternal);
  EXPECT_EQ(ErrnoStatus(EROFS, "cannot write /d/a").message(), "cannot write /d/a: Read-only file system");
}

}  // namespace
}  // namespace quantd
