#ifndef QUANTD_WORKER_ENGINE_PASSES_MEASURE_SQNR_H_
#define QUANTD_WORKER_ENGINE_PASSES_MEASURE_SQNR_H_

// Per-layer SQNR: each int8 op's output against the same value in the fused
// FP32 graph, on the same images. Low figures show where accuracy is lost.

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "worker/engine/ir/graph.h"
#include "worker/engine/passes/insert_observers.h"
#include "worker/engine/runtime/int8_program.h"

namespace quantd::engine {

// SQNR in dB (10 log10 of signal energy over error energy) by layer name.
absl::StatusOr<std::map<std::string, double>> MeasureSqnr(const Graph& fused, const QuantizationPlan& plan,
                                                          const Int8Executor& int8, const at::Tensor& images);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_PASSES_MEASURE_SQNR_H_
