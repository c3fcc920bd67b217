// HistogramObserver: a running 2048-bin histogram, merged across batches by
// upsampling onto a common grid, then a greedy search for the [min, max] that
// minimizes the L2 quantization error. Mirrors PyTorch 1.13 step by step,
// including its quirk of building histograms over int()-truncated ranges.

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "worker/engine/observers/histogram_kernels.h"
#include "worker/engine/observers/observer.h"

namespace quantd::engine {
namespace {

class HistogramObserver : public Observer {
 public:
  explicit HistogramObserver(const ObserverSpec& spec)
      : spec_(spec),
        bins_(spec.bins),
        dst_nbins_(256),
        histogram_(static_cast<size_t>(spec.bins), 0.0f),
        min_val_(at::scalar_tensor(std::numeric_limits<float>::infinity(), at::kFloat)),
        max_val_(at::scalar_tensor(-std::numeric_limits<float>::infinity(), at::kFloat)) {}

  void ObserveChunks(const std::vector<at::Tensor>& chunks) override {
    // Element order does not matter here, so any dense layout is read as is.
    std::vector<at::Tensor> dense;
    int64_t n = 0;
    for (const at::Tensor& chunk : chunks) {
      at::Tensor x = chunk.detach().to(at::kFloat);
      if (!x.is_non_overlapping_and_dense()) x = x.contiguous();
      n += x.numel();
      if (x.numel() > 0) dense.push_back(x);
    }
    if (n == 0) return;
    MinMax batch{std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
    for (const at::Tensor& x : dense) {
      const MinMax m = FindMinMax(x.data_ptr<float>(), x.numel());
      batch.min = std::min(batch.min, m.min);
      batch.max = std::max(batch.max, m.max);
    }
    // torch.histc over the whole batch == the sum of its chunks' counts.
    auto histc = [&](double lo, double hi) {
      std::vector<float> total(static_cast<size_t>(bins_), 0.0f);
      for (const at::Tensor& x : dense) {
        const std::vector<float> part = Histc(x.data_ptr<float>(), x.numel(), bins_, lo, hi);
        for (int64_t b = 0; b < bins_; ++b) total[static_cast<size_t>(b)] += part[static_cast<size_t>(b)];
      }
      return total;
    };
    const float min_f = min_val_.item<float>();
    const float max_f = max_val_.item<float>();
    const bool same_values = min_f == max_f;
    const bool uninitialized = std::isinf(min_f) && min_f > 0 && std::isinf(max_f) && max_f < 0;
    if (uninitialized || same_values) {
      min_val_ = at::scalar_tensor(batch.min, at::kFloat);
      max_val_ = at::scalar_tensor(batch.max, at::kFloat);
      histogram_ = histc(Truncate(batch.min), Truncate(batch.max));
      return;
    }
    at::Tensor combined_min = at::min(at::scalar_tensor(batch.min, at::kFloat), min_val_);
    at::Tensor combined_max = at::max(at::scalar_tensor(batch.max, at::kFloat), max_val_);
    // _adjust_min_max: align the old histogram on a grid `upsample_rate`
    // times finer; only the max is relaxed.
    at::Tensor hist_bin_width = (max_val_ - min_val_) / static_cast<double>(bins_ * spec_.upsample_rate);
    const int64_t downsample_rate = static_cast<int64_t>(
        at::ceil((combined_max - combined_min) / (static_cast<double>(bins_) * hist_bin_width)).item<float>());
    at::Tensor e = static_cast<double>(downsample_rate) * (static_cast<double>(bins_) * hist_bin_width) -
                   (combined_max - combined_min);
    combined_max = combined_max + e;
    const int64_t start_idx = static_cast<int64_t>(at::round((min_val_ - combined_min) / hist_bin_width).item<float>());

    std::vector<float> combined = histc(Truncate(combined_min.item<float>()), Truncate(combined_max.item<float>()));
    const bool same_range = combined_min.item<float>() == min_f && combined_max.item<float>() == max_f;
    if (same_range) {
      for (int64_t b = 0; b < bins_; ++b) combined[static_cast<size_t>(b)] += histogram_[static_cast<size_t>(b)];
    } else {
      CombineHistograms(&combined, histogram_, spec_.upsample_rate, downsample_rate, start_idx);
    }
    histogram_ = std::move(combined);
    min_val_ = combined_min;
    max_val_ = combined_max;
  }

  absl::StatusOr<QParams> Compute() const override {
    const float min_f = min_val_.item<float>();
    const float max_f = max_val_.item<float>();
    if (std::isinf(min_f) && std::isinf(max_f)) return absl::FailedPreconditionError("observer saw no data");
    auto [new_min, new_max] = NonLinearParamSearch();
    searched_min_ = new_min.item<float>();
    searched_max_ = new_max.item<float>();
    return CalculateQParams(spec_, new_min, new_max);
  }

  std::pair<float, float> ObservedRange() const override { return {searched_min_, searched_max_}; }

 private:
  // Python's int() on a 0-d tensor: truncation toward zero.
  static double Truncate(float v) { return static_cast<double>(static_cast<int64_t>(v)); }



  std::pair<at::Tensor, at::Tensor> NonLinearParamSearch() const {
    at::Tensor bin_width = (max_val_ - min_val_) / static_cast<double>(bins_);
    const float* h = histogram_.data();
    at::Tensor hist = at::tensor(histogram_, at::kFloat);
    const double total = hist.sum().item<double>();
    // _compute_quantization_error reads the range back with .item().
    const double error_bin_width =
        (static_cast<double>(max_val_.item<float>()) - static_cast<double>(min_val_.item<float>())) /
        static_cast<double>(bins_);
    at::Tensor csum_t = at::cumsum(hist, 0).contiguous();
    const float* csum = csum_t.data_ptr<float>();
    const double stepsize = 1e-5;
    double alpha = 0.0, beta = 1.0;
    int64_t start_bin = 0, end_bin = bins_ - 1;
    double norm_min = std::numeric_limits<double>::infinity();
    while (alpha < beta) {
      const double next_alpha = alpha + stepsize;
      const double next_beta = beta - stepsize;
      // cSum is non-decreasing, so PyTorch's linear scans are binary searches.
      const float lo_threshold = static_cast<float>(next_alpha * total);
      const float hi_threshold = static_cast<float>(next_beta * total);
      int64_t l = std::lower_bound(csum + start_bin, csum + end_bin, lo_threshold) - csum;
      // r: scanning down from end_bin while cSum[r] > hi and r > start_bin.
      int64_t r = end_bin;
      {
        const float* first_above = std::upper_bound(csum + start_bin + 1, csum + end_bin + 1, hi_threshold);
        r = std::max<int64_t>(start_bin, (first_above - csum) - 1);
        if (first_above == csum + start_bin + 1) r = start_bin;
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
    at::Tensor new_min = min_val_ + bin_width * static_cast<double>(start_bin);
    at::Tensor new_max = min_val_ + bin_width * static_cast<double>(end_bin + 1);
    return {new_min, new_max};
  }

  ObserverSpec spec_;
  int64_t bins_;
  int64_t dst_nbins_;
  std::vector<float> histogram_;
  at::Tensor min_val_, max_val_;
  mutable float searched_min_ = 0, searched_max_ = 0;
};

}  // namespace

std::unique_ptr<Observer> NewHistogramObserver(const ObserverSpec& spec) {
  return std::make_unique<HistogramObserver>(spec);
}

}  // namespace quantd::engine
