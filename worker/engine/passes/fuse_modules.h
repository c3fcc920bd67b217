#ifndef QUANTD_WORKER_ENGINE_PASSES_FUSE_MODULES_H_
#define QUANTD_WORKER_ENGINE_PASSES_FUSE_MODULES_H_

// Fusion with torch.ao.quantization.fuse_modules semantics: Conv+BN(+ReLU)
// folds the batch norm into the conv's weights, a trailing ReLU becomes part
// of the op (conv2d_relu, linear_relu, add_relu). Groups are validated
// against the real dataflow before anything changes.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/ir/graph.h"
#include "worker/engine/passes/fusion_spec.h"

namespace quantd::engine {

// Returns the fused groups as node names, in graph order.
absl::StatusOr<std::vector<std::vector<std::string>>> FuseModules(Graph* graph, const FusionSpec& spec);

// The groups `auto` would fuse, without changing the graph.
std::vector<std::vector<int>> FindFusableGroups(const Graph& graph);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_PASSES_FUSE_MODULES_H_
