#include <iostream>
#include <string>
#include <vector>

#include "worker/quantize_cli/quantize_cli.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  auto command = quantd::cli::ParseQuantizeArgs(args);
  if (!command.ok()) {
    if (command.status().message() == "help requested") {
      std::cout << quantd::cli::QuantizeUsage();
      return 0;
    }
    std::cerr << "quantd-quantize: " << command.status().message() << "\n\n" << quantd::cli::QuantizeUsage();
    return 2;
  }
  absl::Status status = quantd::cli::RunQuantize(*command, std::cout);
  if (!status.ok()) {
    std::cerr << "quantd-quantize: " << status.message() << "\n";
    return 1;
  }
  return 0;
}
