#include "worker/engine/testing/test_env.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"

namespace quantd::engine::testing {
namespace {

// QUANTD_EMULATE_CPU=avx2 (CTest's "avx2" label sets it): before any kernel
// runs, cap oneDNN (DNNL_MAX_CPU_ISA, which also caps quantd's own kernels)
// and ATen (ATEN_CPU_CAPABILITY) at AVX2, for this process and the Python
// ones it starts, so an AVX-512 machine runs what an AVX2-only CPU runs,
// int16 saturation included. A static initializer: LibTorch and oneDNN read
// these variables on first use.
const bool kEmulatedCpu = [] {
  const char* emulate = std::getenv("QUANTD_EMULATE_CPU");
  if (emulate == nullptr || std::string(emulate) != "avx2") return false;
  setenv("DNNL_MAX_CPU_ISA", "AVX2", /*overwrite=*/0);
  setenv("ATEN_CPU_CAPABILITY", "avx2", /*overwrite=*/0);
  return true;
}();

// LibTorch seeds its default generator nondeterministically in each process,
// so a test that drew random weights without seeding drew other ones in every
// run: one passed or failed by its draw (1 run in 20). Every test of a binary
// that links this starts from the same seed, whatever ran before it.
class SeedEachTest final : public ::testing::EmptyTestEventListener {
  void OnTestStart(const ::testing::TestInfo&) override {
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_current_seed(kTestSeed);
  }
  static constexpr uint64_t kTestSeed = 20261203;
};

const bool kSeedsEachTest = [] {
  ::testing::UnitTest::GetInstance()->listeners().Append(new SeedEachTest);  // gtest owns it
  return true;
}();

}  // namespace

bool EmulatedCpu() { return kEmulatedCpu; }

std::string FixturesDir() {
  if (const char* env = std::getenv("QUANTD_FIXTURES")) return env;
  return QUANTD_TEST_FIXTURES_DIR;
}

std::string SourceDir() { return QUANTD_TEST_SOURCE_DIR; }
std::string ResNet8Path() { return FixturesDir() + "/models/resnet8_fp32.torchscript.pt"; }
std::string CalibrationPath() { return FixturesDir() + "/cifar10/calib_batch.bin"; }
std::string TestSetPath() { return FixturesDir() + "/cifar10/test_batch.bin"; }
std::string ValidationPath() { return FixturesDir() + "/cifar10/val_batch.bin"; }
std::string Python() { return "/usr/bin/python3"; }

namespace {

// The directories MakeTempDir made in this process, removed when it exits
// (test suites share them across tests; they were left in /tmp).
std::mutex temp_dirs_mu;
std::vector<std::filesystem::path>* temp_dirs = nullptr;

void RemoveTempDirs() {
  std::lock_guard<std::mutex> lock(temp_dirs_mu);
  for (const std::filesystem::path& dir : *temp_dirs) {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
}

}  // namespace

std::string MakeTempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  std::filesystem::path dir = std::filesystem::path(base ? base : std::filesystem::temp_directory_path().string()) /
                              absl::StrCat("quantd_", name, "_", ::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::lock_guard<std::mutex> lock(temp_dirs_mu);
  if (temp_dirs == nullptr) {
    temp_dirs = new std::vector<std::filesystem::path>();
    std::atexit(RemoveTempDirs);
  }
  temp_dirs->push_back(dir);
  return dir.string();
}

void WriteNpy(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape, const void* data,
              size_t bytes) {
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ", ";
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  out.write(reinterpret_cast<const char*>(&len), 2);
  out << header;
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}

absl::StatusOr<std::string> RunCommand(const std::string& command) {
  const std::string err_file = MakeTempDir("cmd_stderr") + "/stderr.txt";
  FILE* pipe = ::popen(absl::StrCat(command, " 2>", err_file).c_str(), "r");
  if (pipe == nullptr) return absl::InternalError(absl::StrCat("cannot run: ", command));
  std::string out;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  const int status = ::pclose(pipe);
  if (status != 0) {
    std::ifstream err(err_file);
    std::stringstream text;
    text << err.rdbuf();
    std::string tail = text.str();
    if (tail.size() > 2000) tail = tail.substr(tail.size() - 2000);
    return absl::InternalError(absl::StrCat("command failed (status ", status, "): ", command, "\n", tail));
  }
  return out;
}

std::vector<std::vector<std::string>> ResNet8FusionGroups() {
  return {{"conv1", "bn1", "relu1"},
          {"layer1.conv1", "layer1.bn1", "layer1.relu1"}, {"layer1.conv2", "layer1.bn2"},
          {"layer2.conv1", "layer2.bn1", "layer2.relu1"}, {"layer2.conv2", "layer2.bn2"},
          {"layer3.conv1", "layer3.bn1", "layer3.relu1"}, {"layer3.conv2", "layer3.bn2"}};
}

}  // namespace quantd::engine::testing
