#include "worker/engine/observers/range_search.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace quantd::engine {
namespace {

double Total(const std::vector<double>& counts) {
  double total = 0;
  for (double c : counts) total += c;
  return total;
}

// The bin that holds 0, or -1 when 0 is outside the histogram.
int64_t ZeroBin(const ValueHistogram& h) {
  const double w = h.bin_width();
  if (w <= 0 || h.min > 0 || h.max < 0) return -1;
  const auto n = static_cast<int64_t>(h.counts.size());
  return std::min<int64_t>(n - 1, static_cast<int64_t>(std::floor((0.0 - h.min) / w)));
}

double Center(const ValueHistogram& h, int64_t i) { return h.min + (static_cast<double>(i) + 0.5) * h.bin_width(); }

// A value `cumulative` into the histogram from its low end, spreading each
// bin's values evenly across it.
double ValueAtMass(const ValueHistogram& h, double cumulative) {
  const double w = h.bin_width();
  double seen = 0;
  for (size_t i = 0; i < h.counts.size(); ++i) {
    const double c = h.counts[i];
    if (c > 0 && seen + c >= cumulative) {
      return h.min + (static_cast<double>(i) + (cumulative - seen) / c) * w;
    }
    seen += c;
  }
  return h.max;
}

}  // namespace

double ExpectedQuantizationError(const ValueHistogram& h, ValueRange range, int64_t levels) {
  const double total = Total(h.counts);
  if (total <= 0 || levels < 2) return 0;
  const double lo = std::min(range.min, 0.0);
  const double hi = std::max(range.max, 0.0);
  const double step = (hi - lo) / static_cast<double>(levels - 1);
  const double w = h.bin_width();
  const int64_t zero = ZeroBin(h);
  double error = 0;
  for (size_t i = 0; i < h.counts.size(); ++i) {
    const double n = h.counts[i];
    if (n == 0) continue;
    const double c = Center(h, static_cast<int64_t>(i));
    if (c < lo) {
      error += n * ((c - lo) * (c - lo) + w * w / 12);
    } else if (c > hi) {
      error += n * ((c - hi) * (c - hi) + w * w / 12);
    } else if (static_cast<int64_t>(i) != zero) {
      error += n * step * step / 12;
    }
  }
  return error / total;
}

ValueRange MseOptimalRange(const ValueHistogram& h, int64_t levels) {
  const auto n = static_cast<int64_t>(h.counts.size());
  if (n == 0 || levels < 2 || h.max <= h.min) return {h.min, h.max};
  const double w = h.bin_width();
  // Prefix sums of count, count * center and count * center^2: the clipping
  // error of any tail is then O(1).
  std::vector<double> count(n + 1, 0), first(n + 1, 0), second(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    const double c = Center(h, i), k = h.counts[static_cast<size_t>(i)];
    count[i + 1] = count[i] + k;
    first[i + 1] = first[i] + k * c;
    second[i + 1] = second[i] + k * c * c;
  }
  const int64_t zero = ZeroBin(h);
  const double zero_count = zero >= 0 ? h.counts[static_cast<size_t>(zero)] : 0.0;
  auto edge = [&](int64_t i) { return h.min + static_cast<double>(i) * w; };
  // Candidate bounds are bin edges on their side of 0 (or 0 itself when no
  // value lies beyond it).
  int64_t a_last = 0;
  if (h.min < 0) {
    while (a_last + 1 < n && edge(a_last + 1) <= 0) ++a_last;
  }
  int64_t b_first = n;
  if (h.max > 0) {
    b_first = 1;
    while (b_first < n && edge(b_first) <= 0) ++b_first;
  }
  double best = std::numeric_limits<double>::infinity();
  ValueRange range{h.min, h.max};
  for (int64_t a = 0; a <= a_last; ++a) {
    const double lo = h.min < 0 ? edge(a) : 0.0;
    const double below = second[a] - 2 * lo * first[a] + lo * lo * count[a] + count[a] * w * w / 12;
    for (int64_t b = b_first; b <= n; ++b) {
      const double hi = h.max > 0 ? edge(b) : 0.0;
      const double above_count = count[n] - count[b];
      const double above = (second[n] - second[b]) - 2 * hi * (first[n] - first[b]) + hi * hi * above_count +
                           above_count * w * w / 12;
      const double step = (hi - lo) / static_cast<double>(levels - 1);
      double in_range = count[b] - count[a];
      if (zero >= a && zero < b) in_range -= zero_count;
      const double error = below + above + in_range * step * step / 12;
      if (error < best) {
        best = error;
        range = {lo, hi};
      }
    }
  }
  return range;
}

