#include "worker/engine/observers/histogram_kernels.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include <immintrin.h>

#include "worker/engine/base/cpu_features.h"

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
    // Clamped in float before the cast, so a degenerate range (zero or
    // subnormal width: NaN or inf quotients) stays in bounds instead of UB.
    const float q = (clamped - left) * scale / width;
    const float bounded = std::min(std::max(0.0f, q), static_cast<float>(last));  // NaN -> 0
    index[i] = inside ? static_cast<int32_t>(bounded) : dump;
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

// GCC 12 flags the "undefined" vectors inside its own AVX-512 intrinsics.
#pragma GCC diagnostic push
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"
// Bins of 16 floats per step, as BinIndices computes them; writes the
// indices of in-range elements outside `zero_bin` to `out` and counts those
// in `zero_bin`. Returns how many indices it wrote.
__attribute__((target("avx512f"))) int64_t CompactBinIndicesAvx512(const float* x, int64_t m, float left, float right,
                                                                      float scale, float width, int32_t last,
                                                                      int32_t zero_bin, int32_t* out,
                                                                      int64_t* in_zero_bin) {
  const __m512 v_left = _mm512_set1_ps(left);
  const __m512 v_right = _mm512_set1_ps(right);
  const __m512 v_scale = _mm512_set1_ps(scale);
  const __m512 v_width = _mm512_set1_ps(width);
  const __m512 v_inverse_width = _mm512_set1_ps(1.0f / width);
  const __m512 v_half = _mm512_set1_ps(0.5f);
  const __m512 v_margin = _mm512_set1_ps(0x1p-21f);  // 4 ulp, relative
  const __m512i v_last = _mm512_set1_epi32(last);
  const __m512i v_zero_index = _mm512_setzero_si512();
  const __m512i v_zero_bin = _mm512_set1_epi32(zero_bin);
  int64_t written = 0;
  int64_t zeros = 0;
  for (int64_t i = 0; i < m; i += 16) {
    const __mmask16 valid = m - i >= 16 ? __mmask16{0xffff} : static_cast<__mmask16>((1u << (m - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(valid, x + i);
    const __mmask16 inside = _mm512_mask_cmp_ps_mask(_mm512_mask_cmp_ps_mask(valid, v, v_left, _CMP_GE_OQ), v,
                                                     v_right, _CMP_LE_OQ);
    // (x - left) * bins / width, truncated. A multiply by the reciprocal is
    // within 3 ulp of the correctly rounded quotient, so it truncates the
    // same unless it lies that close to an integer; those rare lanes divide.
    const __m512 t = _mm512_mul_ps(_mm512_sub_ps(v, v_left), v_scale);
    __m512 q = _mm512_mul_ps(t, v_inverse_width);
    const __m512 nearest = _mm512_roundscale_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 distance = _mm512_abs_ps(_mm512_sub_ps(q, nearest));
    const __mmask16 close = _mm512_mask_cmp_ps_mask(
        _mm512_mask_cmp_ps_mask(inside, q, v_half, _CMP_GE_OQ), distance, _mm512_mul_ps(q, v_margin), _CMP_LE_OQ);
    if (close != 0) q = _mm512_mask_div_ps(q, close, t, v_width);
    const __m512i pos = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvttps_epi32(q), v_zero_index), v_last);
    const __mmask16 in_zero = _mm512_mask_cmpeq_epi32_mask(inside, pos, v_zero_bin);
    const __mmask16 keep = inside & static_cast<__mmask16>(~in_zero);
    _mm512_storeu_si512(out + written, _mm512_maskz_compress_epi32(keep, pos));
    written += __builtin_popcount(keep);
    zeros += __builtin_popcount(in_zero);
  }
  *in_zero_bin += zeros;
  return written;
}

// Running extrema of 64 floats per step; the masked tail keeps the identity.
__attribute__((target("avx512f"))) void MinMaxAvx512(const float* data, int64_t n, float* lo_out, float* hi_out) {
  __m512 lo[4], hi[4];
  for (int k = 0; k < 4; ++k) {
    lo[k] = _mm512_set1_ps(*lo_out);
    hi[k] = _mm512_set1_ps(*hi_out);
  }
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    for (int k = 0; k < 4; ++k) {
      const __m512 v = _mm512_loadu_ps(data + i + 16 * k);
      lo[k] = _mm512_min_ps(v, lo[k]);
      hi[k] = _mm512_max_ps(v, hi[k]);
    }
  }
  for (; i < n; i += 16) {
    const __mmask16 valid = n - i >= 16 ? __mmask16{0xffff} : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(valid, data + i);
    lo[0] = _mm512_mask_min_ps(lo[0], valid, v, lo[0]);
    hi[0] = _mm512_mask_max_ps(hi[0], valid, v, hi[0]);
  }
  *lo_out = _mm512_reduce_min_ps(_mm512_min_ps(_mm512_min_ps(lo[0], lo[1]), _mm512_min_ps(lo[2], lo[3])));
  *hi_out = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(hi[0], hi[1]), _mm512_max_ps(hi[2], hi[3])));
}
#pragma GCC diagnostic pop

}  // namespace

