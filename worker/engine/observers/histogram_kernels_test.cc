#include "worker/engine/observers/histogram_kernels.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "worker/engine/base/cpu_features.h"

namespace quantd::engine {
namespace {

std::vector<float> TorchHistc(const at::Tensor& x, int64_t bins, double lo, double hi) {
  at::Tensor h = at::histc(x, bins, lo, hi).contiguous();
  return std::vector<float>(h.data_ptr<float>(), h.data_ptr<float>() + h.numel());
}

void ExpectHistcMatchesTorch(int seed) {
  at::manual_seed(seed);
  at::Tensor relu_like = at::relu(at::randn({100, 16, 9, 7}) * 3.7);  // many exact zeros
  at::Tensor wide = at::randn({50000}) * 100 + 3;
  at::Tensor uniform = at::rand({4097}) * 255;
  for (const at::Tensor& x : {relu_like, wide, uniform}) {
    const float* data = x.data_ptr<float>();
    auto [mn, mx] = at::aminmax(x);
    // As HistogramObserver calls it: int()-truncated ranges, some narrower
    // than the data (values outside are skipped) and some wider.
    for (auto [lo, hi] : std::vector<std::pair<double, double>>{
             {std::trunc(mn.item<float>()), std::trunc(mx.item<float>())},
             {-5.0, 7.0},
             {0.0, 0.0},
             {mn.item<float>(), mx.item<float>() * 1.25}}) {
      EXPECT_EQ(Histc(data, x.numel(), 2048, lo, hi), TorchHistc(x, 2048, lo, hi)) << "range " << lo << ".." << hi;
    }
    const MinMax found = FindMinMax(data, x.numel());
    EXPECT_EQ(found.min, mn.item<float>());
    EXPECT_EQ(found.max, mx.item<float>());
  }
}

class HistcTest : public ::testing::TestWithParam<int> {};

TEST_P(HistcTest, MatchesTorchHistcBitForBit) { ExpectHistcMatchesTorch(GetParam()); }

// The portable loops (CPUs without AVX-512) give the same counts.
TEST(HistcPortableTest, MatchesTorchHistcBitForBit) {
  ForcePortableKernelsForTesting(true);
  ExpectHistcMatchesTorch(4);
  ForcePortableKernelsForTesting(false);
}

INSTANTIATE_TEST_SUITE_P(Seeds, HistcTest, ::testing::Values(1, 2, 3));

// Bin edges and their float neighbours: where a shortcut for the division
// in (x - left) * bins / width would truncate differently.
TEST(HistcTest, ValuesOnAndBesideBinEdgesMatchTorch) {
  for (auto [lo, hi] : std::vector<std::pair<float, float>>{{0.0f, 37.0f}, {-3.0f, 5.0f}, {-11.0f, 0.0f}, {2.0f, 2.3f}}) {
    std::vector<float> values;
    const float width = hi - lo;
    for (int k = 0; k <= 2048; ++k) {
      const float edge = lo + static_cast<float>(k) * width / 2048.0f;
      values.push_back(edge);
      values.push_back(std::nextafter(edge, -INFINITY));
      values.push_back(std::nextafter(edge, INFINITY));
    }
    at::Tensor x = at::tensor(values);
    EXPECT_EQ(Histc(values.data(), static_cast<int64_t>(values.size()), 2048, lo, hi), TorchHistc(x, 2048, lo, hi))
        << "range " << lo << ".." << hi;
  }
}

// A ReLU output of zeros and a few subnormals: the data's own range is
// subnormal, its reciprocal infinite. Counted like torch.histc, in bounds.
TEST(HistcTest, SubnormalRangeMatchesTorch) {
  std::vector<float> values(100, 0.0f);
  values[7] = 1e-40f;
  values[50] = 5e-41f;
  values[99] = 3e-42f;
  at::Tensor x = at::tensor(values);
  EXPECT_EQ(Histc(values.data(), 100, 2048, 0.0, 0.0), TorchHistc(x, 2048, 0.0, 0.0));
}

TEST(HistcTest, EmptyRangeIsWidened) {
  std::vector<float> x(10, 4.0f);
  const std::vector<float> hist = Histc(x.data(), 10, 4, 4.0, 4.0);
  EXPECT_EQ(hist, TorchHistc(at::full({10}, 4.0f), 4, 4.0, 4.0));
}

TEST(BinCounterTest, PiecesAddUpToTheWhole) {
  at::manual_seed(5);
  at::Tensor x = at::relu(at::randn({3001}) * 7.0);
  const float* data = x.data_ptr<float>();
  const std::vector<float> whole = Histc(data, x.numel(), 2048, 0.0, 21.0);
  BinCounter counter(2048);
  for (int64_t start = 0; start < x.numel(); start += 1000) {
    counter.Add(data + start, std::min<int64_t>(1000, x.numel() - start), ResolveHistcRange(0.0, 21.0, MinMax{}));
  }
  std::vector<float> pieces(2048, 0.0f);
  counter.AddTo(&pieces);
  EXPECT_EQ(pieces, whole);
}

// HistogramObserver._adjust_min_max, in PyTorch's float32 tensor ops.
AdjustedRange ReferenceAdjust(float old_min, float old_max, MinMax batch, int64_t bins, int64_t upsample) {
  at::Tensor min_val = at::scalar_tensor(old_min, at::kFloat);
  at::Tensor max_val = at::scalar_tensor(old_max, at::kFloat);
  at::Tensor combined_min = at::min(at::scalar_tensor(batch.min, at::kFloat), min_val);
  at::Tensor combined_max = at::max(at::scalar_tensor(batch.max, at::kFloat), max_val);
  at::Tensor hist_bin_width = (max_val - min_val) / static_cast<double>(bins * upsample);
  AdjustedRange r;
  r.downsample_rate = static_cast<int64_t>(
      at::ceil((combined_max - combined_min) / (static_cast<double>(bins) * hist_bin_width)).item<float>());
  at::Tensor e = static_cast<double>(r.downsample_rate) * (static_cast<double>(bins) * hist_bin_width) -
                 (combined_max - combined_min);
  r.min = combined_min.item<float>();
  r.max = (combined_max + e).item<float>();
  r.start_idx = static_cast<int64_t>(at::round((min_val - combined_min) / hist_bin_width).item<float>());
  return r;
}

TEST(AdjustMinMaxTest, MatchesPyTorchsTensorArithmetic) {
  at::manual_seed(11);
  at::Tensor draws = at::rand({400, 4}).contiguous();
  const float* d = draws.data_ptr<float>();
  for (int i = 0; i < 400; ++i) {
    const float old_min = -10.0f * d[4 * i] * (i % 3 == 0 ? 0.0f : 1.0f);
    const float old_max = old_min + 0.01f + 50.0f * d[4 * i + 1];
    // Batches inside the old range, reaching past either end, or both.
    const MinMax batch{old_min - (i % 2) * 5.0f * d[4 * i + 2], old_max + ((i / 2) % 2) * 30.0f * d[4 * i + 3]};
    const AdjustedRange ours = AdjustMinMax(old_min, old_max, batch, 2048, 128);
    const AdjustedRange ref = ReferenceAdjust(old_min, old_max, batch, 2048, 128);
    EXPECT_EQ(ours.min, ref.min) << i;
    EXPECT_EQ(ours.max, ref.max) << i;
    EXPECT_EQ(ours.downsample_rate, ref.downsample_rate) << i;
    EXPECT_EQ(ours.start_idx, ref.start_idx) << i;
  }
}

// A first batch spanning 1e-37 then one spanning 10: the rate (about 1e43)
// fits no int64. PyTorch would allocate 2048 * rate floats and fail; the cast
// was undefined behaviour, and the merge then indexed outside the histogram.
TEST(AdjustMinMaxTest, AnOldRangeTooNarrowToMergeIsFlagged) {
  const AdjustedRange r = AdjustMinMax(1e-37f, 2e-37f, MinMax{0.0f, 10.0f}, 2048, 128);
  EXPECT_FALSE(r.old_fits);
  EXPECT_EQ(r.min, 0.0f);
  EXPECT_EQ(r.max, 10.0f);
  // A width that underflows to zero (denormal bounds) is flagged too.
  EXPECT_FALSE(AdjustMinMax(1e-45f, 3e-45f, MinMax{-1.0f, 1.0f}, 2048, 128).old_fits);
  // At the largest rate that fits, the merge still happens: the rate is the
  // new span in old widths times the upsample factor.
  const AdjustedRange widest =
      AdjustMinMax(0.0f, 1.0f, MinMax{0.0f, static_cast<float>(kMaxDownsampleRate / 128)}, 2048, 128);
  EXPECT_TRUE(widest.old_fits);
  EXPECT_EQ(widest.downsample_rate, kMaxDownsampleRate);
}

// PyTorch 1.13's HistogramObserver._combine_histograms, in tensor ops.
std::vector<float> ReferenceCombine(const std::vector<float>& new_hist, const std::vector<float>& old_hist,
                                    int64_t upsample, int64_t downsample, int64_t start_idx) {
  const int64_t bins = static_cast<int64_t>(old_hist.size());
  at::Tensor orig = at::tensor(new_hist);
  at::Tensor upsampled = at::tensor(old_hist).repeat_interleave(upsample);
  at::Tensor wide = at::zeros({bins * downsample});
  wide.slice(0, start_idx, start_idx + bins * upsample).copy_(upsampled);
  at::Tensor integral = at::cumsum(wide, 0, at::kDouble).slice(0, downsample - 1, c10::nullopt, downsample);
  at::Tensor shifted = at::zeros({bins});
  shifted.slice(0, 1, bins).copy_(integral.slice(0, 0, -1));
  at::Tensor result = (orig + ((integral - shifted) / static_cast<double>(upsample)).to(at::kFloat)).contiguous();
  return std::vector<float>(result.data_ptr<float>(), result.data_ptr<float>() + bins);
}

// CombineHistograms against the tensor expression, for old/new histograms
// given as tensors and each (downsample, start_idx) case.
void ExpectCombineMatches(const at::Tensor& old_t, const at::Tensor& new_t, int64_t upsample,
                          const std::vector<std::pair<int64_t, int64_t>>& cases) {
  const auto bins = static_cast<size_t>(old_t.numel());
  const std::vector<float> old_hist(old_t.data_ptr<float>(), old_t.data_ptr<float>() + bins);
  const std::vector<float> new_hist(new_t.data_ptr<float>(), new_t.data_ptr<float>() + bins);
  for (auto [downsample, start] : cases) {
    std::vector<float> ours = new_hist;
    CombineHistograms(&ours, old_hist, upsample, downsample, start);
    EXPECT_EQ(ours, ReferenceCombine(new_hist, old_hist, upsample, downsample, start)) << downsample << " " << start;
  }
}

TEST(CombineHistogramsTest, MatchesPyTorchsTensorExpression) {
  at::manual_seed(7);
  const int64_t bins = 64;
  at::Tensor old_t = at::floor(at::rand({bins}) * 1000).contiguous();
  ExpectCombineMatches(old_t, at::floor(at::rand({bins}) * 1000).contiguous(), 16, {{16, 0}, {23, 5}, {20, 100}, {40, 17}});
}

// At the real sizes, with the fractional counts earlier merges leave behind.
TEST(CombineHistogramsTest, MatchesPyTorchAtObserverSizes) {
  at::manual_seed(9);
  const int64_t bins = 2048;
  at::Tensor old_t = (at::floor(at::rand({bins}) * 5000) / 128 + at::rand({bins}) * 1e-3).contiguous();
  ExpectCombineMatches(old_t, at::floor(at::rand({bins}) * 5000).contiguous(), 128,
                       {{128, 0}, {129, 0}, {131, 300}, {200, 40000}});
}

// Past a million counts PyTorch's merge leaves negative counts in empty bins
// and loses mass; SpreadHistogram gives each new bin its exact share.
TEST(SpreadHistogramTest, KeepsEveryCountWhereCombineRoundsItAway) {
  const int64_t bins = 2048, upsample = 128;
  std::vector<float> old_hist(static_cast<size_t>(bins), 0.0f);
  double total = 0;
  for (int64_t i = 0; i < bins / 2; ++i) {  // the upper half stays empty
    old_hist[static_cast<size_t>(i)] = static_cast<float>(4000 - 3 * i) + 0.37f;
    total += old_hist[static_cast<size_t>(i)];
  }
  ASSERT_GT(total, 1e6);
  for (auto [downsample, start] : std::vector<std::pair<int64_t, int64_t>>{{128, 0}, {131, 0}, {200, 40000}}) {
    std::vector<float> pytorch(static_cast<size_t>(bins), 0.0f), spread(static_cast<size_t>(bins), 0.0f);
    CombineHistograms(&pytorch, old_hist, upsample, downsample, start);
    SpreadHistogram(&spread, old_hist, upsample, downsample, start);
    EXPECT_LT(*std::min_element(pytorch.begin(), pytorch.end()), 0.0f) << "PyTorch's rounding no longer shows";
    EXPECT_GE(*std::min_element(spread.begin(), spread.end()), 0.0f);
    double spread_total = 0;
    for (float c : spread) spread_total += c;
    EXPECT_NEAR(spread_total, total, total * 1e-6) << downsample << " " << start;
    // Where the old bins end, so do the new ones: the last bin holding counts
    // is the one the last old count maps into.
    const int64_t last_fine = start + (bins / 2) * upsample - 1;
    const auto holds_counts = [](float c) { return c > 0; };
    const int64_t empty_at_top = std::find_if(spread.rbegin(), spread.rend(), holds_counts) - spread.rbegin();
    EXPECT_EQ(bins - 1 - empty_at_top, last_fine / downsample) << downsample << " " << start;
  }
}

TEST(QuantizationErrorTest, GrowsWhenTheRangeClipsMass) {
  std::vector<float> hist(2048, 0.0f);
  for (int i = 0; i < 2048; ++i) hist[static_cast<size_t>(i)] = static_cast<float>(1000 - std::abs(i - 1024) / 2);
  const double full = QuantizationError(hist.data(), 2048, 0.01, 0, 2047, 256);
  const double clipped = QuantizationError(hist.data(), 2048, 0.01, 700, 1300, 256);
  EXPECT_GT(full, 0.0);
  EXPECT_GT(clipped, full);  // clipping 40% of a wide distribution costs more than coarse steps
  EXPECT_EQ(QuantizationError(hist.data(), 2048, 0.0, 0, 2047, 256), 0.0);
}

}  // namespace
}  // namespace quantd::engine
