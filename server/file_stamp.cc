#include "server/file_stamp.h"

#include <sys/stat.h>

#include "absl/strings/str_cat.h"

namespace quantd {

absl::StatusOr<FileStamp> StampOf(const std::string& path, const std::string& what) {
  struct stat st = {};
  if (::stat(path.c_str(), &st) != 0) return absl::NotFoundError(absl::StrCat(what, " ", path, " is missing"));
  return FileStamp{static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
                   static_cast<int64_t>(st.st_size), static_cast<uint64_t>(st.st_ino)};
}

}  // namespace quantd
