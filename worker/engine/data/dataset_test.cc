#include "worker/engine/data/dataset.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <map>

#include "worker/engine/testing/test_env.h"

namespace quantd::engine {
namespace {

DatasetSpec Cifar(const std::string& path) {
  DatasetSpec spec;
  spec.path = path;
  return spec;
}

TEST(Cifar10DatasetTest, ReadsTheRealTestSet) {
  auto dataset = OpenDataset(Cifar(testing::TestSetPath()));
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_EQ((*dataset)->size(), 10000);
  auto batch = (*dataset)->ReadBatch(0, 10);
  ASSERT_TRUE(batch.ok());
  EXPECT_EQ(batch->images.sizes(), (std::vector<int64_t>{10, 3, 32, 32}));
  const std::vector<int64_t> first = {3, 8, 8, 0, 6, 6, 1, 6, 3, 1};  // cat, ship, ship, airplane, ...
  for (int i = 0; i < 10; ++i) EXPECT_EQ(batch->labels[i].item<int64_t>(), first[static_cast<size_t>(i)]);
  EXPECT_GE(batch->images.min().item<float>(), 0.0f);
  EXPECT_LE(batch->images.max().item<float>(), 255.0f);  // raw pixels, no scaling
  EXPECT_EQ((*dataset)->ReadBatch(9995, 10).status().code(), absl::StatusCode::kOutOfRange);
}

TEST(Cifar10DatasetTest, TruncatedFileNamesTheProblem) {
  const std::string path = testing::MakeTempDir("truncated") + "/part.bin";
  std::ifstream in(testing::CalibrationPath(), std::ios::binary);
  std::vector<char> bytes(3073 * 2 + 100);
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  auto dataset = OpenDataset(Cifar(path));
  EXPECT_EQ(dataset.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(dataset.status().message().find("truncated"), std::string::npos) << dataset.status();
}

TEST(Cifar10DatasetTest, EmptyAndMissingFiles) {
  const std::string path = testing::MakeTempDir("empty") + "/empty.bin";
  std::ofstream(path).close();
  EXPECT_EQ(OpenDataset(Cifar(path)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenDataset(Cifar("/nonexistent.bin")).status().code(), absl::StatusCode::kNotFound);
}

TEST(Cifar10DatasetTest, StratifiedSelectionIsBalancedAndDeterministic) {
  DatasetSpec spec = Cifar(testing::TestSetPath());
  spec.samples_per_class = 7;
  spec.seed = 42;
  auto a = OpenDataset(spec);
  auto b = OpenDataset(spec);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ((*a)->size(), 70);
  auto batch_a = (*a)->ReadBatch(0, 70);
  auto batch_b = (*b)->ReadBatch(0, 70);
  EXPECT_TRUE(at::equal(batch_a->images, batch_b->images));
  std::map<int64_t, int> per_class;
  for (int i = 0; i < 70; ++i) per_class[batch_a->labels[i].item<int64_t>()]++;
  for (const auto& [label, count] : per_class) EXPECT_EQ(count, 7) << label;
  spec.seed = 43;
  auto c = OpenDataset(spec);
  EXPECT_NE(*(*a)->Fingerprint(), *(*c)->Fingerprint());
}

TEST(StratifiedSelectionTest, TooFewSamplesInAClass) {
  auto s = StratifiedSelection({0, 0, 1}, 2, 0);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("class 1 has only 1"), std::string::npos);
}

TEST(NpyDatasetTest, ReadsNhwcUint8AndNchwFloat) {
  const std::string dir = testing::MakeTempDir("npy");
  std::vector<uint8_t> nhwc(2 * 4 * 4 * 3);
  for (size_t i = 0; i < nhwc.size(); ++i) nhwc[i] = static_cast<uint8_t>(i);
  testing::WriteNpy(dir + "/nhwc.npy", "|u1", {2, 4, 4, 3}, nhwc.data(), nhwc.size());
  std::vector<int64_t> labels = {1, 0};
  testing::WriteNpy(dir + "/labels.npy", "<i8", {2}, labels.data(), labels.size() * 8);
  DatasetSpec spec;
  spec.format = DatasetFormat::kNpy;
  spec.path = dir + "/nhwc.npy";
  spec.labels_path = dir + "/labels.npy";
  auto dataset = OpenDataset(spec);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_EQ((*dataset)->sample_shape(), (std::vector<int64_t>{3, 4, 4}));
  auto batch = (*dataset)->ReadBatch(0, 2);
  ASSERT_TRUE(batch.ok());
  // Element (n=1, c=2, h=0, w=1) sits at NHWC offset ((1*4+0)*4+1)*3+2.
  EXPECT_EQ(batch->images[1][2][0][1].item<float>(), static_cast<float>(((1 * 4 + 0) * 4 + 1) * 3 + 2));
  EXPECT_EQ(batch->labels[0].item<int64_t>(), 1);

  std::vector<float> nchw(1 * 3 * 2 * 2);
  for (size_t i = 0; i < nchw.size(); ++i) nchw[i] = 0.5f * static_cast<float>(i);
  testing::WriteNpy(dir + "/nchw.npy", "<f4", {1, 3, 2, 2}, nchw.data(), nchw.size() * 4);
  spec.path = dir + "/nchw.npy";
  spec.labels_path.clear();
  spec.preprocessing.mean = {1.0, 1.0, 1.0};
  spec.preprocessing.std = {2.0, 2.0, 2.0};
  auto floats = OpenDataset(spec);
  ASSERT_TRUE(floats.ok()) << floats.status();
  EXPECT_FALSE((*floats)->has_labels());
  EXPECT_FLOAT_EQ((*floats)->ReadBatch(0, 1)->images[0][1][1][0].item<float>(), (0.5f * 6 - 1.0f) / 2.0f);
}

// NaN or infinity in float images would become NaN quantization scales that
// nothing reports: the batch holding one is an error naming the image.
TEST(NpyDatasetTest, ANonFiniteValueIsAnErrorNamingTheImage) {
  const std::string dir = testing::MakeTempDir("npy_nan");
  std::vector<float> images(3 * 3 * 2 * 2, 1.0f);
  images[1 * 12 + 5] = std::numeric_limits<float>::quiet_NaN();
  images[2 * 12 + 0] = std::numeric_limits<float>::infinity();
  testing::WriteNpy(dir + "/nan.npy", "<f4", {3, 3, 2, 2}, images.data(), images.size() * 4);
  DatasetSpec spec;
  spec.format = DatasetFormat::kNpy;
  spec.path = dir + "/nan.npy";
  auto dataset = OpenDataset(spec);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_TRUE((*dataset)->ReadBatch(0, 1).ok());
  const absl::Status nan = (*dataset)->ReadBatch(0, 2).status();
  EXPECT_EQ(nan.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(nan.message()).find("nan.npy: image 1 has a NaN value"), std::string::npos) << nan;
  const absl::Status infinite = (*dataset)->ReadBatch(2, 1).status();
  EXPECT_NE(std::string(infinite.message()).find("image 2 has an infinite value"), std::string::npos) << infinite;
}

TEST(NpyDatasetTest, RejectsBadFiles) {
  const std::string dir = testing::MakeTempDir("npy_bad");
  std::ofstream(dir + "/bad.npy") << "not numpy";
  DatasetSpec spec;
  spec.format = DatasetFormat::kNpy;
  spec.path = dir + "/bad.npy";
  EXPECT_EQ(OpenDataset(spec).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<int32_t> ints(4);
  testing::WriteNpy(dir + "/ints.npy", "<i4", {1, 1, 2, 2}, ints.data(), 16);
  spec.path = dir + "/ints.npy";
  auto s = OpenDataset(spec).status();
  EXPECT_NE(s.message().find("<i4"), std::string::npos) << s;
  std::vector<uint8_t> few(10);
  testing::WriteNpy(dir + "/short.npy", "|u1", {2, 3, 4, 4}, few.data(), few.size());
  spec.path = dir + "/short.npy";
  EXPECT_NE(OpenDataset(spec).status().message().find("truncated"), std::string::npos);
}

// A .npy of two 4x4 uint8 images in `dir`, and the spec that reads it with
// labels from dir/labels.npy (which the caller writes).
DatasetSpec TwoImagesWithLabels(const std::string& dir) {
  std::vector<uint8_t> images(2 * 4 * 4 * 3, 7);
  testing::WriteNpy(dir + "/images.npy", "|u1", {2, 4, 4, 3}, images.data(), images.size());
  DatasetSpec spec;
  spec.format = DatasetFormat::kNpy;
  spec.path = dir + "/images.npy";
  spec.labels_path = dir + "/labels.npy";
  return spec;
}

// Labels of any integer dtype and byte order read as the same classes; a
// float dtype is refused naming what is taken.
TEST(NpyDatasetTest, LabelsOfEveryIntegerDtypeAndByteOrder) {
  const DatasetSpec spec = TwoImagesWithLabels(testing::MakeTempDir("npy_int_labels"));
  const struct {
    const char* descr;
    std::vector<uint8_t> bytes;  // the labels 3 and 258 (or 9 where one byte cannot hold 258)
    int64_t second;
  } cases[] = {
      {"<u2", {3, 0, 2, 1}, 258},
      {">i2", {0, 3, 1, 2}, 258},
      {"<u4", {3, 0, 0, 0, 2, 1, 0, 0}, 258},
      {">u8", {0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 1, 2}, 258},
      {">i8", {0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 1, 2}, 258},
      {"|i1", {3, 9}, 9},
  };
  for (const auto& c : cases) {
    testing::WriteNpy(spec.labels_path, c.descr, {2}, c.bytes.data(), c.bytes.size());
    auto dataset = OpenDataset(spec);
    ASSERT_TRUE(dataset.ok()) << c.descr << ": " << dataset.status();
    EXPECT_EQ((*dataset)->SelectedLabels(2), (std::vector<int64_t>{3, c.second})) << c.descr;
  }
  const std::vector<uint8_t> negative = {0, 3, 0xff, 0xff};  // >i2: 3, -1
  testing::WriteNpy(spec.labels_path, ">i2", {2}, negative.data(), negative.size());
  EXPECT_NE(OpenDataset(spec).status().message().find("negative label at 1"), std::string::npos);
  const std::vector<float> floats = {3, 1};
  testing::WriteNpy(spec.labels_path, "<f4", {2}, floats.data(), floats.size() * 4);
  EXPECT_NE(OpenDataset(spec).status().message().find("dtype <f4 is not supported (an integer dtype"),
            std::string::npos)
      << OpenDataset(spec).status();
}

// A raw header dict, written with a valid .npy prefix and `data` after it.
// Labels of dtype int8: -1 is a negative label, refused, not class 255.
TEST(NpyDatasetTest, SignedByteLabelsKeepTheirSign) {
  const DatasetSpec spec = TwoImagesWithLabels(testing::MakeTempDir("npy_i1_labels"));
  const std::vector<int8_t> fine = {3, 0};
  testing::WriteNpy(spec.labels_path, "|i1", {2}, fine.data(), fine.size());
  auto dataset = OpenDataset(spec);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_EQ((*dataset)->ReadBatch(0, 2)->labels[0].item<int64_t>(), 3);
  const std::vector<int8_t> negative = {3, -1};
  testing::WriteNpy(spec.labels_path, "|i1", {2}, negative.data(), negative.size());
  const absl::Status refused = OpenDataset(spec).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_NE(refused.message().find("negative label at 1"), std::string::npos) << refused;
}

// An evaluation checks its labels before running the models: they are read
// in selection order, without the images, and only as many as asked for.
TEST(NpyDatasetTest, SelectedLabelsFollowTheSelectionWithoutReadingImages) {
  const std::string dir = testing::MakeTempDir("npy_selected_labels");
  std::vector<uint8_t> images(6 * 4 * 4 * 3, 7);
  testing::WriteNpy(dir + "/images.npy", "|u1", {6, 4, 4, 3}, images.data(), images.size());
  DatasetSpec spec;
  spec.format = DatasetFormat::kNpy;
  spec.path = dir + "/images.npy";
  spec.labels_path = dir + "/labels.npy";
  const std::vector<int64_t> labels = {0, 1, 0, 1, 0, 12};
  testing::WriteNpy(spec.labels_path, "<i8", {6}, labels.data(), labels.size() * sizeof(int64_t));
  auto dataset = OpenDataset(spec);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_EQ((*dataset)->SelectedLabels(100), labels);
  EXPECT_EQ((*dataset)->SelectedLabels(2), std::vector<int64_t>({0, 1}));
  EXPECT_TRUE((*dataset)->SelectedLabels(0).empty());
  // A stratified selection: the labels of the samples it picked, in its order.
  spec.samples_per_class = 1;
  auto stratified = OpenDataset(spec);
  ASSERT_TRUE(stratified.ok()) << stratified.status();
  std::vector<int64_t> read;
  for (int64_t i = 0; i < (*stratified)->size(); ++i) {
    read.push_back((*stratified)->ReadBatch(i, 1)->labels[0].item<int64_t>());
  }
  EXPECT_EQ((*stratified)->SelectedLabels(100), read);
  EXPECT_EQ(read.size(), 3u);
  // No labels file: none.
  spec.samples_per_class = 0;
  spec.labels_path.clear();
  EXPECT_TRUE((*OpenDataset(spec))->SelectedLabels(6).empty());
}

void WriteNpyWithHeader(const std::string& path, std::string header, const std::string& data) {
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  out.write(reinterpret_cast<const char*>(&len), 2);
  out << header << data;
}

// Each of these once crashed the server (std::out_of_range on a worker
// thread) or asked for an allocation sized by the header's numbers.
TEST(NpyDatasetTest, MalformedHeadersAreInvalidArgumentNotACrash) {
  const std::string dir = testing::MakeTempDir("npy_malformed");
  DatasetSpec spec;
  spec.format = DatasetFormat::kNpy;
  const std::string pixels(3 * 4 * 4, '\x01');
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{'descr': '|u1', 'fortran_order': False, }", "'shape'"},
      {"{'descr': '|u1', 'fortran_order': False, 'shape' }", "':'"},
      {"{'descr': '|u1', 'fortran_order': False, 'shape': 1, }", "tuple"},
      {"{'descr': '|u1', 'fortran_order': False, 'shape': (1, 3, 4, 4, }", "not closed"},
      {"{'descr': '|u1', 'fortran_order': False, 'shape': (1, -3, 4, 4), }", "-3"},
      {"{'descr': '|u1', 'fortran_order': False, 'shape': (1, x, 4, 4), }", "'x'"},
      {"{'descr': '|u1', 'fortran_order': False, 'shape': (1, 99999999999999999999, 4, 4), }", "99999"},
      {"{'fortran_order': False, 'shape': (1, 3, 4, 4), }", "'descr'"},
      {"{'descr': '|u1, 'fortran_order': False, 'shape': (1, 3, 4, 4), }", "dtype"},
      {"{'descr': |u1, 'fortran_order': False, 'shape': (1, 3, 4, 4), }", "descr"},
      {"{'descr': '|u1', 'shape': (1, 3, 4, 4), }", "fortran_order"},
      {"{'descr': '|u1', 'fortran_order': maybe, 'shape': (1, 3, 4, 4), }", "fortran_order"},
      {"{'descr': '|u1', 'fortran_order': False, 'shape': (1, 0, 4, 4), }", "empty dimension"},
      // Products that overflow int64 or ask for terabytes: refused by division, before any allocation.
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 4611686018427387904, 4), }", "limit"},
      {"{'descr': '|u1', 'fortran_order': False, 'shape': (4611686018427387904, 3, 4, 4), }", "truncated"},
      {"{'descr': '|u1', 'fortran_order': False, 'shape': (1, 3, 4, 4, 1, 1, 1, 1, 1), }", "8 dimensions"},
      {"", "'descr'"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    spec.path = dir + "/case" + std::to_string(i) + ".npy";
    WriteNpyWithHeader(spec.path, cases[i].first, pixels);
    const absl::Status status = OpenDataset(spec).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << cases[i].first << ": " << status;
    EXPECT_NE(status.message().find(cases[i].second), std::string::npos) << cases[i].first << ": " << status;
    EXPECT_NE(status.message().find(spec.path), std::string::npos) << status;  // names the file
  }
  // The same valid header opens (so the cases above fail for their own reason).
  spec.path = dir + "/valid.npy";
  WriteNpyWithHeader(spec.path, "{'descr': '|u1', 'fortran_order': False, 'shape': (1, 3, 4, 4), }", pixels);
  ASSERT_TRUE(OpenDataset(spec).ok()) << OpenDataset(spec).status();
}

TEST(NpyDatasetTest, TruncatedLabelsAndUnsupportedVersion) {
  const std::string dir = testing::MakeTempDir("npy_labels");
  std::vector<uint8_t> images(2 * 3 * 4 * 4);
  testing::WriteNpy(dir + "/images.npy", "|u1", {2, 3, 4, 4}, images.data(), images.size());
  std::vector<int64_t> one_label = {1};
  testing::WriteNpy(dir + "/labels.npy", "<i8", {2}, one_label.data(), 8);  // promises 2 labels, has 1
  DatasetSpec spec;
  spec.format = DatasetFormat::kNpy;
  spec.path = dir + "/images.npy";
  spec.labels_path = dir + "/labels.npy";
  absl::Status status = OpenDataset(spec).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("truncated"), std::string::npos) << status;

  std::ofstream(dir + "/v9.npy", std::ios::binary) << std::string("\x93NUMPY\x09\x00\x10\x00", 10) << "{}";
  spec.path = dir + "/v9.npy";
  spec.labels_path.clear();
  status = OpenDataset(spec).status();
  EXPECT_NE(status.message().find("version 9"), std::string::npos) << status;
}

}  // namespace
}  // namespace quantd::engine
