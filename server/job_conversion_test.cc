#include "server/job_conversion.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace quantd {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class ResolvePathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) / ("resolve_path_test." + std::to_string(getpid()));
    fs::remove_all(root_);
    data_ = root_ / "data";
    for (const char* dir : {"artifacts", "blobs", "datasets/blobs", "../shared"}) fs::create_directories(data_ / dir);
    for (const char* file : {"jobs.db", "jobs.db-wal", "LOCK", "artifacts/a.pt", "blobs/b", "model.pt",
                             "datasets/blobs/calib.bin", "../shared/calib.bin"}) {
      std::ofstream(data_ / file) << "x";
    }
  }
  void TearDown() override { fs::remove_all(root_); }

  ReferenceResolver Resolver() const { return ReferenceResolver(data_.string(), nullptr, {(root_ / "shared").string()}); }

  fs::path root_;
  fs::path data_;
};

TEST_F(ResolvePathTest, InputsUnderTheDataDirAndReadRootsResolve) {
  const ReferenceResolver resolver = Resolver();
  EXPECT_EQ(*resolver.ResolvePath("model.pt", "model.path"), fs::canonical(data_ / "model.pt").string());
  // Only the top of the data dir is quantd's: a dataset folder may hold a "blobs".
  EXPECT_TRUE(resolver.ResolvePath("datasets/blobs/calib.bin", "calibration.path").ok());
  fs::create_symlink(root_ / "shared", data_ / "shared");
  EXPECT_TRUE(resolver.ResolvePath("shared/calib.bin", "calibration.path").ok());
}

TEST_F(ResolvePathTest, QuantdsOwnStateIsNotAnInput) {
  const ReferenceResolver resolver = Resolver();
  for (const char* path : {"jobs.db", "jobs.db-wal", "LOCK", "artifacts/a.pt", "blobs/b", "./blobs/b"}) {
    absl::StatusOr<std::string> resolved = resolver.ResolvePath(path, "model.path");
    ASSERT_FALSE(resolved.ok()) << path;
    EXPECT_EQ(resolved.status().code(), absl::StatusCode::kInvalidArgument) << path;
    EXPECT_THAT(resolved.status().message(), HasSubstr("model.path")) << path;
    EXPECT_THAT(resolved.status().message(), HasSubstr("quantd's own")) << path;
  }
  // Nor through a link whose own name looks harmless.
  fs::create_symlink(data_ / "jobs.db", data_ / "calib.bin");
  absl::StatusOr<std::string> linked = resolver.ResolvePath("calib.bin", "calibration.path");
  ASSERT_FALSE(linked.ok());
  EXPECT_THAT(linked.status().message(), HasSubstr("quantd's own jobs.db"));
}

TEST_F(ResolvePathTest, EscapesAndMissingFilesAreRefused) {
  const ReferenceResolver resolver = Resolver();
  EXPECT_EQ(resolver.ResolvePath("../shared/calib.bin", "model.path").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(resolver.ResolvePath("/etc/hostname", "model.path").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(resolver.ResolvePath("missing.pt", "model.path").status().code(), absl::StatusCode::kNotFound);
  fs::create_symlink("/etc/hostname", data_ / "outside.pt");
  absl::StatusOr<std::string> outside = resolver.ResolvePath("outside.pt", "model.path");
  ASSERT_FALSE(outside.ok());
  EXPECT_THAT(outside.status().message(), HasSubstr("outside the data root"));
}

}  // namespace
}  // namespace quantd
