#include "server/cpu_budget.h"

#include <gtest/gtest.h>

namespace quantd {
namespace {

TEST(CpuBudgetTest, QuotaRoundsUpToWholeCpus) {
  EXPECT_EQ(CpusFromQuota("200000", "100000"), 2);
  EXPECT_EQ(CpusFromQuota("150000\n", "100000\n"), 2);
  EXPECT_EQ(CpusFromQuota("50000", "100000"), 1);
}

TEST(CpuBudgetTest, NoQuotaOrBadValuesMeanNoLimit) {
  EXPECT_EQ(CpusFromQuota("-1", "100000"), std::nullopt);  // cgroup v1's "no limit"
  EXPECT_EQ(CpusFromQuota("max", "100000"), std::nullopt);
  EXPECT_EQ(CpusFromQuota("abc", "100000"), std::nullopt);
  EXPECT_EQ(CpusFromQuota("100000", "0"), std::nullopt);
}

TEST(CpuBudgetTest, ParsesCgroupV2CpuMax) {
  EXPECT_EQ(CpusFromCgroupV2CpuMax("max 100000\n"), std::nullopt);
  EXPECT_EQ(CpusFromCgroupV2CpuMax("400000 100000\n"), 4);
  EXPECT_EQ(CpusFromCgroupV2CpuMax("250000 100000"), 3);
  EXPECT_EQ(CpusFromCgroupV2CpuMax("400000"), std::nullopt);
  EXPECT_EQ(CpusFromCgroupV2CpuMax(""), std::nullopt);
}

TEST(CpuBudgetTest, UsableCpusIsPositiveAndWithinTheMachine) {
  const int cpus = UsableCpus();
  EXPECT_GE(cpus, 1);
  EXPECT_LE(cpus, static_cast<int>(sysconf(_SC_NPROCESSORS_CONF)));
}

TEST(CpuBudgetTest, DefaultInferenceThreadsLeavesACpuForGrpc) {
  EXPECT_EQ(DefaultInferenceThreads(1), 1);
  EXPECT_EQ(DefaultInferenceThreads(2), 1);
  EXPECT_EQ(DefaultInferenceThreads(16), 15);
}

}  // namespace
}  // namespace quantd