ValueRange PercentileRange(const ValueHistogram& h, double percentile) {
  const double total = Total(h.counts);
  if (total <= 0) return {h.min, h.max};
  const double tail = total * (100.0 - std::clamp(percentile, 0.0, 100.0)) / 200.0;
  ValueRange range{ValueAtMass(h, tail), ValueAtMass(h, total - tail)};
  if (h.min >= 0) range.min = 0;
  if (h.max <= 0) range.max = 0;
  return range;
}

ValueRange EntropyRange(const ValueHistogram& h, int64_t levels) {
  if (h.counts.empty() || h.bin_width() <= 0) return {h.min, h.max};
  const bool folded = h.min < 0;
  // Magnitudes on bins of the same width starting at 0, at most
  // kMaxMagnitudeBins of them: the search below is quadratic in their number,
  // and a narrow histogram far from 0 (values in [10, 10.01]) would otherwise
  // ask for millions of bins (hours of search).
  constexpr double kMaxMagnitudeBins = 8192;
  const double top = std::max(std::abs(h.min), std::abs(h.max));
  const double w = std::max(h.bin_width(), top / kMaxMagnitudeBins);
  const auto bins = static_cast<int64_t>(std::ceil(top / w));
  std::vector<double> magnitude(static_cast<size_t>(std::max<int64_t>(bins, 1)), 0.0);
  for (size_t i = 0; i < h.counts.size(); ++i) {
    const double c = std::abs(Center(h, static_cast<int64_t>(i)));
    const auto at = std::min<int64_t>(static_cast<int64_t>(magnitude.size()) - 1, static_cast<int64_t>(c / w));
    magnitude[static_cast<size_t>(at)] += h.counts[i];
  }
  // The bin at 0 is left out: after a ReLU it is mostly exact zeros, which
  // quantize exactly, and their spike would otherwise decide the divergence
  // (smeared over a bucket, it favours the narrowest buckets: hard clipping).
  magnitude[0] = 0;
  const int64_t quantized_bins = folded ? levels / 2 : levels;
  const auto n = static_cast<int64_t>(magnitude.size());
  if (n <= quantized_bins) return folded ? ValueRange{-top, top} : ValueRange{0.0, top};

  double best = std::numeric_limits<double>::infinity();
  int64_t best_end = n;
  std::vector<double> p, q;
  double outliers = 0;
  for (int64_t i = n - 1; i >= quantized_bins; --i) outliers += magnitude[static_cast<size_t>(i)];
  for (int64_t end = quantized_bins; end <= n; ++end) {
    if (end > quantized_bins) outliers -= magnitude[static_cast<size_t>(end - 1)];
    // P: the clipped distribution, the tail folded into its last bin.
    p.assign(magnitude.begin(), magnitude.begin() + end);
    p.back() += outliers;
    // Q: the unclipped bins merged into quantized_bins buckets, each
    // bucket's mass spread evenly over its non-empty bins.
    q.assign(static_cast<size_t>(end), 0.0);
    for (int64_t j = 0; j < quantized_bins; ++j) {
      const int64_t from = j * end / quantized_bins;
      const int64_t to = (j + 1) * end / quantized_bins;
      double mass = 0;
      int64_t nonempty = 0;
      for (int64_t k = from; k < to; ++k) {
        mass += magnitude[static_cast<size_t>(k)];
        nonempty += magnitude[static_cast<size_t>(k)] > 0;
      }
      if (nonempty == 0) continue;
      for (int64_t k = from; k < to; ++k) {
        if (magnitude[static_cast<size_t>(k)] > 0) q[static_cast<size_t>(k)] = mass / static_cast<double>(nonempty);
      }
    }
    const double p_total = Total(p), q_total = Total(q);
    if (p_total <= 0 || q_total <= 0) continue;
    double kl = 0;
    for (int64_t k = 0; k < end; ++k) {
      const double pk = p[static_cast<size_t>(k)] / p_total;
      if (pk <= 0) continue;
      // A value P has where Q has none (the folded tail): a small floor
      // keeps the divergence finite and still penalizes it.
      const double qk = std::max(q[static_cast<size_t>(k)] / q_total, 1e-12);
      kl += pk * std::log(pk / qk);
    }
    if (kl < best) {
      best = kl;
      best_end = end;
    }
  }
  const double threshold = static_cast<double>(best_end) * w;
  return folded ? ValueRange{-threshold, threshold} : ValueRange{0.0, threshold};
}

}  // namespace quantd::engine
