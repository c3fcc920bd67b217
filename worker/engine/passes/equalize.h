#ifndef QUANTD_WORKER_ENGINE_PASSES_EQUALIZE_H_
#define QUANTD_WORKER_ENGINE_PASSES_EQUALIZE_H_

// Cross-layer equalization (Nagel et al., "Data-Free Quantization Through
// Weight Equalization and Bias Correction", 2019). For a convolution A whose
// output (after an optional fused ReLU) is read only by convolution B, output
// channel c of A may be divided by any s_c > 0 if B's input channel c is
// multiplied by s_c: ReLU(x / s) = ReLU(x) / s, so the FP32 function stays the
// same. The freedom is spent on what int8 rounds coarsely:
//
// - Per-tensor weights (qnnpack): A's and B's per-channel weight ranges are
//   made equal (s_c = sqrt(rA_c / rB_c)), so one scale fits all channels.
//   Chains (A -> B -> C) are swept until the scales settle.
// - Per-channel weights: A's rows are rounded on their own scales whatever s
//   is, but the value between A and B is rounded on one scale for all its
//   channels. Its per-channel ranges a_c are balanced against B's input
//   columns w_c instead (s_c = sqrt(a_c / w_c), as SmoothQuant balances
//   activations against weights), so no channel is rounded far coarser than
//   its signal.
//
// A ReLU6 (or any clamp with an upper bound) between A and B does not commute
// with scaling: such pairs are left alone.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/engine/ir/graph.h"

namespace quantd::engine {

class Dataset;

struct EqualizablePair {
  int first = -1;   // node id of A
  int second = -1;  // node id of B
  int value = -1;   // A's output, B's input
};

// Every (A, B) pair that can be rescaled without changing the FP32 function,
// in graph order.
std::vector<EqualizablePair> FindEqualizablePairs(const Graph& graph);

// The largest |value| of each channel (dim 1) of every value in `values`,
// over the first `max_samples` images of `dataset`, in FP32.
absl::StatusOr<std::map<int, at::Tensor>> MeasureChannelRanges(const Graph& graph, const std::vector<int>& values,
                                                               Dataset* dataset, int64_t max_samples,
                                                               int64_t batch_size);

struct EqualizedPair {
  std::string first, second;
  double min_scale = 1, max_scale = 1;  // the s_c applied, after normalization
};

// Per-tensor weights: equalizes the pairs' weight ranges.
absl::StatusOr<std::vector<EqualizedPair>> EqualizeWeightRanges(Graph* graph,
                                                                const std::vector<EqualizablePair>& pairs);

// Per-channel weights: balances each pair's channel ranges a_c (from
// MeasureChannelRanges, keyed by the pair's value) against B's input columns
// w_c: s_c = a_c^alpha / w_c^(1 - alpha), so alpha = 1/2 meets in the middle,
// and larger alphas move more of the spread into B's weights. Pairs without a
// measured range are left alone.
absl::StatusOr<std::vector<EqualizedPair>> EqualizeActivationRanges(Graph* graph,
                                                                    const std::vector<EqualizablePair>& pairs,
                                                                    const std::map<int, at::Tensor>& channel_ranges,
                                                                    double alpha = 0.5);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_PASSES_EQUALIZE_H_
