#include "worker/engine/observers/histc.h"

#include <algorithm>
#include <array>
#include <limits>

namespace quantd::engine {

MinMax FindMinMax(const float* data, int64_t n) {
  // Several independent accumulators so the compiler can vectorize.
  constexpr int kLanes = 16;
  std::array<float, kLanes> lo, hi;
  lo.fill(std::numeric_limits<float>::infinity());
  hi.fill(-std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float v = data[i + l];
      lo[l] = v < lo[l] ? v : lo[l];
      hi[l] = v > hi[l] ? v : hi[l];
    }
  }
  for (; i < n; ++i) {
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
    for (int64_t i = 0; i < m; ++i) {
      const float v = x[i];
      const bool inside = v >= left && v <= right;
      const float clamped = inside ? v : left;
      int32_t pos = static_cast<int32_t>((clamped - left) * scale / width);
      pos = pos > last ? last : pos;
      index[i] = inside ? pos : dump;
    }
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
