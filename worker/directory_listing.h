#ifndef QUANTD_WORKER_DIRECTORY_LISTING_H_
#define QUANTD_WORKER_DIRECTORY_LISTING_H_

#include <filesystem>
#include <functional>
#include <string>
#include <system_error>

namespace quantd::worker {

// Calls `visit` on each entry of `dir` and returns the first error (opening
// or reading the directory). A range-for over std::filesystem::
// directory_iterator advances with the throwing operator++ even when the
// iterator was made with an error_code: a read error (EIO) mid-listing
// would throw out of code that returns absl::Status.
std::error_code ForEachDirectoryEntry(const std::string& dir,
                                      const std::function<void(const std::filesystem::directory_entry&)>& visit);

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_DIRECTORY_LISTING_H_
