#include "worker/engine/base/torch_status.h"

#include <cstdlib>
#include <stdexcept>

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

}  // namespace
}  // namespace quantd::engine
