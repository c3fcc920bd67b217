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
