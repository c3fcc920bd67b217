#include "server/cpu_budget.h"

#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace quantd {
namespace {

std::optional<std::string> ReadSmallFile(const char* path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

int AffinityCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

std::optional<int> QuotaCpus() {
  if (std::optional<std::string> cpu_max = ReadSmallFile("/sys/fs/cgroup/cpu.max")) {
    return CpusFromCgroupV2CpuMax(*cpu_max);
  }
  std::optional<std::string> quota = ReadSmallFile("/sys/fs/cgroup/cpu/cpu.cfs_quota_us");
  std::optional<std::string> period = ReadSmallFile("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
  if (!quota || !period) return std::nullopt;
  return CpusFromQuota(*quota, *period);
}

}  // namespace

std::optional<int> CpusFromQuota(absl::string_view quota_us, absl::string_view period_us) {
  quota_us = absl::StripAsciiWhitespace(quota_us);
  int64_t quota = 0;
  int64_t period = 0;
  if (quota_us == "max" || !absl::SimpleAtoi(quota_us, &quota) || quota <= 0) return std::nullopt;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(period_us), &period) || period <= 0) return std::nullopt;
  const int64_t cpus = (quota + period - 1) / period;
  return static_cast<int>(std::min<int64_t>(cpus, 1 << 16));
}

std::optional<int> CpusFromCgroupV2CpuMax(absl::string_view cpu_max) {
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::StripAsciiWhitespace(cpu_max), ' ', absl::SkipEmpty());
  if (fields.size() != 2) return std::nullopt;
  return CpusFromQuota(fields[0], fields[1]);
}

int UsableCpus() {
  const int affinity = AffinityCpus();
  const std::optional<int> quota = QuotaCpus();
  return quota ? std::max(1, std::min(affinity, *quota)) : affinity;
}

int DefaultInferenceThreads(int usable_cpus) { return std::max(1, usable_cpus - 1); }

}  // namespace quantd
