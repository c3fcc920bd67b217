#ifndef QUANTD_WORKER_ENGINE_OBSERVERS_RANGE_SEARCH_H_
#define QUANTD_WORKER_ENGINE_OBSERVERS_RANGE_SEARCH_H_

// Range estimators: which [min, max] to quantize a per-tensor activation
// over, chosen from the histogram calibration collected. PyTorch's
// HistogramObserver has one (a greedy L2 search, in histogram.cc); these are
// the alternatives a qconfig may name instead:
//
//   mse         the range with the least expected squared quantization error
//               of the observed distribution, clipping against rounding,
//               searched over every pair of bin edges (not greedily);
//   percentile  the range holding all but (100 - p)% of the values, split
//               evenly between the tails;
//   entropy     the range whose quantized distribution is closest to the
//               observed one in KL divergence (TensorRT's calibration), over
//               the whole histogram rather than 128 bins.
//
// No LibTorch here: plain histograms in, a range out.

#include <cstdint>
#include <vector>

namespace quantd::engine {

// counts[i] is the number of values in [min + i * w, min + (i + 1) * w),
// w = (max - min) / counts.size().
struct ValueHistogram {
  double min = 0;
  double max = 0;
  std::vector<double> counts;
  double bin_width() const { return counts.empty() ? 0.0 : (max - min) / static_cast<double>(counts.size()); }
};

struct ValueRange {
  double min = 0;
  double max = 0;
};

// The expected squared error per value of quantizing the histogram's
// distribution to `levels` evenly spaced values over `range` (widened to
// hold 0, as affine quantization does). Values are taken as spread evenly
// within their bin: one in range costs step^2 / 12, one outside costs its
// squared distance to the nearer bound. The bin holding 0 costs no rounding:
// after a ReLU it is mostly exact zeros, which quantize exactly.
double ExpectedQuantizationError(const ValueHistogram& histogram, ValueRange range, int64_t levels);

// The bin-edge range with the least ExpectedQuantizationError.
ValueRange MseOptimalRange(const ValueHistogram& histogram, int64_t levels);

// All but (100 - percentile)% of the values, half from each tail (a tail
// with no values beyond 0 keeps 0 as its bound). percentile in (0, 100].
ValueRange PercentileRange(const ValueHistogram& histogram, double percentile);

// KL-divergence calibration over the histogram's bins: for each candidate
// upper bound (at least `levels` bins), the clipped distribution P (tail
// folded into its last bin) against Q, P merged into `levels` buckets and
// spread back over the non-empty bins; the bound with the least KL(P || Q).
// Values below 0 are folded onto their magnitude and the range made
// symmetric, as TensorRT does for signed tensors. The bin at 0 is left out,
// as in ExpectedQuantizationError.
ValueRange EntropyRange(const ValueHistogram& histogram, int64_t levels);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_OBSERVERS_RANGE_SEARCH_H_
