#include "server/process_metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace quantd {
namespace {

std::string ReadFile(const char* path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

prometheus::MetricFamily Family(std::string name, std::string help, prometheus::MetricType type, double value) {
  prometheus::MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = type;
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
  return family;
}

}  // namespace

std::optional<ProcStat> ParseProcStat(absl::string_view line) {
  const size_t close = line.rfind(')');
  if (close == absl::string_view::npos || line.find('(') > close) return std::nullopt;
  // Fields from 3 ("state") on; fields N is at index N - 3.
  const std::vector<absl::string_view> fields =
      absl::StrSplit(absl::StripAsciiWhitespace(line.substr(close + 1)), ' ', absl::SkipEmpty());
  if (fields.size() < 22) return std::nullopt;
  ProcStat stat;
  if (!absl::SimpleAtoi(fields[14 - 3], &stat.utime_ticks) || !absl::SimpleAtoi(fields[15 - 3], &stat.stime_ticks) ||
      !absl::SimpleAtoi(fields[22 - 3], &stat.start_ticks) || !absl::SimpleAtoi(fields[23 - 3], &stat.virtual_bytes) ||
      !absl::SimpleAtoi(fields[24 - 3], &stat.resident_pages)) {
    return std::nullopt;
  }
  return stat;
}

std::optional<int64_t> ParseBootTime(absl::string_view proc_stat) {
  for (absl::string_view line : absl::StrSplit(proc_stat, '\n')) {
    int64_t seconds = 0;
    if (absl::ConsumePrefix(&line, "btime ") && absl::SimpleAtoi(line, &seconds)) return seconds;
  }
  return std::nullopt;
}

std::vector<prometheus::MetricFamily> ProcessMetrics::Collect() const {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> families;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  if (std::optional<ProcStat> stat = ParseProcStat(ReadFile("/proc/self/stat")); stat && ticks > 0) {
    families.push_back(Family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                              MetricType::Counter, static_cast<double>(stat->utime_ticks + stat->stime_ticks) / ticks));
    families.push_back(Family("process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::Gauge,
                              static_cast<double>(stat->resident_pages) * page));
    families.push_back(Family("process_virtual_memory_bytes", "Virtual memory size in bytes.", MetricType::Gauge,
                              static_cast<double>(stat->virtual_bytes)));
    if (std::optional<int64_t> boot = ParseBootTime(ReadFile("/proc/stat")); boot) {
      families.push_back(Family("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                                MetricType::Gauge,
                                static_cast<double>(*boot) + static_cast<double>(stat->start_ticks) / ticks));
    }
  }
  std::error_code error;
  double open = 0;
  for (std::filesystem::directory_iterator it("/proc/self/fd", error), end; !error && it != end; it.increment(error)) {
    ++open;
  }
  if (!error) {
    families.push_back(Family("process_open_fds", "Number of open file descriptors.", MetricType::Gauge, open));
  }
  if (rlimit limit{}; getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    families.push_back(Family("process_max_fds", "Maximum number of open file descriptors.", MetricType::Gauge,
                              static_cast<double>(limit.rlim_cur)));
  }
  return families;
}

}  // namespace quantd
