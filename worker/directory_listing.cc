#include "worker/directory_listing.h"

namespace quantd::worker {

std::error_code ForEachDirectoryEntry(const std::string& dir,
                                      const std::function<void(const std::filesystem::directory_entry&)>& visit) {
  std::error_code error;
  std::filesystem::directory_iterator it(dir, error);
  for (; !error && it != std::filesystem::directory_iterator(); it.increment(error)) visit(*it);
  return error;
}

}  // namespace quantd::worker
