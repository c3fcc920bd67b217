#ifndef QUANTD_WORKER_ENGINE_TESTING_TEST_ENV_H_
#define QUANTD_WORKER_ENGINE_TESTING_TEST_ENV_H_

// Paths and helpers shared by the engine's tests.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace quantd::engine::testing {

// Whether QUANTD_EMULATE_CPU=avx2 capped every kernel at AVX2 (see test_env.cc).
bool EmulatedCpu();

// ../shared/fixtures unless QUANTD_FIXTURES is set.
std::string FixturesDir();
std::string SourceDir();
std::string ResNet8Path();    // models/resnet8_fp32.torchscript.pt
std::string CalibrationPath();  // cifar10/calib_batch.bin
std::string TestSetPath();      // cifar10/test_batch.bin
std::string ValidationPath();   // cifar10/val_batch.bin (2000 training images, not calibration's)
// Debian's python3 with torch 1.13 (the first python3 on PATH may lack it).
std::string Python();
// A fresh empty directory under the test's temp dir.
std::string MakeTempDir(const std::string& name);

// A NumPy .npy file (format 1.0) of `bytes` bytes at `data`, with dtype
// `descr` ("|u1", "<i8", "<f4", ...) and `shape`, C order.
void WriteNpy(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape, const void* data,
              size_t bytes);
// Runs `command` through the shell; returns its stdout, or an error with its
// exit status and stderr tail.
absl::StatusOr<std::string> RunCommand(const std::string& command);

// The fusion groups of PyTorch's eager ResNet8 recipe.
std::vector<std::vector<std::string>> ResNet8FusionGroups();

}  // namespace quantd::engine::testing

#endif  // QUANTD_WORKER_ENGINE_TESTING_TEST_ENV_H_
