// HistogramObserver: a running 2048-bin histogram, merged across batches by
// upsampling onto a common grid, then a greedy search for the [min, max] that
// minimizes the L2 quantization error. Mirrors PyTorch 1.13 step by step,
// including its quirk of building histograms over int()-truncated ranges; a
// second histogram over the exact range serves quantd's other estimators.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/observers/histogram_kernels.h"
#include "worker/engine/observers/observer.h"
#include "worker/engine/observers/range_search.h"

namespace quantd::engine {
namespace {

class HistogramObserver : public Observer {
 public:
  explicit HistogramObserver(const ObserverSpec& spec)
      : spec_(spec), bins_(spec.bins), dst_nbins_(256), pytorch_(spec.bins, /*truncate=*/true),
        exact_(spec.bins, /*truncate=*/false) {
    kept_.push_back(&pytorch_);
    // Counting twice costs calibration time: only when something reads it.
    if (spec.estimator != RangeEstimator::kPyTorchL2 || spec.exact_histogram) kept_.push_back(&exact_);
  }

  // Each chunk is binned at once, while it is hot in cache, over the range
  // the batch would get if it ended here. A later chunk that moves that
  // range sends the earlier ones to be recounted at EndBatch.
  void ObserveChunk(const at::Tensor& chunk) override {
    at::Tensor x = chunk.detach().to(at::kFloat);
    if (!x.is_non_overlapping_and_dense()) x = x.contiguous();  // element order does not matter here
    if (x.numel() == 0) return;
    if (HasNaN(x.data_ptr<float>(), x.numel())) {
      saw_nan_ = true;
      return;
    }
    const MinMax m = ParallelMinMax(x.data_ptr<float>(), x.numel());
    if (!std::isfinite(m.min) || !std::isfinite(m.max)) {
      // An overflow to infinity: no histogram can span it (binning and
      // truncating it would be undefined). Compute() reports it.
      saw_infinity_ = true;
      return;
    }
    if (std::max(std::abs(m.min), std::abs(m.max)) >= kTruncationLimit) {
      // PyTorch's int() of such a bound fails ("Overflow when unpacking
      // long"), and the cast to int64 is undefined: a range of no use anyway.
      saw_too_large_ = true;
      return;
    }
    batch_.min = std::min(batch_.min, m.min);
    batch_.max = std::max(batch_.max, m.max);
    chunks_.push_back(x);
    for (RunningHistogram* h : kept_) {
      // A first batch's range is its own extrema, which each later chunk is
      // likely to widen: count it once, at EndBatch.
      if (h->Uninitialized()) continue;
      const HistcRange range = PlanBatch(*h).range;
      if (!h->counting || range != h->counted_range) {
        h->counter.Clear();
        h->counting = true;
        h->counted_range = range;
        h->first_counted = chunks_.size() - 1;
      }
      ParallelCount(x.data_ptr<float>(), x.numel(), range, &h->counter);
    }
  }

  void EndBatch() override {
    if (chunks_.empty()) return;
    for (RunningHistogram* h : kept_) EndBatch(h);
    chunks_.clear();
    batch_ = kNoData;
  }

  absl::StatusOr<QParams> Compute() const override {
    std::pair<float, float> range;
    QUANTD_ASSIGN_OR_RETURN(QParams q, ComputeAs(spec_, &range));
    std::tie(searched_min_, searched_max_) = range;
    return q;
  }

