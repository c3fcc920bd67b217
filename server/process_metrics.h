#ifndef QUANTD_SERVER_PROCESS_METRICS_H_
#define QUANTD_SERVER_PROCESS_METRICS_H_

// The process metrics every Prometheus client library's process collector
// exports (prometheus-cpp has none): process_cpu_seconds_total,
// process_resident_memory_bytes, process_virtual_memory_bytes,
// process_open_fds, process_max_fds, process_start_time_seconds. Read from
// /proc/self when scraped, so dashboards and alerts written for any other
// service work on quantd, and a benchmark can tell what CPU each request
// costs the server.

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace quantd {

// What the collector needs from one line of /proc/<pid>/stat.
struct ProcStat {
  uint64_t utime_ticks = 0;
  uint64_t stime_ticks = 0;
  uint64_t start_ticks = 0;  // since boot
  uint64_t virtual_bytes = 0;
  uint64_t resident_pages = 0;
};

// Parses /proc/<pid>/stat; nullopt when the line is not one. The command
// name (field 2) may hold spaces and parentheses: fields are counted from
// its last ')'.
std::optional<ProcStat> ParseProcStat(absl::string_view line);

// The boot time (seconds since the epoch) from /proc/stat's "btime" line.
std::optional<int64_t> ParseBootTime(absl::string_view proc_stat);

class ProcessMetrics : public prometheus::Collectable {
 public:
  // Families whose source cannot be read are left out, not reported as 0.
  std::vector<prometheus::MetricFamily> Collect() const override;
};

}  // namespace quantd

#endif  // QUANTD_SERVER_PROCESS_METRICS_H_
