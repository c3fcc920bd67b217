#include "worker/engine/observers/histogram_kernels.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

namespace quantd::engine {
namespace {

// Hot loops, compiled for the best vector ISA the CPU has (function
// multiversioning; the resolver picks at load time).
#define QUANTD_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

QUANTD_VECTOR_CLONES
void BinIndices(const float* __restrict x, int64_t m, float left, float right, float scale, float width, int32_t last,
                int32_t dump, int32_t* __restrict index) {
  for (int64_t i = 0; i < m; ++i) {
    const float v = x[i];
    const bool inside = (v >= left) & (v <= right);
    const float clamped = inside ? v : left;
    int32_t pos = static_cast<int32_t>((clamped - left) * scale / width);
    pos = pos > last ? last : pos;
    index[i] = inside ? pos : dump;
  }
}

QUANTD_VECTOR_CLONES
void MinMaxLanes(const float* __restrict data, int64_t n, float* __restrict lo_out, float* __restrict hi_out) {
  constexpr int kLanes = 16;
  float lo[kLanes], hi[kLanes];  // locals, so they live in vector registers
  for (int l = 0; l < kLanes; ++l) {
    lo[l] = lo_out[l];
    hi[l] = hi_out[l];
  }
  for (int64_t i = 0; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float v = data[i + l];
      lo[l] = v < lo[l] ? v : lo[l];
      hi[l] = v > hi[l] ? v : hi[l];
    }
  }
  for (int l = 0; l < kLanes; ++l) {
    lo_out[l] = lo[l];
    hi_out[l] = hi[l];
  }
}

QUANTD_VECTOR_CLONES
double ErrorTerms(const float* hist, int64_t bins, float bw, float dbw, float half, float neg_half, float max_dst,
                  float full_norm, int64_t next_start_bin) {
  double total = 0.0;
  for (int64_t i = 0; i < bins; ++i) {
    const float src_begin = static_cast<float>(i - next_start_bin) * bw;
    const float src_end = src_begin + bw;
    const float dst_of_begin = std::min(std::max(std::floor(src_begin / dbw), 0.0f), max_dst);
    const float dst_of_begin_center = (dst_of_begin + 0.5f) * dbw;
    const float dst_of_end = std::min(std::max(std::floor(src_end / dbw), 0.0f), max_dst);
    const float density = hist[i] / bw;
    float norm = 0.0f;
    const float db1 = src_begin - dst_of_begin_center;
    norm += density * ((half * half * half - db1 * db1 * db1) / 3.0f);
    norm += (dst_of_end - dst_of_begin - 1.0f) * (density * full_norm);
    const float dst_of_end_center = dst_of_end * dbw + half;
    const float de3 = src_end - dst_of_end_center;
    norm += density * ((de3 * de3 * de3 - neg_half * neg_half * neg_half) / 3.0f);
    total += norm;
  }
  return total;
}

}  // namespace

void CombineHistograms(std::vector<float>* new_hist, const std::vector<float>& old_hist, int64_t upsample,
                       int64_t downsample, int64_t start_idx) {
  const int64_t bins = static_cast<int64_t>(old_hist.size());
  const int64_t fine = bins * downsample;
  // Fine bin j holds old_hist[(j - start_idx) / upsample] inside the old
  // range, 0 outside. Integrate in order, as torch.cumsum(dtype=double) does.
  double integral = 0.0;
  float shifted = 0.0f;  // the previous integral, stored in a float tensor by PyTorch
  for (int64_t k = 0; k < bins; ++k) {
    const int64_t begin = k * downsample;
    const int64_t end = std::min(fine, begin + downsample);
    for (int64_t j = begin; j < end; ++j) {
      const int64_t src = j - start_idx;
      if (src >= 0 && src < bins * upsample) integral += static_cast<double>(old_hist[static_cast<size_t>(src / upsample)]);
    }
    const double interpolated = (integral - static_cast<double>(shifted)) / static_cast<double>(upsample);
    (*new_hist)[static_cast<size_t>(k)] += static_cast<float>(interpolated);
    shifted = static_cast<float>(integral);
  }
}

