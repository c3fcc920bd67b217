// The TorchScript importer's front door: arbitrary bytes as a model file.
// LibTorch's loader throws on most of them; the importer must turn every
// failure into a status. Some crash inside the loader itself: quantd loads a
// job's model in a child process first for those (worker/model_vetter.h), and
// run_fuzzer.sh lets them pass only when no frame of ours is further in.

#include <cstddef>
#include <cstdint>

#include "tests/fuzz/fuzz_file.h"
#include "worker/engine/ir/import_torchscript.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = quantd::fuzz::WriteScratch("model.pt", data, size);
  (void)quantd::engine::ImportTorchScriptFile(path);
  return 0;
}
