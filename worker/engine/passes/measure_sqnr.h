#ifndef QUANTD_WORKER_ENGINE_PASSES_MEASURE_SQNR_H_
#define QUANTD_WORKER_ENGINE_PASSES_MEASURE_SQNR_H_

// Per-layer SQNR: each int8 op's output against the same value in the fused
// FP32 graph, on the same images. Low figures show where accuracy is lost.

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/ir/graph.h"
#include "worker/engine/passes/insert_observers.h"
#include "worker/engine/runtime/int8_program.h"

namespace quantd::engine {

// The values SQNR compares: outputs of ops that run in int8.
std::vector<int> SqnrValues(const Graph& fused, const QuantizationPlan& plan);

// SQNR in dB (10 log10 of signal energy over error energy) by layer name:
// `images` through the int8 program against `references`, those images'
// FP32 values by value id (kept by calibration; a value without one is
// not reported).
absl::StatusOr<std::map<std::string, double>> MeasureSqnr(const Int8Executor& int8, const at::Tensor& images,
                                                          const std::map<int, at::Tensor>& references);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_PASSES_MEASURE_SQNR_H_
