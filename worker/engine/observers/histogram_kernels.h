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

// NaNs are ignored (the observers never see them in practice).
MinMax FindMinMax(const float* data, int64_t n);

// Counts of `data` in `bins` equal-width bins over [lo, hi] (the last bin
// closed), as torch.histc(x, bins, min=lo, max=hi): when lo == hi the data's
// own range is used, and an empty range is widened by 1 on each side.
std::vector<float> Histc(const float* data, int64_t n, int64_t bins, double lo, double hi);

// HistogramObserver._combine_histograms: spreads `old_hist` (bins wide) on a
// grid `upsample` times finer starting at `start_idx`, integrates it in
// float64 and resamples every `downsample` fine bins; adds the result to
// `new_hist` in place.
void CombineHistograms(std::vector<float>* new_hist, const std::vector<float>& old_hist, int64_t upsample,
                       int64_t downsample, int64_t start_idx);

// HistogramObserver._compute_quantization_error for bins
// [start_bin, end_bin] mapped onto `dst_bins` quantization levels.
double QuantizationError(const float* hist, int64_t bins, double bin_width, int64_t start_bin, int64_t end_bin,
                         int64_t dst_bins);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_OBSERVERS_HISTOGRAM_KERNELS_H_