  absl::StatusOr<QParams> ComputeAs(const ObserverSpec& spec, std::pair<float, float>* range) const override {
    if (spec.kind != ObserverKind::kHistogram || spec.bins != spec_.bins || spec.upsample_rate != spec_.upsample_rate) {
      return absl::InvalidArgumentError(absl::StrCat("a histogram of ", spec_.bins, " bins cannot answer for ",
                                                     spec.Describe()));
    }
    // PyTorch's torch.aminmax gives NaN here, and its observer then fails.
    if (saw_nan_) return absl::FailedPreconditionError("values are NaN on the calibration data");
    if (saw_infinity_) return absl::FailedPreconditionError("values overflow to infinity on the calibration data");
    if (saw_too_large_) {
      return absl::FailedPreconditionError(
          "values reach 2^63 or more on the calibration data, too large for PyTorch's histogram observer");
    }
    if (pytorch_.Uninitialized()) return absl::FailedPreconditionError("observer saw no data");
    at::Tensor new_min, new_max;
    if (spec.estimator == RangeEstimator::kPyTorchL2) {
      std::tie(new_min, new_max) = NonLinearParamSearch(at::scalar_tensor(pytorch_.min_val, at::kFloat),
                                                        at::scalar_tensor(pytorch_.max_val, at::kFloat));
    } else {
      if (kept_.back() != &exact_) {
        return absl::FailedPreconditionError(absl::StrCat(spec.Describe(), " reads a histogram over the exact range, "
                                                          "which this observer was not asked to keep"));
      }
      const ValueRange found = EstimateRange(spec);
      new_min = at::scalar_tensor(static_cast<float>(found.min), at::kFloat);
      new_max = at::scalar_tensor(static_cast<float>(found.max), at::kFloat);
    }
    if (range != nullptr) *range = {new_min.item<float>(), new_max.item<float>()};
    return CalculateQParams(spec, new_min, new_max);
  }

  std::pair<float, float> ObservedRange() const override { return {searched_min_, searched_max_}; }

 private:
  // Large chunks are split across the intra-op threads: extrema and integer
  // counts combine exactly in any order.
  static constexpr int64_t kGrain = 1 << 16;

  static constexpr MinMax kNoData{std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};

  // A running histogram, merged across batches by upsampling onto a common
  // grid. PyTorch 1.13 counts each batch over int()-truncated bounds
  // (`truncate`): its bins do not span [min_val, max_val], and values past
  // the truncated bounds are dropped. Its L2 search reads them as if they
  // did, so PyTorch's presets must too, and they merge with its rounding
  // (CombineHistograms). quantd's own estimators read the exact one, whose
  // bins span `span`, merged without it (SpreadHistogram).
  struct RunningHistogram {
    RunningHistogram(int64_t bins, bool truncate)
        : truncate(truncate), histogram(static_cast<size_t>(bins), 0.0f), counter(bins) {}
    bool Uninitialized() const { return std::isinf(min_val) && min_val > 0 && std::isinf(max_val) && max_val < 0; }

    const bool truncate;
    float min_val = kNoData.min;  // float32 as PyTorch's min_val/max_val buffers
    float max_val = kNoData.max;
    std::vector<float> histogram;
    HistcRange span;  // what the bins cover
    // The open batch: counts of chunks_[first_counted..] over counted_range.
    BinCounter counter;
    bool counting = false;
    HistcRange counted_range;
    size_t first_counted = 0;
  };

  void EndBatch(RunningHistogram* h) {
    const BatchPlan plan = PlanBatch(*h);  // if counting, its range is counted_range: the last chunk saw the whole batch
    if (!h->counting) {
      h->counter.Clear();
      h->first_counted = chunks_.size();
    }
    for (size_t i = 0; i < h->first_counted; ++i) {
      ParallelCount(chunks_[i].data_ptr<float>(), chunks_[i].numel(), plan.range, &h->counter);
    }
    std::vector<float> combined(static_cast<size_t>(bins_), 0.0f);
    h->counter.AddTo(&combined);
    if (plan.restart) {
      h->min_val = batch_.min;
      h->max_val = batch_.max;
    } else {
      if (!plan.adjusted.old_fits) {
        AddAsOneBin(h->histogram, h->min_val, h->max_val, plan.range, &combined);
      } else if (plan.adjusted.min == h->min_val && plan.adjusted.max == h->max_val) {
        for (int64_t b = 0; b < bins_; ++b) combined[static_cast<size_t>(b)] += h->histogram[static_cast<size_t>(b)];
      } else if (h->truncate) {  // PyTorch's, rounding included (its L2 search reads it)
        CombineHistograms(&combined, h->histogram, spec_.upsample_rate, plan.adjusted.downsample_rate,
                          plan.adjusted.start_idx);
      } else {
        SpreadHistogram(&combined, h->histogram, spec_.upsample_rate, plan.adjusted.downsample_rate,
                        plan.adjusted.start_idx);
      }
      h->min_val = plan.adjusted.min;
      h->max_val = plan.adjusted.max;
    }
    h->histogram = std::move(combined);
    h->span = plan.range;
    h->counting = false;
    h->first_counted = 0;
  }

