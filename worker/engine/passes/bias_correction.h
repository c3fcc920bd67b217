#ifndef QUANTD_WORKER_ENGINE_PASSES_BIAS_CORRECTION_H_
#define QUANTD_WORKER_ENGINE_PASSES_BIAS_CORRECTION_H_

// Bias correction (Nagel et al., "Data-Free Quantization Through Weight
// Equalization and Bias Correction", 2019, in its empirical form): rounding a
// layer's weights to int8 (W_q) shifts its expected output by E[layer(x; W -
// W_q)] over the data; adding that shift to the bias removes the systematic
// part of the error, which later layers would otherwise amplify. On ResNet8
// the first convolution sees raw pixels (mean ~120): its rounding alone moves
// 1.5% of the top-1 predictions, and this correction takes most of that back.
//
// Convolution and linear layers are linear in their input, so the expectation
// is the layer with weights W - W_q applied to the mean input image over the
// calibration set (zero padding included), averaged over output positions:
// one small convolution per layer, from means that calibration keeps.

#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/ir/graph.h"

namespace quantd::engine {

// The values whose calibration means bias correction reads: the inputs of
// every conv2d and linear node.
std::vector<int> BiasCorrectionInputs(const Graph& graph);

// The corrected bias (float, [out_channels]) of a conv2d or linear `node`
// whose weight is quantized as `quantized_weight`, given the mean of its
// input over the calibration images (one image's shape: [C, H, W] or [F]).
absl::StatusOr<at::Tensor> CorrectedBias(const Node& node, const at::Tensor& quantized_weight,
                                         const at::Tensor& mean_input);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_PASSES_BIAS_CORRECTION_H_
