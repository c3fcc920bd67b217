#ifndef QUANTD_WORKER_ENGINE_PASSES_FOLD_POOLING_H_
#define QUANTD_WORKER_ENGINE_PASSES_FOLD_POOLING_H_

// Folds a classifier head's global average pooling into the linear layer
// after it: avg_pool (over the whole feature map) -> flatten -> linear becomes
// one convolution whose kernel covers the map, with the linear weights
// divided by its area at every position, then flatten. In FP32 the two
// compute the same thing. In int8 they do not: LibTorch's quantized average
// pooling keeps its input's scale, so the pooled features (a few units wide)
// are rounded on the grid of the feature map (several times wider); on
// ResNet8 that one rounding moved ~1% of the top-1 predictions. The folded
// convolution sums the int8 map in int32 and rounds only its own output.
// Per-channel weight quantization rounds W / area exactly as it rounds W.
//
// The kernel size comes from the sample shape: the folded model computes the
// same as the original for inputs of that size.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/ir/graph.h"

namespace quantd::engine {

// Folds every such head; returns each folded group's node names (pooling,
// flatten, linear), in graph order. `sample_shape` is one input sample's
// shape without the batch dimension, e.g. {3, 32, 32}.
absl::StatusOr<std::vector<std::vector<std::string>>> FoldGlobalPoolingIntoLinear(
    Graph* graph, const std::vector<int64_t>& sample_shape);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_PASSES_FOLD_POOLING_H_