  // An old histogram narrower than a bin of the new range (PyTorch cannot
  // merge it): its count goes to the bin that holds its middle.
  void AddAsOneBin(const std::vector<float>& old_hist, float old_min, float old_max, HistcRange range,
                   std::vector<float>* combined) const {
    double total = 0;
    for (float c : old_hist) total += c;
    const double middle = (static_cast<double>(old_min) + static_cast<double>(old_max)) / 2;
    const double width = static_cast<double>(range.right) - static_cast<double>(range.left);
    const double at = width > 0 ? (middle - range.left) / width * static_cast<double>(bins_) : 0;
    const auto bin = static_cast<size_t>(std::clamp<double>(std::floor(at), 0, static_cast<double>(bins_ - 1)));
    (*combined)[bin] += static_cast<float>(total);
  }

  MinMax ParallelMinMax(const float* data, int64_t n) {
    if (n < 2 * kGrain || at::get_num_threads() == 1) return FindMinMax(data, n);
    std::vector<MinMax> parts(static_cast<size_t>(at::get_num_threads()), kNoData);
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      const MinMax m = FindMinMax(data + begin, end - begin);
      MinMax& part = parts[static_cast<size_t>(at::get_thread_num())];
      part.min = std::min(part.min, m.min);
      part.max = std::max(part.max, m.max);
    });
    MinMax all = kNoData;
    for (const MinMax& part : parts) {
      all.min = std::min(all.min, part.min);
      all.max = std::max(all.max, part.max);
    }
    return all;
  }