double QuantizationError(const float* hist, int64_t bins, double bin_width, int64_t start_bin, int64_t end_bin,
                         int64_t dst_bins) {
  const double dst_bin_width = bin_width * static_cast<double>(end_bin - start_bin + 1) / static_cast<double>(dst_bins);
  if (dst_bin_width == 0.0) return 0.0;
  const float half = static_cast<float>(dst_bin_width / 2);
  const float neg_half = static_cast<float>(-dst_bin_width / 2);
  const float full_norm = (half * half * half - neg_half * neg_half * neg_half) / 3.0f;
  const double total = ErrorTerms(hist, bins, static_cast<float>(bin_width), static_cast<float>(dst_bin_width), half,
                                  neg_half, static_cast<float>(dst_bins - 1), full_norm, start_bin);
  return static_cast<double>(static_cast<float>(total));
}

MinMax FindMinMax(const float* data, int64_t n) {
  // Several independent accumulators so the compiler can vectorize.
  constexpr int kLanes = 16;
  std::array<float, kLanes> lo, hi;
  lo.fill(std::numeric_limits<float>::infinity());
  hi.fill(-std::numeric_limits<float>::infinity());
  MinMaxLanes(data, n, lo.data(), hi.data());
  for (int64_t i = n - n % kLanes; i < n; ++i) {
    lo[0] = std::min(lo[0], data[i]);
    hi[0] = std::max(hi[0], data[i]);
  }
  MinMax result{lo[0], hi[0]};
  for (int l = 1; l < kLanes; ++l) {
    result.min = std::min(result.min, lo[l]);
    result.max = std::max(result.max, hi[l]);
  }
  return result;
}

std::vector<float> Histc(const float* data, int64_t n, int64_t bins, double lo, double hi) {
  if (lo == hi && n > 0) {
    const MinMax mm = FindMinMax(data, n);
    lo = mm.min;
    hi = mm.max;
  }
  if (lo == hi) {
    lo -= 1;
    hi += 1;
  }
  // LibTorch keeps the outer bin edges in the input's dtype and maps
  // pos = int64((x - left) * bins / (right - left)) in float arithmetic.
  const float left = static_cast<float>(lo);
  const float right = static_cast<float>(hi);
  const float width = right - left;
  const float scale = static_cast<float>(bins);
  const int32_t last = static_cast<int32_t>(bins - 1);
  const int32_t dump = static_cast<int32_t>(bins);  // out-of-range elements land here
  // Four interleaved count arrays: long runs of one value (ReLU zeros) would
  // otherwise serialize on a single counter.
  constexpr int kCopies = 4;
  std::vector<uint32_t> counts(static_cast<size_t>((bins + 1) * kCopies), 0);
  constexpr int64_t kChunk = 1024;
  int32_t index[kChunk];
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t m = std::min(kChunk, n - start);
    const float* x = data + start;
    BinIndices(x, m, left, right, scale, width, last, dump, index);
    int64_t i = 0;
    for (; i + kCopies <= m; i += kCopies) {
      for (int c = 0; c < kCopies; ++c) ++counts[static_cast<size_t>(index[i + c] * kCopies + c)];
    }
    for (; i < m; ++i) ++counts[static_cast<size_t>(index[i] * kCopies)];
  }
  std::vector<float> hist(static_cast<size_t>(bins));
  for (int64_t b = 0; b < bins; ++b) {
    uint64_t total = 0;
    for (int c = 0; c < kCopies; ++c) total += counts[static_cast<size_t>(b * kCopies + c)];
    hist[static_cast<size_t>(b)] = static_cast<float>(total);
  }
  return hist;
}

}  // namespace quantd::engine
