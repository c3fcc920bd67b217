#include "worker/engine/passes/calibrate.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <future>
#include <map>
#include <optional>

#include "absl/strings/str_cat.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"
#include "worker/engine/passes/bias_correction.h"
#include "worker/engine/passes/weight_rounding.h"
#include "worker/engine/runtime/fp32_blocked_executor.h"
#include "worker/engine/runtime/fp32_executor.h"

namespace quantd::engine {
namespace {

// Copies the leading images of a tapped value (plain, or `blocked` as
// [N, C/B, H, W, B]) into rows [row, ...) of `*reference`, allocated on
// first use with `rows` images.
void KeepReference(const at::Tensor& t, bool blocked, int64_t row, int64_t rows, at::Tensor* reference) {
  if (t.dim() == 0) return;
  std::vector<int64_t> sizes = t.sizes().vec();
  if (blocked) sizes = {t.size(0), t.size(1) * t.size(4), t.size(2), t.size(3)};
  if (!reference->defined()) {
    sizes[0] = rows;
    auto options = at::TensorOptions(t.scalar_type());
    *reference = sizes.size() == 4 ? at::empty(sizes, options.memory_format(at::MemoryFormat::ChannelsLast))
                                   : at::empty(sizes, options);
  }
  const int64_t k = std::min(t.size(0), rows - row);
  at::Tensor rows_out = reference->narrow(0, row, k);
  if (blocked) {  // NHWC rows seen as [k, H, W, C/B, B]
    rows_out.permute({0, 2, 3, 1})
        .view({k, t.size(2), t.size(3), t.size(1), t.size(4)})
        .copy_(t.narrow(0, 0, k).permute({0, 2, 3, 1, 4}));
  } else {
    rows_out.copy_(t.narrow(0, 0, k));
  }
}

// The first `k` images of a tapped value (plain, or `blocked`: [N, C/B, H,
// W, B]) as plain [k, C, H, W] (or [k, F]).
at::Tensor PlainImages(const at::Tensor& t, bool blocked, int64_t k) {
  const at::Tensor first = t.narrow(0, 0, k);
  if (!blocked) return first;
  return first.permute({0, 1, 4, 2, 3}).reshape({k, t.size(1) * t.size(4), t.size(2), t.size(3)});
}

// Adds the images of a tapped value (plain, or `blocked`) to `*sum` (double,
// one image's shape, NCHW), allocated on first use.
void AddToSum(const at::Tensor& t, bool blocked, at::Tensor* sum) {
  if (t.dim() == 0) return;
  at::Tensor images = t.to(at::kDouble).sum(0);
  if (blocked) {  // [C/B, H, W, B] -> [C, H, W]
    images = images.permute({0, 3, 1, 2}).reshape({t.size(1) * t.size(4), t.size(2), t.size(3)});
  }
  if (sum->defined()) {
    sum->add_(images);
  } else {
    *sum = images.contiguous();
  }
}

}  // namespace

absl::StatusOr<CalibrationResult> Calibrate(const Graph& graph, const QuantizationPlan& plan,
                                            const ObserverSpec& activation, Dataset* dataset,
                                            const CalibrationOptions& options, const BatchProgress& progress) {
  const int64_t batch_size = options.batch_size;
  const int64_t forward_batch = options.forward_batch_size > 0 ? options.forward_batch_size : batch_size;
  if (dataset->size() == 0) return absl::InvalidArgumentError("the calibration set is empty");
  if (batch_size <= 0) return absl::InvalidArgumentError("calibration batch_size must be positive");
  if (graph.inputs.size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration feeds one image tensor; the model takes ", graph.inputs.size(), " inputs"));
  }
  std::vector<std::unique_ptr<Observer>> observers(static_cast<size_t>(graph.num_values));
  for (int v : plan.observed_values) {
    QUANTD_ASSIGN_OR_RETURN(observers[static_cast<size_t>(v)], MakeObserver(activation));
  }
  QUANTD_ASSIGN_OR_RETURN(Fp32Executor executor, Fp32Executor::Create(&graph));
  // Same values, fewer layout conversions (see fp32_blocked_executor.h).
  QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<Fp32BlockedExecutor> blocked, Fp32BlockedExecutor::Create(&graph));
  // Each sub-batch's activations are observed as soon as they are computed,
  // while still in cache. With `overlap`, batch b's statistics are gathered
  // on a second thread while batch b+1 runs forward instead; each observer
  // still sees batches in order, so the result is identical.
  std::vector<int64_t> keep_rows(static_cast<size_t>(graph.num_values), 0);
  for (int v : options.reference_values) {
    keep_rows[static_cast<size_t>(v)] = std::min(options.reference_samples, dataset->size());
  }
  for (int v : options.output_values) {
    int64_t& rows = keep_rows[static_cast<size_t>(v)];
    rows = std::max(rows, std::min(options.output_samples, dataset->size()));
  }
  // The layers' inputs for the first images, reduced to second moments as
  // they come.
  std::optional<InputMomentAccumulator> input_moments;
  if (options.second_moment_samples > 0) input_moments.emplace(graph);
  const int64_t moment_rows = std::min(options.second_moment_samples, dataset->size());
  absl::Status moments_status;
  std::vector<char> keep_mean(static_cast<size_t>(graph.num_values), 0);
  for (int v : options.mean_values) keep_mean[static_cast<size_t>(v)] = 1;
  std::map<int, at::Tensor> sums;
  CalibrationResult result;
  using Observed = std::map<Observer*, std::vector<at::Tensor>>;
  std::future<void> pending;
  auto finish_pending = [&]() -> absl::Status {
    if (!pending.valid()) return absl::OkStatus();
    return TorchTry("observing calibration activations", [&]() {
      pending.get();
      return absl::OkStatus();
    });
  };
  const int64_t total = BatchCount(dataset->size(), batch_size);
  const bool copy_observed = executor.MutatesValues();
  at::NoGradGuard no_grad;
  for (int64_t b = 0; b < total; ++b) {
    const int64_t start = b * batch_size;
    QUANTD_ASSIGN_OR_RETURN(Batch batch, dataset->ReadBatch(start, std::min(batch_size, dataset->size() - start)));
    Observed observed;
    absl::Status status = TorchTry("observing calibration activations", [&]() -> absl::Status {
      int64_t first_image = 0;  // of the sub-batch running
      auto observe = [&](int value, const at::Tensor& t, TapLayout layout) {
        const int64_t rows = keep_rows[static_cast<size_t>(value)];
        if (first_image < rows) {
          KeepReference(t, layout == TapLayout::kBlocked, first_image, rows, &result.references[value]);
        }
        if (input_moments && t.dim() > 0 && first_image < moment_rows && input_moments->Wants(value) &&
            moments_status.ok()) {
          moments_status = input_moments->Add(
              value, PlainImages(t, layout == TapLayout::kBlocked, std::min(t.size(0), moment_rows - first_image)));
        }
        if (keep_mean[static_cast<size_t>(value)]) AddToSum(t, layout == TapLayout::kBlocked, &sums[value]);
        Observer* o = observers[static_cast<size_t>(value)].get();
        if (o == nullptr) return;
        // Observers see a value as produced, as PyTorch's forward hooks
        // do: a copy when a later in-place op could overwrite it.
        const at::Tensor seen = copy_observed ? t.clone() : t;
        if (options.overlap) {
          observed[o].push_back(seen);
        } else {
          o->ObserveChunk(seen);
        }
      };
      for (int64_t first = 0; first < batch.images.size(0); first += forward_batch) {
        const at::Tensor images = batch.images.slice(0, first, first + forward_batch);
        first_image = start + first;
        if (blocked != nullptr && blocked->Accepts(images)) {
          QUANTD_RETURN_IF_ERROR(blocked->Run(images, observe));
        } else {
          QUANTD_RETURN_IF_ERROR(
              executor.Run({images}, [&](int value, const at::Tensor& t) { observe(value, t, TapLayout::kPlain); })
                  .status());
        }
      }
      if (!options.overlap) {
        for (int v : plan.observed_values) observers[static_cast<size_t>(v)]->EndBatch();
      }
      return moments_status;
    });
    if (!status.ok()) {
      (void)finish_pending();
      return status;
    }
    QUANTD_RETURN_IF_ERROR(finish_pending());
    if (options.overlap) {
      pending = std::async(std::launch::async, [observed = std::move(observed)]() {
        for (const auto& [observer, chunks] : observed) observer->ObserveChunks(chunks);
      });
    }
    if (progress && !progress(b + 1, total)) {
      (void)finish_pending();
      return absl::CancelledError(absl::StrCat("calibration cancelled after ", b + 1, " of ", total, " batches"));
    }
  }
  QUANTD_RETURN_IF_ERROR(finish_pending());
  result.samples = dataset->size();
  if (input_moments) {
    QUANTD_ASSIGN_OR_RETURN(result.input_second_moments, input_moments->Finish());
  }
  for (auto& [value, sum] : sums) {
    result.means[value] = (sum / static_cast<double>(result.samples)).to(at::kFloat);
  }
  // Who made value `v`, for errors: its producing node, or the model input.
  auto producer = [&graph](int v) -> std::string {
    for (const Node& node : graph.nodes) {
      if (!node.removed && std::find(node.outputs.begin(), node.outputs.end(), v) != node.outputs.end()) {
        return node.name;
      }
    }
    return "the model input";
  };
  for (int v : plan.observed_values) {
    Observer* o = observers[static_cast<size_t>(v)].get();
    absl::StatusOr<QParams> qparams = o->Compute();
    if (!qparams.ok()) {
      return absl::Status(qparams.status().code(),
                          absl::StrCat("the output of ", producer(v), ": ", qparams.status().message()));
    }
    // A NaN or infinity in the activations (an overflow in the model)
    // makes a scale that LibTorch's quantizer would take without complaint.
    for (float scale : qparams->scale) {
      if (!std::isfinite(scale) || scale <= 0) {
        return absl::FailedPreconditionError(
            absl::StrCat("the output of ", producer(v), " has no finite range on the calibration data (scale ", scale,
                         "): its values overflow or hold NaN"));
      }
    }
    result.qparams[v] = *std::move(qparams);
    result.ranges[v] = o->ObservedRange();
    result.observers[v] = std::move(observers[static_cast<size_t>(v)]);
  }
  return result;
}

}  // namespace quantd::engine