namespace {

// Exponent of the lowest set bit of a finite, nonzero double.
int LowestBitExponent(double d) {
  int exponent = 0;
  const double mantissa = std::frexp(std::fabs(d), &exponent);  // d = mantissa * 2^exponent, mantissa in [0.5, 1)
  const auto bits = static_cast<uint64_t>(std::ldexp(mantissa, 53));
  return exponent - 53 + __builtin_ctzll(bits);
}

// integral + v + v + ... (`count` times), rounded after every addition as a
// sequential float64 cumsum does. When every partial sum is exactly
// representable (all terms are multiples of one power of two and the total
// stays well inside 53 bits), that equals one multiply-add.
double AddRepeated(double integral, float v, int64_t count) {
  if (v == 0.0f || count <= 0) return integral;
  const double term = static_cast<double>(v);
  int q = LowestBitExponent(term);
  if (integral != 0.0) q = std::min(q, LowestBitExponent(integral));
  const double total = integral + static_cast<double>(count) * term;  // count * v is exact: 24 + 29 bits
  if (count < (int64_t{1} << 29) && std::fabs(integral) + std::fabs(static_cast<double>(count) * term) <
                                        std::ldexp(1.0, 52 + q)) {
    return total;
  }
  for (int64_t i = 0; i < count; ++i) integral += term;
  return integral;
}

}  // namespace

void CombineHistograms(std::vector<float>* new_hist, const std::vector<float>& old_hist, int64_t upsample,
                       int64_t downsample, int64_t start_idx) {
  const int64_t bins = static_cast<int64_t>(old_hist.size());
  const int64_t fine = bins * downsample;
  // Fine bin j holds old_hist[(j - start_idx) / upsample] inside the old
  // range, 0 outside. Integrate in order, as torch.cumsum(dtype=double) does,
  // one run of equal fine bins at a time.
  const int64_t old_begin = start_idx;
  const int64_t old_end = start_idx + bins * upsample;
  double integral = 0.0;
  float shifted = 0.0f;  // the previous integral, stored in a float tensor by PyTorch
  for (int64_t k = 0; k < bins; ++k) {
    const int64_t begin = std::max(k * downsample, old_begin);
    const int64_t end = std::min({fine, k * downsample + downsample, old_end});
    for (int64_t j = begin; j < end;) {
      const int64_t src = (j - start_idx) / upsample;
      const int64_t run_end = std::min(end, start_idx + (src + 1) * upsample);
      integral = AddRepeated(integral, old_hist[static_cast<size_t>(src)], run_end - j);
      j = run_end;
    }
    const double interpolated = (integral - static_cast<double>(shifted)) / static_cast<double>(upsample);
    (*new_hist)[static_cast<size_t>(k)] += static_cast<float>(interpolated);
    shifted = static_cast<float>(integral);
  }
}

