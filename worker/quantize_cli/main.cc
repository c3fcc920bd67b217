#include <iostream>
#include <string>
#include <vector>

#include "worker/engine/base/crash_report.h"
#include "worker/quantize_cli/quantize_cli.h"

int main(int argc, char** argv) {
  quantd::engine::InstallCrashReport(argv[0]);
  std::vector<std::string> args(argv + 1, argv + argc);
  // -h and --version as quantd and quantctl answer them.
  for (std::string& arg : args) {
    if (arg == "-h") arg = "--help";
  }
  for (const std::string& arg : args) {
    if (arg == "--version") {  // anywhere, as quantd and quantctl take it
      std::cout << "quantd-quantize " << QUANTD_VERSION << "\n";
      return 0;
    }
  }
  auto command = quantd::cli::ParseQuantizeArgs(args);
  if (!command.ok()) {
    if (command.status().message() == "help requested") {
      std::cout << quantd::cli::QuantizeUsage();
      return 0;
    }
    // One line naming the flag, as quantd's and quantctl's; bare
    // `quantd-quantize` gets the whole usage.
    if (args.empty()) {
      std::cerr << quantd::cli::QuantizeUsage();
    } else {
      std::cerr << "quantd-quantize: " << command.status().message() << " (quantd-quantize --help lists the flags)\n";
    }
    return 2;
  }
  absl::Status status = quantd::cli::RunQuantize(*command, std::cout);
  if (!status.ok()) {
    std::cerr << "quantd-quantize: " << status.message() << "\n";
    return 1;
  }
  return 0;
}
