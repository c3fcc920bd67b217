#ifndef QUANTD_WORKER_ENGINE_QUANTIZER_INTERNAL_H_
#define QUANTD_WORKER_ENGINE_QUANTIZER_INTERNAL_H_

// QuantizedModel's insides, for the engine's own tests and benchmarks.

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"
#include "worker/engine/data/dataset.h"
#include "worker/engine/ir/graph.h"
#include "worker/engine/passes/compare_with_fp32.h"
#include "worker/engine/quantizer.h"
#include "worker/engine/runtime/int8_program.h"

namespace quantd::engine {

struct QuantizedModel::Impl {
  Graph fused;            // the fused FP32 graph (observers' view)
  torch::jit::Module fp32_module;  // the untouched FP32 model
  // The executor points into the program: both on the heap, so they move together.
  std::unique_ptr<Program> program;
  std::unique_ptr<Int8Executor> executor;
  QuantizeReport report;
  int64_t max_batch_bytes = 0;  // QuantizeOptions::max_batch_bytes
  // The image shape the int8 program is fixed to (pooling folded into the
  // classifier, whose kernel is the calibration's feature map); empty when
  // it takes other sizes as the model does.
  std::vector<int64_t> fixed_input_shape;

  // Other image sizes would give wrong scores on a program fixed to one.
  absl::Status CheckFixedInputShape(const Dataset& dataset, const std::string& field) const {
    if (fixed_input_shape.empty() || dataset.sample_shape() == fixed_input_shape) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": its samples are [", absl::StrJoin(dataset.sample_shape(), ", "), "], but the int8 model is fixed to "
        "the calibration's [", absl::StrJoin(fixed_input_shape, ", "), "] (its pooling is folded into the classifier)"));
  }

  // Runs `fn(logits, labels)` over a dataset in batches.
  template <typename Fn>
  absl::Status ForEachBatch(const DatasetSpec& spec, int64_t batch_size, const ProgressCallback& progress, Fn&& fn) const {
    QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<Dataset> dataset, OpenDataset(spec));
    if (batch_size <= 0) return absl::InvalidArgumentError("batch_size must be positive");
    QUANTD_RETURN_IF_ERROR(CheckFixedInputShape(*dataset, "evaluation"));
    QUANTD_RETURN_IF_ERROR(CheckBatchBytes(*dataset, batch_size, max_batch_bytes, "evaluation.batch_size"));
    const int64_t total = BatchCount(dataset->size(), batch_size);
    at::NoGradGuard no_grad;
    for (int64_t b = 0; b < total; ++b) {
      const int64_t start = b * batch_size;
      QUANTD_ASSIGN_OR_RETURN(Batch batch, dataset->ReadBatch(start, std::min(batch_size, dataset->size() - start)));
      QUANTD_RETURN_IF_ERROR(fn(batch));
      if (progress && !progress({Phase::kEvaluating, b + 1, total})) return absl::CancelledError("evaluation cancelled");
    }
    return absl::OkStatus();
  }

  absl::StatusOr<Accuracy> Evaluate(const DatasetSpec& spec, int64_t batch_size, bool int8,
                                    const ProgressCallback& progress) const {
    Accuracy acc;
    QUANTD_RETURN_IF_ERROR(ForEachBatch(spec, batch_size, progress, [&](const Batch& batch) -> absl::Status {
      if (!batch.labels.defined()) return absl::InvalidArgumentError("the evaluation set has no labels");
      at::Tensor out;
      if (int8) {
        QUANTD_ASSIGN_OR_RETURN(out, executor->Forward(batch.images));
      } else {
        QUANTD_RETURN_IF_ERROR(TorchTry("running the FP32 model", [&]() {
          out = const_cast<torch::jit::Module&>(fp32_module).forward({batch.images}).toTensor();
          return absl::OkStatus();
        }));
      }
      if (out.dim() != 2 || out.size(0) != batch.labels.numel()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "evaluation needs a classifier: the ", int8 ? "int8" : "FP32", " model's output has shape [",
            absl::StrJoin(out.sizes(), ", "), "], not [", batch.labels.numel(), ", classes]"));
      }
      QUANTD_RETURN_IF_ERROR(CheckLabelsInRange(batch.labels, out.size(1), "evaluation.dataset", acc.total));
      acc.correct += PredictedClasses(out).eq(batch.labels).sum().item<int64_t>();
      acc.total += batch.labels.numel();
      return absl::OkStatus();
    }));
    return acc;
  }
};

// FAILED_PRECONDITION unless `graph` (imported, fused, folded, equalized)
// gives `expected`, the model's own output on `sample`, to 60 dB of SQNR.
absl::Status CheckImportComputesTheModel(const Graph& graph, const at::Tensor& sample, const at::Tensor& expected);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_QUANTIZER_INTERNAL_H_
