#include "worker/engine/data/dataset_bytes_check.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quantd::engine {
namespace {

using ::testing::HasSubstr;

std::string Records(int count, char label) {
  std::string bytes;
  for (int i = 0; i < count; ++i) {
    bytes.push_back(label);
    bytes.append(kCifar10RecordBytes - 1, '\x7f');
  }
  return bytes;
}

// Whole records pass however the bytes are split into chunks; a label byte
// past 9, wherever a chunk boundary falls, names its record.
TEST(DatasetBytesCheckTest, Cifar10RecordsAreCheckedAcrossChunkBoundaries) {
  const std::string good = Records(3, '\x09');
  for (size_t chunk : {size_t{1}, size_t{1000}, size_t{3073}, size_t{3074}, good.size()}) {
    DatasetBytesCheck check(DatasetFormat::kCifar10Binary);
    for (size_t at = 0; at < good.size(); at += chunk) {
      ASSERT_TRUE(check.Add(absl::string_view(good).substr(at, chunk)).ok()) << chunk;
    }
    EXPECT_TRUE(check.Finish().ok()) << chunk;
  }
  std::string bad = good;
  bad[2 * kCifar10RecordBytes] = 10;
  for (size_t chunk : {size_t{1}, size_t{1000}, size_t{3074}, bad.size()}) {
    DatasetBytesCheck check(DatasetFormat::kCifar10Binary);
    absl::Status status;
    for (size_t at = 0; at < bad.size() && status.ok(); at += chunk) {
      status = check.Add(absl::string_view(bad).substr(at, chunk));
    }
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << chunk;
    EXPECT_THAT(status.message(), HasSubstr("record 2 has label 10")) << chunk;
  }
}

TEST(DatasetBytesCheckTest, ATruncatedOrEmptyCifar10FileIsRefusedWhenItEnds) {
  DatasetBytesCheck truncated(DatasetFormat::kCifar10Binary);
  ASSERT_TRUE(truncated.Add(Records(2, '\x01').substr(0, 2 * kCifar10RecordBytes - 5)).ok());
  const absl::Status status = truncated.Finish();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("6141 bytes is not a multiple of 3073"));
  EXPECT_THAT(DatasetBytesCheck(DatasetFormat::kCifar10Binary).Finish().message(), HasSubstr("is empty"));
}

TEST(DatasetBytesCheckTest, AnNpyFileMustStartWithTheMagic) {
  DatasetBytesCheck npy(DatasetFormat::kNpy);
  ASSERT_TRUE(npy.Add("\x93NU").ok());
  ASSERT_TRUE(npy.Add("MPY\x01\x00 anything").ok());
  EXPECT_TRUE(npy.Finish().ok());

  DatasetBytesCheck cifar_as_npy(DatasetFormat::kNpy);
  EXPECT_THAT(cifar_as_npy.Add(Records(1, '\x03')).message(), HasSubstr("not a .npy file"));

  DatasetBytesCheck short_file(DatasetFormat::kNpy);
  ASSERT_TRUE(short_file.Add("\x93NU").ok());
  EXPECT_THAT(short_file.Finish().message(), HasSubstr("3 bytes, shorter than its magic"));
}

}  // namespace
}  // namespace quantd::engine
