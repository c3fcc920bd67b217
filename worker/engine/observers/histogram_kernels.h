#ifndef QUANTD_WORKER_ENGINE_OBSERVERS_HISTOGRAM_KERNELS_H_
#define QUANTD_WORKER_ENGINE_OBSERVERS_HISTOGRAM_KERNELS_H_

// The loops behind HistogramObserver, in plain C++: torch.histc and
// torch.aminmax for float32 buffers (bit-exact with LibTorch 1.13's CPU
// kernels), the histogram merge and the L2 error of a candidate range, with
// PyTorch's float32/float64 arithmetic. Several times faster than composing
// tensor ops, which dominated calibration time.

#include <cstdint>
#include <vector>

namespace quantd::engine {

struct MinMax {
  float min = 0;
  float max = 0;
};

// NaNs are ignored: HasNaN finds them.
MinMax FindMinMax(const float* data, int64_t n);
bool HasNaN(const float* data, int64_t n);

// The float32 outer bin edges torch.histc(x, bins, min=lo, max=hi) uses for
// data whose extrema are `data`: when lo == hi the data's own range, and an
// empty range widened by 1 on each side.
struct HistcRange {
  float left = 0;
  float right = 0;
  bool operator==(const HistcRange& o) const { return left == o.left && right == o.right; }
  bool operator!=(const HistcRange& o) const { return !(*this == o); }
};
HistcRange ResolveHistcRange(double lo, double hi, MinMax data);

// torch.histc's counting loop, accumulated over any number of buffers that
// share one range (e.g. the sub-batches of a batch). Counts are exact
// integers; the bin of every element is computed in float32 as LibTorch does.
class BinCounter {
 public:
  explicit BinCounter(int64_t bins);
  void Clear();
  void Add(const float* data, int64_t n, HistcRange range);
  // Adds another counter's counts (same number of bins).
  void Merge(const BinCounter& other);
  // hist[b] += count of bin b, in float as torch.histc returns it.
  void AddTo(std::vector<float>* hist) const;

 private:
  static constexpr int kCopies = 4;  // interleaved counters: runs of one bin do not serialize
  int64_t bins_;
  std::vector<uint32_t> counts_;  // (bins + 1) * kCopies; bin `bins` collects out-of-range elements
};

// Counts of `data` in `bins` equal-width bins over [lo, hi] (the last bin
// closed), as torch.histc(x, bins, min=lo, max=hi).
std::vector<float> Histc(const float* data, int64_t n, int64_t bins, double lo, double hi);

// HistogramObserver._adjust_min_max in PyTorch's float32 tensor arithmetic:
// the old histogram's range [old_min, old_max] and the batch's extrema give
// the combined range (its max relaxed so the old bins map onto a grid
// `upsample` times finer), the downsample rate and the old range's start bin.
// When the old range is so narrow against the new one that the rate would
// pass kMaxDownsampleRate (PyTorch then allocates bins * rate floats and
// fails; the rate may not even fit an int64), `old_fits` is false, the range
// is the batch's and the old range's extrema, and the rate and start are 0:
// the old histogram is less than a bin of the new one.
inline constexpr int64_t kMaxDownsampleRate = int64_t{1} << 24;
struct AdjustedRange {
  float min = 0;
  float max = 0;
  int64_t downsample_rate = 1;
  int64_t start_idx = 0;
  bool old_fits = true;
};
AdjustedRange AdjustMinMax(float old_min, float old_max, MinMax batch, int64_t bins, int64_t upsample);

// HistogramObserver._combine_histograms: spreads `old_hist` (bins wide) on a
// grid `upsample` times finer starting at `start_idx`, integrates it in
// float64 and resamples every `downsample` fine bins; adds the result to
// `new_hist` in place.
void CombineHistograms(std::vector<float>* new_hist, const std::vector<float>& old_hist, int64_t upsample,
                       int64_t downsample, int64_t start_idx);

// The same spreading and resampling without PyTorch's rounding: it keeps the
// running integral of the previous bin in float32, so past about a million
// counts every resampled bin is off by up to a ulp of the running total over
// `upsample`, negative ones included (in empty bins too). Each merge adds such
// errors, and an estimator walking the cumulative counts stops short of the
// top values. Here each new bin gets exactly its share of the old counts:
// never negative, and the counts add up.
void SpreadHistogram(std::vector<float>* new_hist, const std::vector<float>& old_hist, int64_t upsample,
                     int64_t downsample, int64_t start_idx);

// HistogramObserver._compute_quantization_error for bins
// [start_bin, end_bin] mapped onto `dst_bins` quantization levels.
double QuantizationError(const float* hist, int64_t bins, double bin_width, int64_t start_bin, int64_t end_bin,
                         int64_t dst_bins);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_OBSERVERS_HISTOGRAM_KERNELS_H_
