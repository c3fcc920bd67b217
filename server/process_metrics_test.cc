#include "server/process_metrics.h"

#include <time.h>
#include <unistd.h>

#include <map>
#include <string>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace quantd {
namespace {

TEST(ParseProcStatTest, ReadsTheFieldsAfterACommandNameWithSpacesAndParentheses) {
  // A real line's shape (proc(5)): pid (comm) state ppid ... utime=14 stime=15 ... starttime=22 vsize=23 rss=24 ...
  const std::string line =
      "4242 (quantd (worker) 1) S 1 4242 4242 0 -1 4194560 9000 0 12 0 "
      "1234 567 0 0 20 0 37 0 98765 2147483648 51200 18446744073709551615 1 1 0 0 0 0 0 4096 17664 0 0 0 17 1 0 0 "
      "0 0 0\n";
  const std::optional<ProcStat> stat = ParseProcStat(line);
  ASSERT_TRUE(stat.has_value());
  EXPECT_EQ(stat->utime_ticks, 1234u);
  EXPECT_EQ(stat->stime_ticks, 567u);
  EXPECT_EQ(stat->start_ticks, 98765u);
  EXPECT_EQ(stat->virtual_bytes, 2147483648u);
  EXPECT_EQ(stat->resident_pages, 51200u);
}

TEST(ParseProcStatTest, RejectsWhatIsNotAStatLine) {
  EXPECT_FALSE(ParseProcStat("").has_value());
  EXPECT_FALSE(ParseProcStat("4242 quantd S 1 2 3").has_value());
  EXPECT_FALSE(ParseProcStat("4242 (quantd) S 1 4242").has_value());  // cut short
  EXPECT_FALSE(ParseProcStat("4242 (quantd) S 1 4242 4242 0 -1 4194560 9000 0 12 0 x 567 0 0 20 0 37 0 98765 1 2 3")
                   .has_value());
}

TEST(ParseBootTimeTest, FindsTheBtimeLine) {
  EXPECT_EQ(ParseBootTime("cpu  1 2 3\nintr 5\nbtime 1764547200\nprocesses 9\n"), 1764547200);
  EXPECT_FALSE(ParseBootTime("cpu  1 2 3\n").has_value());
}

std::map<std::string, double> Collected() {
  std::map<std::string, double> values;
  for (const prometheus::MetricFamily& family : ProcessMetrics().Collect()) {
    EXPECT_EQ(family.metric.size(), 1u) << family.name;
    if (family.metric.empty()) continue;
    values[family.name] =
        family.type == prometheus::MetricType::Counter ? family.metric[0].counter.value : family.metric[0].gauge.value;
  }
  return values;
}

TEST(ProcessMetricsTest, DescribesThisProcess) {
  // Burn some CPU so that the counter must move.
  std::map<std::string, double> before = Collected();
  const absl::Time start = absl::Now();
  // By this process's own CPU time, not the wall's: on a loaded machine the
  // thread may get a fraction of a core.
  auto cpu_seconds = [] {
    timespec t{};
    ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
  };
  const double cpu_start = cpu_seconds();
  volatile uint64_t sink = 0;
  while (cpu_seconds() - cpu_start < 0.2 && absl::Now() - start < absl::Seconds(30)) {
    for (int i = 0; i < 100000; ++i) sink = sink + static_cast<uint64_t>(i);
  }
  std::map<std::string, double> after = Collected();
  for (const char* name : {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
                           "process_start_time_seconds", "process_open_fds", "process_max_fds"}) {
    ASSERT_TRUE(after.count(name)) << name;
  }
  EXPECT_GE(after["process_cpu_seconds_total"] - before["process_cpu_seconds_total"], 0.15);
  EXPECT_GT(after["process_resident_memory_bytes"], 1 << 20);
  EXPECT_GE(after["process_virtual_memory_bytes"], after["process_resident_memory_bytes"]);
  // Started before this test did, and not before 2020.
  EXPECT_LE(after["process_start_time_seconds"], absl::ToUnixSeconds(start) + 1);
  EXPECT_GT(after["process_start_time_seconds"], 1.5e9);
  // stdin/out/err and the directory being read, at least; a new one shows.
  EXPECT_GE(after["process_open_fds"], 3);
  const int fd = dup(1);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(Collected()["process_open_fds"], after["process_open_fds"] + 1);
  close(fd);
  EXPECT_GE(after["process_max_fds"], after["process_open_fds"]);
}

}  // namespace
}  // namespace quantd
