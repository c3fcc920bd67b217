#ifndef QUANTD_WORKER_ENGINE_PASSES_CONVERT_H_
#define QUANTD_WORKER_ENGINE_PASSES_CONVERT_H_

// Convert: quantize weights with the qconfig's weight observer, prepack them
// for the kernel engine (one pack per call site), and lay out the int8
// program with quantize/dequantize at the int8/FP32 boundaries. Each int8 op
// and input quantization is reported in `layers` (without SQNR). With
// qconfig.bias_correction, `input_means` (calibration means of the
// BiasCorrectionInputs) correct each int8 conv/linear bias. With
// qconfig.fitted_rounding, weights are rounded against
// `input_second_moments` (InputSecondMoments, by node id) where a node has
// them, and to nearest elsewhere; through `fitted_weights` when given (fits
// reused between conversions from one calibration).

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/ir/graph.h"
#include "worker/engine/observers/observer.h"
#include "worker/engine/passes/insert_observers.h"
#include "worker/engine/passes/weight_rounding.h"
#include "worker/engine/qconfig/qconfig.h"
#include "worker/engine/report.h"
#include "worker/engine/runtime/int8_program.h"

namespace quantd::engine {

absl::StatusOr<Program> Convert(const Graph& graph, const QuantizationPlan& plan,
                                const std::map<int, QParams>& activation_qparams, const QConfig& qconfig,
                                const std::string& kernel_engine, std::vector<LayerReport>* layers,
                                const std::map<int, at::Tensor>& input_means = {},
                                const std::map<int, at::Tensor>& input_second_moments = {},
                                FittedWeights* fitted_weights = nullptr);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_PASSES_CONVERT_H_
