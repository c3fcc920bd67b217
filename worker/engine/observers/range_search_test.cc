#include "worker/engine/observers/range_search.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace quantd::engine {
namespace {

constexpr int64_t kBins = 2048;

ValueHistogram Histogram(const std::vector<double>& values) {
  ValueHistogram h;
  h.min = *std::min_element(values.begin(), values.end());
  h.max = *std::max_element(values.begin(), values.end());
  h.counts.assign(kBins, 0.0);
  const double w = h.bin_width();
  for (double v : values) {
    const auto i = std::min<int64_t>(kBins - 1, static_cast<int64_t>((v - h.min) / w));
    h.counts[static_cast<size_t>(i)] += 1;
  }
  return h;
}

// The mean squared error of really quantizing `values` to `levels` affine
// levels over `range` (widened to hold 0, 0 exact), round to nearest.
double SimulatedError(const std::vector<double>& values, ValueRange range, int64_t levels) {
  const double lo = std::min(range.min, 0.0), hi = std::max(range.max, 0.0);
  const double step = (hi - lo) / static_cast<double>(levels - 1);
  const double zero_point = std::round(-lo / step);
  double error = 0;
  for (double v : values) {
    const double q = std::clamp(std::round(v / step) + zero_point, 0.0, static_cast<double>(levels - 1));
    const double back = (q - zero_point) * step;
    error += (v - back) * (v - back);
  }
  return error / static_cast<double>(values.size());
}

std::vector<double> Gaussian(size_t n, double sigma, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal(0.0, sigma);
  std::vector<double> values(n);
  for (double& v : values) v = normal(gen);
  return values;
}

// ReLU of a Laplace distribution (half the values exactly 0), plus outliers.
std::vector<double> ReluLaplace(size_t n, unsigned seed, std::vector<double> outliers) {
  std::mt19937 gen(seed);
  std::exponential_distribution<double> exponential(1.0);
  std::bernoulli_distribution positive(0.5);
  std::vector<double> values(n);
  for (double& v : values) v = positive(gen) ? exponential(gen) : 0.0;
  values.insert(values.end(), outliers.begin(), outliers.end());
  return values;
}

TEST(RangeSearchTest, TheErrorModelMatchesRealQuantization) {
  const std::vector<double> values = Gaussian(200000, 1.0, 1);
  const ValueHistogram h = Histogram(values);
  for (double clip : {2.0, 3.0, 4.0, 6.0}) {
    const ValueRange range{-clip, clip};
    const double model = ExpectedQuantizationError(h, range, 256);
    const double real = SimulatedError(values, range, 256);
    EXPECT_NEAR(model / real, 1.0, 0.05) << "clip " << clip;
  }
}

TEST(RangeSearchTest, MseRangeBeatsEveryOtherRangeOnAGaussian) {
  const std::vector<double> values = Gaussian(200000, 1.0, 2);
  const ValueHistogram h = Histogram(values);
  for (int64_t levels : {256, 128, 16}) {
    const ValueRange best = MseOptimalRange(h, levels);
    const double best_error = SimulatedError(values, best, levels);
    // Clipping pays on a Gaussian: the range is well inside the extrema.
    EXPECT_LT(best.max, 0.9 * h.max) << levels;
    EXPECT_GT(best.min, 0.9 * h.min) << levels;
    for (double lo = 1.0; lo <= 5.0; lo += 0.25) {
      for (double hi = 1.0; hi <= 5.0; hi += 0.25) {
        EXPECT_LE(best_error, SimulatedError(values, {-lo, hi}, levels) * 1.01)
            << levels << " levels: [" << best.min << ", " << best.max << "] vs [-" << lo << ", " << hi << "]";
      }
    }
    EXPECT_LT(best_error, SimulatedError(values, {h.min, h.max}, levels));
  }
  // Fewer levels: rounding costs more, so the optimum clips harder.
  EXPECT_LT(MseOptimalRange(h, 16).max, MseOptimalRange(h, 256).max);
}

TEST(RangeSearchTest, MseBarelyClipsAUniformDistribution) {
  // Clipping a uniform tail by d saves rounding error in proportion to d
  // and costs clipping error in proportion to d^3: the optimum clips a hair.
  std::vector<double> values;
  for (int i = 0; i <= 100000; ++i) values.push_back(10.0 * i / 100000.0);
  const ValueHistogram h = Histogram(values);
  const ValueRange range = MseOptimalRange(h, 256);
  EXPECT_EQ(range.min, 0.0);
  EXPECT_GT(range.max, 9.9);
  EXPECT_LE(range.max, 10.0);
  EXPECT_LE(SimulatedError(values, range, 256), SimulatedError(values, {0.0, 10.0}, 256));
}

TEST(RangeSearchTest, MseClipsAHeavyTailAfterAReluAndIgnoresTheExactZeros) {
  const std::vector<double> values = ReluLaplace(100000, 3, {});
  const ValueHistogram h = Histogram(values);
  const ValueRange range = MseOptimalRange(h, 256);
  EXPECT_EQ(range.min, 0.0);
  EXPECT_LT(range.max, h.max - 2 * h.bin_width());
  EXPECT_LT(SimulatedError(values, range, 256), SimulatedError(values, {0.0, h.max}, 256));
  // Ten times as many exact zeros (quantized exactly) do not move the range.
  ValueHistogram more_zeros = h;
  more_zeros.counts[0] += 10 * 100000;
  const ValueRange same = MseOptimalRange(more_zeros, 256);
  EXPECT_EQ(same.max, range.max);
}

TEST(RangeSearchTest, PercentileLeavesOutHalfOfTheRestAtEachEnd) {
  std::vector<double> values;
  for (int i = 0; i < 100000; ++i) values.push_back(-50.0 + 100.0 * (i + 0.5) / 100000.0);
  const ValueHistogram h = Histogram(values);
  const ValueRange range = PercentileRange(h, 99.0);
  EXPECT_NEAR(range.min, -49.5, 0.1);
  EXPECT_NEAR(range.max, 49.5, 0.1);
  const ValueRange all = PercentileRange(h, 100.0);
  EXPECT_NEAR(all.min, -50.0, 0.01);
  EXPECT_NEAR(all.max, 50.0, 0.01);
  // Non-negative values keep 0 as their lower bound.
  const ValueRange relu = PercentileRange(Histogram(ReluLaplace(100000, 4, {})), 99.9);
  EXPECT_EQ(relu.min, 0.0);
  EXPECT_GT(relu.max, 4.0);  // the 99.95th percentile of Laplace(1) given > 0 is ~6.9
}

TEST(RangeSearchTest, EntropyKeepsAUniformDistributionWholeAndClipsAnOutlier) {
  std::vector<double> uniform;
  for (int i = 0; i <= 100000; ++i) uniform.push_back(10.0 * i / 100000.0);
  const ValueHistogram h = Histogram(uniform);
  const ValueRange whole = EntropyRange(h, 256);
  EXPECT_EQ(whole.min, 0.0);
  EXPECT_NEAR(whole.max, 10.0, 2 * h.bin_width());

  const std::vector<double> values = ReluLaplace(100000, 5, {60.0});
  const ValueRange clipped = EntropyRange(Histogram(values), 256);
  EXPECT_EQ(clipped.min, 0.0);
  EXPECT_GT(clipped.max, 3.0);
  EXPECT_LT(clipped.max, 30.0);
  // As with MSE, a spike of exact zeros (most of a ReLU's output) does not
  // pull the range in.
  ValueHistogram more_zeros = Histogram(values);
  more_zeros.counts[0] += 10 * 100000;
  EXPECT_EQ(EntropyRange(more_zeros, 256).max, clipped.max);
  // Signed values: symmetric about 0.
  const ValueRange symmetric = EntropyRange(Histogram(Gaussian(100000, 1.0, 6)), 256);
  EXPECT_EQ(symmetric.min, -symmetric.max);
  EXPECT_GT(symmetric.max, 2.0);
}

// Values in [10, 10.01]: 2048 bins of 5e-6 would have made 2 million bins of
// magnitude from 0, and a search quadratic in them (hours); coarser bins far
// from the data keep it quick, and the range still covers the values.
TEST(RangeSearchTest, EntropyOnANarrowHistogramFarFromZeroIsQuickAndKeepsTheValues) {
  std::vector<double> narrow;
  for (int i = 0; i <= 10000; ++i) narrow.push_back(10.0 + 0.01 * i / 10000.0);
  const ValueHistogram h = Histogram(narrow);
  const ValueRange range = EntropyRange(h, 256);  // before: hours (the test's timeout)
  EXPECT_EQ(range.min, 0.0);
  EXPECT_GE(range.max, 10.0);
  EXPECT_LE(range.max, 10.02);
}

}  // namespace
}  // namespace quantd::engine
