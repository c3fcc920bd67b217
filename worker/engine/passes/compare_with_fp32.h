#ifndef QUANTD_WORKER_ENGINE_PASSES_COMPARE_WITH_FP32_H_
#define QUANTD_WORKER_ENGINE_PASSES_COMPARE_WITH_FP32_H_

// How far the int8 model is from the FP32 one on the first calibration
// images: per-layer SQNR (each int8 op's output against the same value in the
// fused FP32 graph; low figures show where accuracy is lost), and at the
// model's outputs SQNR and top-1 agreement, which the quality gate judges so
// that a broken int8 model never passes as a success.

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/ir/graph.h"
#include "worker/engine/passes/insert_observers.h"
#include "worker/engine/report.h"
#include "worker/engine/runtime/int8_program.h"

namespace quantd::engine {

// The values per-layer SQNR compares: outputs of ops that run in int8.
std::vector<int> SqnrValues(const Graph& fused, const QuantizationPlan& plan);
// The model's output values (constants excluded), in output order.
std::vector<int> OutputValues(const Graph& fused);

struct Int8VsFp32 {
  std::map<std::string, double> layer_sqnr_db;  // by layer name
  int64_t samples = 0;                          // images compared at the outputs
  std::optional<double> top1_agreement;         // classifier outputs ([N, C], C > 1)
  std::optional<double> output_sqnr_db;         // the worst tensor output
};

// SQNR in dB: 10 log10 of signal energy over error energy; +inf for no error,
// -inf when either is NaN (a NaN output ranks below every model).
double SqnrDb(double signal, double noise);

// The class each row of classifier scores ([N, C], float or quantized)
// predicts, as PredictedClass ranks them (predicted_class.h): int64 [N],
// kNoClass for a row of NaN.
at::Tensor PredictedClasses(const at::Tensor& scores);
// How many rows of two PredictedClasses agree (the same class, and a class).
int64_t CountAgreeing(const at::Tensor& a, const at::Tensor& b);

// Runs `images`
// through the int8 program; each int8 op's output is compared with
// `layer_references` (FP32 values by value id, for the first images: as many
// rows as kept) and the program's outputs with `fp32_outputs` (one per
// program output, for all `images`; undefined ones are skipped).
absl::StatusOr<Int8VsFp32> CompareWithFp32(const Int8Executor& int8, const at::Tensor& images,
                                           const std::map<int, at::Tensor>& layer_references,
                                           const std::vector<at::Tensor>& fp32_outputs);

struct QualityThresholds {
  double min_top1_agreement = 0.8;
  double min_output_sqnr_db = 10.0;
};

// Passes unless top-1 agreement or output SQNR is below its threshold; the
// message then gives the figures and names the layers with the lowest SQNR.
QualityReport JudgeQuality(const Int8VsFp32& comparison, const QualityThresholds& thresholds);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_PASSES_COMPARE_WITH_FP32_H_
