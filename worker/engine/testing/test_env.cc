#include "worker/engine/testing/test_env.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace quantd::engine::testing {

std::string FixturesDir() {
  if (const char* env = std::getenv("QUANTD_FIXTURES")) return env;
  return QUANTD_TEST_FIXTURES_DIR;
}

std::string SourceDir() { return QUANTD_TEST_SOURCE_DIR; }
std::string ResNet8Path() { return FixturesDir() + "/models/resnet8_fp32.torchscript.pt"; }
std::string CalibrationPath() { return FixturesDir() + "/cifar10/calib_batch.bin"; }
std::string TestSetPath() { return FixturesDir() + "/cifar10/test_batch.bin"; }
std::string Python() { return "/usr/bin/python3"; }

std::string MakeTempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  std::filesystem::path dir = std::filesystem::path(base ? base : std::filesystem::temp_directory_path().string()) /
                              absl::StrCat("quantd_", name, "_", ::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
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
