#ifndef QUANTD_WORKER_ENGINE_OBSERVERS_HISTC_H_
#define QUANTD_WORKER_ENGINE_OBSERVERS_HISTC_H_

// torch.histc and torch.aminmax for float32 buffers, bit-exact with
// LibTorch 1.13's CPU kernels and several times faster on one thread: they
// dominate HistogramObserver's cost during calibration.

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

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_OBSERVERS_HISTC_H_
