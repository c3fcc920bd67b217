#include "worker/engine/passes/calibrate.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/runtime/fp32_executor.h"

namespace quantd::engine {

absl::StatusOr<CalibrationResult> Calibrate(const Graph& graph, const QuantizationPlan& plan,
                                            const ObserverSpec& activation, Dataset* dataset, int64_t batch_size,
                                            const BatchProgress& progress) {
  if (dataset->size() == 0) return absl::InvalidArgumentError("the calibration set is empty");
  if (batch_size <= 0) return absl::InvalidArgumentError("calibration batch_size must be positive");
  if (graph.inputs.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("calibration feeds one image tensor; the model takes ",
                                                   graph.inputs.size(), " inputs"));
  }
  std::vector<std::unique_ptr<Observer>> observers(static_cast<size_t>(graph.num_values));
  for (int v : plan.observed_values) {
    QUANTD_ASSIGN_OR_RETURN(observers[static_cast<size_t>(v)], MakeObserver(activation));
  }
  QUANTD_ASSIGN_OR_RETURN(Fp32Executor executor, Fp32Executor::Create(&graph));
  const ValueTap tap = [&](int value, const at::Tensor& t) {
    if (Observer* o = observers[static_cast<size_t>(value)].get()) o->Observe(t);
  };
  const int64_t total = (dataset->size() + batch_size - 1) / batch_size;
  at::NoGradGuard no_grad;
  for (int64_t b = 0; b < total; ++b) {
    const int64_t start = b * batch_size;
    QUANTD_ASSIGN_OR_RETURN(Batch batch, dataset->ReadBatch(start, std::min(batch_size, dataset->size() - start)));
    auto outputs = executor.Run({batch.images}, tap);
    if (!outputs.ok()) return outputs.status();
    if (progress && !progress(b + 1, total)) {
      return absl::CancelledError(absl::StrCat("calibration cancelled after ", b + 1, " of ", total, " batches"));
    }
  }
  CalibrationResult result;
  result.samples = dataset->size();
  for (int v : plan.observed_values) {
    Observer* o = observers[static_cast<size_t>(v)].get();
    QUANTD_ASSIGN_OR_RETURN(result.qparams[v], o->Compute());
    result.ranges[v] = o->ObservedRange();
  }
  return result;
}

}  // namespace quantd::engine
