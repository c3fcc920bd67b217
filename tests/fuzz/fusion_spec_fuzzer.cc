// A fusion spec (the JSON quantd-quantize --fusion takes; the same groups a
// job request carries) applied to the real ResNet8 graph: any groups, valid
// or not, give a status, never a crash.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "tests/fuzz/fuzz_file.h"
#include "worker/engine/ir/import_torchscript.h"
#include "worker/engine/passes/fuse_modules.h"
#include "worker/quantize_cli/quantize_cli.h"

namespace {
std::string ModelPath() {
  const char* fixtures = std::getenv("QUANTD_FIXTURES_DIR");
  return std::string(fixtures != nullptr ? fixtures : FIXTURES_DIR) + "/models/resnet8_fp32.torchscript.pt";
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Imported once; each run fuses a fresh copy of the graph's structure.
  static const quantd::engine::Graph* resnet8 = [] {
    auto graph = quantd::engine::ImportTorchScriptFile(ModelPath());
    if (!graph.ok()) std::abort();  // the harness needs the fixture
    return new quantd::engine::Graph(std::move(*graph));
  }();
  const std::string& path = quantd::fuzz::WriteScratch("fusion.json", data, size);
  auto spec = quantd::cli::ParseFusionSpec(path);
  if (!spec.ok()) return 0;
  quantd::engine::Graph graph = *resnet8;
  (void)quantd::engine::FuseModules(&graph, *spec);
  return 0;
}
