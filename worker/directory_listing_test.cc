#include "worker/directory_listing.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "gtest/gtest.h"

namespace quantd::worker {
namespace {

namespace fs = std::filesystem;

TEST(DirectoryListingTest, VisitsEveryEntryOnce) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("listing." + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "sub");
  for (const char* name : {"a", "b", "c"}) std::ofstream(dir / name) << name;
  std::multiset<std::string> seen;
  const std::error_code error =
      ForEachDirectoryEntry(dir.string(), [&seen](const fs::directory_entry& e) { seen.insert(e.path().filename()); });
  EXPECT_FALSE(error) << error.message();
  EXPECT_EQ(seen, (std::multiset<std::string>{"a", "b", "c", "sub"}));
  fs::remove_all(dir);
}

TEST(DirectoryListingTest, AMissingDirectoryIsAnErrorNotAThrow) {
  int visits = 0;
  const std::error_code error =
      ForEachDirectoryEntry("/nonexistent/quantd/listing", [&visits](const fs::directory_entry&) { ++visits; });
  EXPECT_EQ(error, std::errc::no_such_file_or_directory);
  EXPECT_EQ(visits, 0);
}

}  // namespace
}  // namespace quantd::worker
