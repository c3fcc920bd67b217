#ifndef QUANTD_WORKER_ENGINE_IR_IMPORT_TORCHSCRIPT_H_
#define QUANTD_WORKER_ENGINE_IR_IMPORT_TORCHSCRIPT_H_

#include <string>

#include "absl/status/statusor.h"
#include "worker/engine/ir/graph.h"

namespace quantd::engine {

// Loads a TorchScript file (eval mode) and builds the IR of its forward.
absl::StatusOr<Graph> ImportTorchScriptFile(const std::string& path);

// Builds the IR by symbolically executing forward: submodule calls and
// functions are entered (so every op keeps its module path), module
// attributes become named constants, branches on constants are resolved and
// ops on constants folded. Branches that only raise (input checks) are elided.
absl::StatusOr<Graph> ImportTorchScript(torch::jit::Module module);

// "__torch__.torch.nn.modules.conv.___torch_mangle_3.Conv2d" ->
// "torch.nn.modules.conv.Conv2d".
std::string UnmangledTypeName(const c10::ClassTypePtr& type);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_IR_IMPORT_TORCHSCRIPT_H_
