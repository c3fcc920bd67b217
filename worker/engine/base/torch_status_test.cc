#include "worker/engine/base/torch_status.h"

#include <cstdlib>
#include <stdexcept>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace quantd::engine {
namespace {

// Stands for torch::jit::ErrorReport, whose what() can throw inside noexcept
// in LibTorch 1.13: calling it here would end the test binary.
struct ErrorReport : std::exception {
  const char* what() const noexcept override { std::abort(); }
};

TEST(TorchStatusTest, ACompileErrorBecomesAStatusWithoutRenderingItsMessage) {
  const absl::Status tried = TorchTry("loading m", []() -> absl::Status { throw ErrorReport(); });
  EXPECT_EQ(tried.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(tried.message(), "loading m: TorchScript code that does not compile in this LibTorch");
  const absl::Status guarded = GuardEntryPoint("running m", []() -> absl::Status { throw ErrorReport(); });
  EXPECT_EQ(guarded.message(), "running m: TorchScript code that does not compile in this LibTorch");
}

TEST(TorchStatusTest, OtherExceptionsKeepTheFirstLineOfTheirMessage) {
  const absl::Status tried =
      TorchTry("reading x", []() -> absl::Status { throw std::out_of_range("\nbasic_string::substr\nbacktrace"); });
  EXPECT_EQ(tried.message(), "reading x: basic_string::substr");
  const absl::Status guarded = GuardEntryPoint("x", []() -> absl::Status { throw std::bad_alloc(); });
  EXPECT_EQ(guarded.code(), absl::StatusCode::kResourceExhausted);
}

// A TorchScript module failing as it runs: the cause, not the interpreter's
// header line, which says nothing of it.
TEST(TorchStatusTest, AnInterpreterFailureKeepsItsCause) {
  const std::string message =
      "The following operation failed in the TorchScript interpreter.\n"
      "Traceback of TorchScript (most recent call last):\n"
      "  File \"code/__torch__.py\", line 9, in forward\n"
      "    return torch.conv2d(x, w)\n"
      "           ~~~~~~~~~~~~ <--- HERE\n"
      "RuntimeError: Given groups=1, weight of size [4, 1, 3, 3], expected input[1, 3, 32, 32] to have 1 channels\n";
  const absl::Status tried = TorchTry("one sample", [&]() -> absl::Status { throw std::runtime_error(message); });
  EXPECT_EQ(tried.message(),
            "one sample: RuntimeError: Given groups=1, weight of size [4, 1, 3, 3], expected input[1, 3, 32, 32] to "
            "have 1 channels");
  // Without a cause line, the header is all there is.
  EXPECT_EQ(CauseLine("The following operation failed in the TorchScript interpreter.\nno cause here"),
            "The following operation failed in the TorchScript interpreter.");
}

// LibTorch's CPU allocator throws c10::Error, not std::bad_alloc: a tensor
// too large for the machine is RESOURCE_EXHAUSTED all the same.
TEST(TorchStatusTest, LibTorchsAllocationFailureIsResourceExhausted) {
  const absl::Status tried = TorchTry("a huge batch", []() -> absl::Status {
    at::Tensor t = at::empty({int64_t{1} << 50}, at::kFloat);  // 4 PiB
    return absl::OkStatus();
  });
  EXPECT_EQ(tried.code(), absl::StatusCode::kResourceExhausted) << tried;
  EXPECT_NE(tried.message().find("a huge batch: out of memory"), absl::string_view::npos) << tried;
}

}  // namespace
}  // namespace quantd::engine