void SpreadHistogram(std::vector<float>* new_hist, const std::vector<float>& old_hist, int64_t upsample,
                     int64_t downsample, int64_t start_idx) {
  const int64_t bins = static_cast<int64_t>(old_hist.size());
  const int64_t fine = bins * downsample;
  const int64_t old_end = start_idx + bins * upsample;
  for (int64_t k = 0; k < bins; ++k) {
    const int64_t begin = std::max(k * downsample, start_idx);
    const int64_t end = std::min({fine, k * downsample + downsample, old_end});
    double share = 0.0;
    for (int64_t j = begin; j < end;) {
      const int64_t src = (j - start_idx) / upsample;
      const int64_t run_end = std::min(end, start_idx + (src + 1) * upsample);
      share += static_cast<double>(old_hist[static_cast<size_t>(src)]) * static_cast<double>(run_end - j);
      j = run_end;
    }
    if (share != 0.0) (*new_hist)[static_cast<size_t>(k)] += static_cast<float>(share / static_cast<double>(upsample));
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

bool HasNaN(const float* data, int64_t n) {
  // Branch-free, so that it vectorizes: NaN is the one value unequal to itself.
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) nan |= data[i] != data[i];
  return nan;
}

MinMax FindMinMax(const float* data, int64_t n) {
  if (CpuHasAvx512()) {
    MinMax result{std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
    MinMaxAvx512(data, n, &result.min, &result.max);
    return result;
  }
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

HistcRange ResolveHistcRange(double lo, double hi, MinMax data) {
  if (lo == hi && data.min <= data.max) {
    lo = data.min;
    hi = data.max;
  }
  if (lo == hi) {
    lo -= 1;
    hi += 1;
  }
  return {static_cast<float>(lo), static_cast<float>(hi)};
}

BinCounter::BinCounter(int64_t bins) : bins_(bins), counts_(static_cast<size_t>((bins + 1) * kCopies), 0) {}

void BinCounter::Clear() { std::fill(counts_.begin(), counts_.end(), 0u); }

void BinCounter::Add(const float* data, int64_t n, HistcRange range) {
  // LibTorch maps pos = int64((x - left) * bins / (right - left)) in float
  // arithmetic, the closed last bin taking x == right.
  const float left = range.left;
  const float right = range.right;
  const float width = right - left;
  const float scale = static_cast<float>(bins_);
  const int32_t last = static_cast<int32_t>(bins_ - 1);
  const int32_t dump = static_cast<int32_t>(bins_);
  constexpr int64_t kBlock = 1024;
  int32_t index[kBlock + 16];
  auto scatter = [&](int64_t m) {
    int64_t i = 0;
    for (; i + kCopies <= m; i += kCopies) {
      for (int c = 0; c < kCopies; ++c) ++counts_[static_cast<size_t>(index[i + c] * kCopies + c)];
    }
    for (; i < m; ++i) ++counts_[static_cast<size_t>(index[i] * kCopies)];
  };
  // The reciprocal shortcut needs a normal reciprocal (its error bound).
  const float inverse_width = 1.0f / width;
  if (CpuHasAvx512() && std::isnormal(inverse_width) && std::isnormal(width)) {
    // Elements in the bin of 0.0 (ReLU's spike) are only counted, and
    // out-of-range ones dropped, before the scalar scatter.
    const bool zero_inside = left <= 0.0f && 0.0f <= right;
    const int32_t zero_bin =
        zero_inside ? static_cast<int32_t>(std::min(std::max(0.0f, (0.0f - left) * scale / width),
                                                    static_cast<float>(last)))
                    : -1;
    int64_t in_zero_bin = 0;
    for (int64_t start = 0; start < n; start += kBlock) {
      const int64_t m = std::min(kBlock, n - start);
      scatter(CompactBinIndicesAvx512(data + start, m, left, right, scale, width, last, zero_bin, index, &in_zero_bin));
    }
    if (zero_bin >= 0) counts_[static_cast<size_t>(zero_bin * kCopies)] += static_cast<uint32_t>(in_zero_bin);
    return;
  }
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t m = std::min(kBlock, n - start);
    BinIndices(data + start, m, left, right, scale, width, last, dump, index);
    scatter(m);
  }
}

void BinCounter::Merge(const BinCounter& other) {
  for (size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i];
}

void BinCounter::AddTo(std::vector<float>* hist) const {
  for (int64_t b = 0; b < bins_; ++b) {
    uint64_t total = 0;
    for (int c = 0; c < kCopies; ++c) total += counts_[static_cast<size_t>(b * kCopies + c)];
    (*hist)[static_cast<size_t>(b)] += static_cast<float>(total);
  }
}

std::vector<float> Histc(const float* data, int64_t n, int64_t bins, double lo, double hi) {
  MinMax extrema{std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
  if (lo == hi && n > 0) extrema = FindMinMax(data, n);
  BinCounter counter(bins);
  counter.Add(data, n, ResolveHistcRange(lo, hi, extrema));
  std::vector<float> hist(static_cast<size_t>(bins), 0.0f);
  counter.AddTo(&hist);
  return hist;
}

AdjustedRange AdjustMinMax(float old_min, float old_max, MinMax batch, int64_t bins, int64_t upsample) {
  // One float32 operation per statement, as the tensor expression evaluates
  // (this file is compiled with -ffp-contract=off: no fused multiply-adds).
  AdjustedRange r;
  r.min = std::min(batch.min, old_min);
  const float combined_max = std::max(batch.max, old_max);
  const float hist_bin_width = (old_max - old_min) / static_cast<float>(bins * upsample);
  const float coarse_width = static_cast<float>(bins) * hist_bin_width;
  const float span = combined_max - r.min;
  const float rate = std::ceil(span / coarse_width);
  // Also false for a width that underflowed to 0 (rate +inf, or NaN).
  if (!(rate <= static_cast<float>(kMaxDownsampleRate))) {
    r.max = combined_max;
    r.downsample_rate = 0;
    r.old_fits = false;
    return r;
  }
  r.downsample_rate = static_cast<int64_t>(rate);
  const float e = static_cast<float>(r.downsample_rate) * coarse_width - span;
  r.max = combined_max + e;
  r.start_idx = static_cast<int64_t>(std::nearbyint((old_min - r.min) / hist_bin_width));
  return r;
}

}  // namespace quantd::engine
