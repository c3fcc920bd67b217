#ifndef QUANTD_WORKER_ENGINE_TESTING_RUN_FP32_H_
#define QUANTD_WORKER_ENGINE_TESTING_RUN_FP32_H_

// For pass tests: a graph's first output in FP32, before and after a pass.

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "worker/engine/ir/graph.h"
#include "worker/engine/runtime/fp32_executor.h"

namespace quantd::engine::testing {

inline at::Tensor RunFp32(const Graph& graph, const at::Tensor& x) {
  auto executor = Fp32Executor::Create(&graph);
  EXPECT_TRUE(executor.ok()) << executor.status();
  if (!executor.ok()) return at::Tensor();
  at::NoGradGuard no_grad;
  auto out = executor->Run({x});
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? (*out)[0].toTensor() : at::Tensor();
}

}  // namespace quantd::engine::testing

#endif  // QUANTD_WORKER_ENGINE_TESTING_RUN_FP32_H_