  void ParallelCount(const float* data, int64_t n, HistcRange range, BinCounter* counter) {
    if (n < 2 * kGrain || at::get_num_threads() == 1) {
      counter->Add(data, n, range);
      return;
    }
    const auto threads = static_cast<size_t>(at::get_num_threads());
    while (thread_counters_.size() < threads) thread_counters_.emplace_back(bins_);
    std::vector<char> used(threads, 0);  // a byte per thread: no bit-packed words shared
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      const auto t = static_cast<size_t>(at::get_thread_num());
      if (!used[t]) thread_counters_[t].Clear();
      used[t] = 1;
      thread_counters_[t].Add(data + begin, end - begin, range);
    });
    for (size_t t = 0; t < threads; ++t) {
      if (used[t]) counter->Merge(thread_counters_[t]);
    }
  }

  // Python's int() on a 0-d tensor: truncation toward zero. Batches with a
  // value this large are refused before (Observe).
  static constexpr float kTruncationLimit = 9.2233720368547758e18f;  // 2^63
  static double Truncate(float v) { return static_cast<double>(static_cast<int64_t>(v)); }

  // HistogramObserver.forward for the open batch: restart from it (first
  // batch, or all values seen so far equal), or merge onto an adjusted range;
  // either way torch.histc over (for PyTorch's, int()-truncated) bounds.
  struct BatchPlan {
    bool restart = false;
    AdjustedRange adjusted;
    HistcRange range;
  };
  BatchPlan PlanBatch(const RunningHistogram& h) const {
    auto bound = [&h](float v) { return h.truncate ? Truncate(v) : static_cast<double>(v); };
    BatchPlan plan;
    plan.restart = h.Uninitialized() || h.min_val == h.max_val;
    if (plan.restart) {
      plan.range = ResolveHistcRange(bound(batch_.min), bound(batch_.max), batch_);
      return plan;
    }
    plan.adjusted = AdjustMinMax(h.min_val, h.max_val, batch_, bins_, spec_.upsample_rate);
    plan.range = ResolveHistcRange(bound(plan.adjusted.min), bound(plan.adjusted.max), batch_);
    return plan;
  }

  ValueRange EstimateRange(const ObserverSpec& spec) const {
    ValueHistogram h;
    h.min = exact_.span.left;
    h.max = exact_.span.right;
    h.counts.assign(exact_.histogram.begin(), exact_.histogram.end());
    const int64_t levels = spec.quant_max() - spec.quant_min() + 1;
    switch (spec.estimator) {
      case RangeEstimator::kMse: return MseOptimalRange(h, levels);
      case RangeEstimator::kPercentile: return PercentileRange(h, spec.percentile);
      case RangeEstimator::kEntropy: return EntropyRange(h, levels);
      case RangeEstimator::kPyTorchL2: break;
    }
    return {h.min, h.max};
  }

  std::pair<at::Tensor, at::Tensor> NonLinearParamSearch(const at::Tensor& min_val, const at::Tensor& max_val) const {
    at::Tensor bin_width = (max_val - min_val) / static_cast<double>(bins_);
    const float* h = pytorch_.histogram.data();
    at::Tensor hist = at::tensor(pytorch_.histogram, at::kFloat);
    const double total = hist.sum().item<double>();
    // _compute_quantization_error reads the range back with .item().
    const double error_bin_width =
        (static_cast<double>(pytorch_.max_val) - static_cast<double>(pytorch_.min_val)) /
        static_cast<double>(bins_);
    at::Tensor csum_t = at::cumsum(hist, 0).contiguous();
    const float* csum = csum_t.data_ptr<float>();
    const double stepsize = 1e-5;
    double alpha = 0.0, beta = 1.0;
    int64_t start_bin = 0, end_bin = bins_ - 1;
    double norm_min = std::numeric_limits<double>::infinity();
    // Where cSum is non-decreasing, PyTorch's linear scans are binary
    // searches. Merged histograms are interpolated in float32, and past 2^24
    // counts some bins come out slightly negative: cSum then dips, and only
    // the scans stop where PyTorch's do.
    const bool non_decreasing = std::is_sorted(csum, csum + bins_);
    while (alpha < beta) {
      const double next_alpha = alpha + stepsize;
      const double next_beta = beta - stepsize;
      const float lo_threshold = static_cast<float>(next_alpha * total);
      const float hi_threshold = static_cast<float>(next_beta * total);
      // l: scanning up from start_bin while cSum[l] < lo and l < end_bin;
      // r: scanning down from end_bin while cSum[r] > hi and r > start_bin.
      int64_t l = start_bin, r = end_bin;
      if (non_decreasing) {
        l = std::lower_bound(csum + start_bin, csum + end_bin, lo_threshold) - csum;
        const float* first_above = std::upper_bound(csum + start_bin + 1, csum + end_bin + 1, hi_threshold);
        r = std::max<int64_t>(start_bin, (first_above - csum) - 1);
        if (first_above == csum + start_bin + 1) r = start_bin;
      } else {
        while (l < end_bin && csum[l] < lo_threshold) ++l;
        while (r > start_bin && csum[r] > hi_threshold) --r;
      }
      int64_t next_start_bin = start_bin, next_end_bin = end_bin;
      if ((l - start_bin) > (end_bin - r)) {
        next_start_bin = l;
        alpha = next_alpha;
      } else {
        next_end_bin = r;
        beta = next_beta;
      }
      if (next_start_bin == start_bin && next_end_bin == end_bin) continue;
      const double norm = QuantizationError(h, bins_, error_bin_width, next_start_bin, next_end_bin, dst_nbins_);
      if (norm > norm_min) break;
      norm_min = norm;
      start_bin = next_start_bin;
      end_bin = next_end_bin;
    }
    at::Tensor new_min = min_val + bin_width * static_cast<double>(start_bin);
    at::Tensor new_max = min_val + bin_width * static_cast<double>(end_bin + 1);
    return {new_min, new_max};
  }

  ObserverSpec spec_;
  int64_t bins_;
  int64_t dst_nbins_;
  RunningHistogram pytorch_;  // PyTorch 1.13's, for its L2 search (bit-identical presets)
  RunningHistogram exact_;    // over the exact range, for quantd's estimators
  std::vector<RunningHistogram*> kept_;  // pytorch_, and exact_ when asked for
  mutable float searched_min_ = 0, searched_max_ = 0;
  // The open batch.
  MinMax batch_ = kNoData;
  std::vector<at::Tensor> chunks_;
  std::vector<BinCounter> thread_counters_;  // scratch for ParallelCount
  bool saw_infinity_ = false;
  bool saw_too_large_ = false;
  bool saw_nan_ = false;
};

}  // namespace

std::unique_ptr<Observer> NewHistogramObserver(const ObserverSpec& spec) {
  return std::make_unique<HistogramObserver>(spec);
}

}  // namespace quantd::engine
