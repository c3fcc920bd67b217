#ifndef QUANTD_WORKER_ENGINE_PASSES_CONVERT_H_
#define QUANTD_WORKER_ENGINE_PASSES_CONVERT_H_

// Convert: quantize weights with the qconfig's weight observer, prepack them
// for the kernel engine (one pack per call site), and lay out the int8
// program with quantize/dequantize at the int8/FP32 boundaries.

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/ir/graph.h"
#include "worker/engine/observers/observer.h"
#include "worker/engine/passes/insert_observers.h"
#include "worker/engine/qconfig/qconfig.h"
#include "worker/engine/runtime/int8_program.h"

namespace quantd::engine {

struct LayerQParams {
  std::string name;
  std::string op;  // conv2d_relu, linear, add, quantize, ...
  double output_scale = 0;
  int64_t output_zero_point = 0;
  std::vector<float> weight_scales;
  std::vector<int64_t> weight_zero_points;
};

absl::StatusOr<Program> Convert(const Graph& graph, const QuantizationPlan& plan,
                                const std::map<int, QParams>& activation_qparams, const QConfig& qconfig,
                                const std::string& kernel_engine, std::vector<LayerQParams>* layers);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_PASSES_CONVERT_H_
