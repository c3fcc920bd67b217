#ifndef QUANTD_WORKER_QUANTIZE_CLI_QUANTIZE_CLI_H_
#define QUANTD_WORKER_QUANTIZE_CLI_QUANTIZE_CLI_H_

// quantd-quantize: the engine as an offline command-line tool.

#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/quantizer.h"

namespace quantd::cli {

struct QuantizeCommand {
  engine::QuantizeOptions options;
  std::string output_path;
  std::string report_path;
  int threads = 1;
  bool quiet = false;
};

// Parses `--name=value` / `--name value` arguments (argv[0] excluded).
absl::StatusOr<QuantizeCommand> ParseQuantizeArgs(const std::vector<std::string>& args);

// Reads a fusion spec file: a JSON list of groups ([["conv1","bn1"], ...])
// or {"groups": [...]}, or the word "auto".
absl::StatusOr<engine::FusionSpec> ParseFusionSpec(const std::string& value);

// Runs the command; writes the artifact (and report) atomically; prints a
// summary to `out`.
absl::Status RunQuantize(const QuantizeCommand& command, std::ostream& out);

std::string QuantizeUsage();

}  // namespace quantd::cli

#endif  // QUANTD_WORKER_QUANTIZE_CLI_QUANTIZE_CLI_H_
