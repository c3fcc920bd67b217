#include "worker/engine/observers/observer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "worker/engine/qconfig/qconfig.h"

namespace quantd::engine {
namespace {

ObserverSpec Spec(ObserverKind kind, QScheme scheme, bool signed_int8, bool reduce_range = false) {
  ObserverSpec s;
  s.kind = kind;
  s.qscheme = scheme;
  s.signed_int8 = signed_int8;
  s.reduce_range = reduce_range;
  return s;
}

TEST(MinMaxObserverTest, AffineQParamsFollowPyTorchFormula) {
  auto observer = MakeObserver(Spec(ObserverKind::kMinMax, QScheme::kPerTensorAffine, false));
  ASSERT_TRUE(observer.ok());
  (*observer)->Observe(at::tensor({-1.0f, 0.5f}));
  (*observer)->Observe(at::tensor({2.0f, 0.0f}));
  auto q = (*observer)->Compute();
  ASSERT_TRUE(q.ok());
  // scale = (2 - (-1)) / 255, zero_point = 0 - round(-1 / scale) = 85.
  EXPECT_FLOAT_EQ(q->scale[0], 3.0f / 255.0f);
  EXPECT_EQ(q->zero_point[0], 85);
  EXPECT_EQ(q->quant_max, 255);
}

TEST(MinMaxObserverTest, ReduceRangeAndSymmetric) {
  auto reduced = MakeObserver(Spec(ObserverKind::kMinMax, QScheme::kPerTensorAffine, false, true));
  (*reduced)->Observe(at::tensor({0.0f, 127.0f}));
  EXPECT_FLOAT_EQ((*reduced)->Compute()->scale[0], 1.0f);  // 0..127
  auto symmetric = MakeObserver(Spec(ObserverKind::kMinMax, QScheme::kPerTensorSymmetric, true));
  (*symmetric)->Observe(at::tensor({-2.55f, 1.0f}));
  auto q = (*symmetric)->Compute();
  EXPECT_FLOAT_EQ(q->scale[0], 2.55f / 127.5f);
  EXPECT_EQ(q->zero_point[0], 0);
}

TEST(MinMaxObserverTest, NoDataIsAnError) {
  auto observer = MakeObserver(Spec(ObserverKind::kMinMax, QScheme::kPerTensorAffine, false));
  EXPECT_EQ((*observer)->Compute().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(MovingAverageObserverTest, AveragesExtrema) {
  auto observer = MakeObserver(Spec(ObserverKind::kMovingAverageMinMax, QScheme::kPerTensorAffine, false));
  (*observer)->Observe(at::tensor({0.0f, 100.0f}));
  (*observer)->Observe(at::tensor({0.0f, 200.0f}));
  EXPECT_FLOAT_EQ((*observer)->ObservedRange().second, 101.0f);  // 100 + 0.01 * (200 - 100)
}

TEST(PerChannelObserverTest, OneScalePerOutputChannel) {
  auto observer = MakeObserver(Spec(ObserverKind::kPerChannelMinMax, QScheme::kPerChannelSymmetric, true));
  at::Tensor w = at::zeros({3, 2, 1, 1});
  w[0][0][0][0] = 1.0f;
  w[1][1][0][0] = -2.0f;
  w[2][0][0][0] = 0.5f;
  (*observer)->Observe(w);
  auto q = (*observer)->Compute();
  ASSERT_EQ(q->scale.size(), 3u);
  EXPECT_FLOAT_EQ(q->scale[1], 2.0f / 127.5f);
  EXPECT_TRUE(q->per_channel);
}

TEST(HistogramObserverTest, RangeCoversABoundedDistribution) {
  auto observer = MakeObserver(Spec(ObserverKind::kHistogram, QScheme::kPerTensorAffine, false));
  at::manual_seed(0);
  for (int i = 0; i < 4; ++i) (*observer)->Observe(at::rand({10000}) * (10.0 + i));
  auto q = (*observer)->Compute();
  ASSERT_TRUE(q.ok());
  const auto [lo, hi] = (*observer)->ObservedRange();
  EXPECT_LE(lo, 0.5f);
  EXPECT_GT(hi, 9.0f);  // a uniform distribution has no outliers to clip
  EXPECT_LE(hi, 13.5f);
}

// PyTorch 1.13 keeps a lone far outlier: its greedy search stops at the first
// step that increases the L2 error. Figures from torch.ao's HistogramObserver
// on the same data (same generator and seed).
TEST(HistogramObserverTest, MatchesPyTorchOnALoneOutlier) {
  auto observer = MakeObserver(Spec(ObserverKind::kHistogram, QScheme::kPerTensorAffine, false));
  at::manual_seed(1);
  at::Tensor x = at::randn({100000});
  x[0] = 1000.0f;
  (*observer)->Observe(x);
  auto q = (*observer)->Compute();
  ASSERT_TRUE(q.ok());
  EXPECT_NEAR(q->scale[0], 3.9371f, 1e-4);
  EXPECT_EQ(q->zero_point[0], 1);
}

// Merging batches interpolates PyTorch's histogram in float32: past 2^24
// counts some bins go slightly negative, and its cumulative sum dips. The
// search must then scan as PyTorch does: a binary search on that sum stopped
// at another bin (range 505.10 here, scale 1.9808). Figures from torch.ao's
// HistogramObserver on the same batches (same generator and seed).
TEST(HistogramObserverTest, MatchesPyTorchWhenMergedCountsDip) {
  auto observer = MakeObserver(Spec(ObserverKind::kHistogram, QScheme::kPerTensorAffine, false));
  ASSERT_TRUE(observer.ok());
  at::manual_seed(121);
  for (int i = 0; i < 5; ++i) {
    (*observer)->Observe(at::relu(at::randn({50, 8, 16, 16})).pow(3) * std::pow(1.0 + i, 1.5));
  }
  auto q = (*observer)->Compute();
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_FLOAT_EQ(q->scale[0], 2.0267493724823f);
  EXPECT_EQ(q->zero_point[0], 0);
}

// Calibration observes each sub-batch as soon as it is computed. Batches fed
// that way, in pieces, must give what the same batches give whole, also when
// a late piece moves the batch's range (its earlier pieces are recounted) and
// when the int()-truncated range is empty (histc then uses the batch's own
// extrema, not a piece's).
TEST(HistogramObserverTest, BatchesInPiecesEqualWholeBatches) {
  const ObserverSpec spec = Spec(ObserverKind::kHistogram, QScheme::kPerTensorAffine, false, true);
  at::manual_seed(3);
  for (double magnitude : {40.0, 0.8}) {
    auto whole = MakeObserver(spec);
    auto pieces = MakeObserver(spec);
    for (int b = 0; b < 6; ++b) {
      at::Tensor batch = at::relu(at::randn({8, 16, 5, 5}) * magnitude);
      batch[7][3][2][2] = static_cast<float>(magnitude * (2 + b));  // the last piece extends the range
      (*whole)->Observe(batch);
      for (int64_t row = 0; row < 8; row += 2) (*pieces)->ObserveChunk(batch.slice(0, row, row + 2));
      (*pieces)->EndBatch();
    }
    auto q_whole = (*whole)->Compute();
    auto q_pieces = (*pieces)->Compute();
    ASSERT_TRUE(q_whole.ok() && q_pieces.ok());
    EXPECT_EQ(q_pieces->scale, q_whole->scale) << magnitude;
    EXPECT_EQ(q_pieces->zero_point, q_whole->zero_point) << magnitude;
    EXPECT_EQ((*pieces)->ObservedRange(), (*whole)->ObservedRange()) << magnitude;
  }
}

// Accuracy-aware tuning calibrates once and asks the same histogram for
// several specs: each answer must equal an observer of that spec fed the
// same batches.
TEST(HistogramObserverTest, ComputeAsEqualsCalibratingWithThatSpec) {
  const ObserverSpec base = Spec(ObserverKind::kHistogram, QScheme::kPerTensorAffine, false, true);
  std::vector<ObserverSpec> others;
  for (RangeEstimator estimator : {RangeEstimator::kPyTorchL2, RangeEstimator::kMse, RangeEstimator::kPercentile,
                                   RangeEstimator::kEntropy}) {
    for (bool reduce_range : {false, true}) {
      ObserverSpec spec = base;
      spec.estimator = estimator;
      spec.reduce_range = reduce_range;
      spec.percentile = 99.9;
      others.push_back(spec);
    }
  }
  at::manual_seed(5);
  std::vector<at::Tensor> batches;
  for (int b = 0; b < 4; ++b) batches.push_back(at::relu(at::randn({20000}) * (3.0 + b)));
  ObserverSpec keeping_exact = base;
  keeping_exact.exact_histogram = true;  // as the quantizer asks when it will tune
  auto shared = MakeObserver(keeping_exact);
  for (const at::Tensor& batch : batches) (*shared)->Observe(batch);
  // Without it, only PyTorch's own search can answer.
  auto pytorch_only = MakeObserver(base);
  for (const at::Tensor& batch : batches) (*pytorch_only)->Observe(batch);
  EXPECT_TRUE((*pytorch_only)->ComputeAs(others[0], nullptr).ok());
  EXPECT_EQ((*pytorch_only)->ComputeAs(others[2], nullptr).status().code(), absl::StatusCode::kFailedPrecondition);
  for (const ObserverSpec& spec : others) {
    auto own = MakeObserver(spec);
    for (const at::Tensor& batch : batches) (*own)->Observe(batch);
    auto expected = (*own)->Compute();
    std::pair<float, float> range;
    auto answered = (*shared)->ComputeAs(spec, &range);
    ASSERT_TRUE(expected.ok() && answered.ok()) << spec.Describe();
    EXPECT_EQ(answered->scale, expected->scale) << spec.Describe();
    EXPECT_EQ(answered->zero_point, expected->zero_point) << spec.Describe();
    EXPECT_EQ(answered->quant_max, spec.quant_max());
    EXPECT_EQ(range, (*own)->ObservedRange()) << spec.Describe();
  }
  // Other statistics cannot answer: a min/max observer, or other bins.
  ObserverSpec other_bins = base;
  other_bins.bins = 512;
  EXPECT_EQ((*shared)->ComputeAs(other_bins, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  auto min_max = MakeObserver(Spec(ObserverKind::kMinMax, QScheme::kPerTensorAffine, false));
  (*min_max)->Observe(batches[0]);
  EXPECT_EQ((*min_max)->ComputeAs(base, nullptr).status().code(), absl::StatusCode::kUnimplemented);
}

TEST(MakeObserverTest, RejectsMismatchedSchemes) {
  EXPECT_FALSE(MakeObserver(Spec(ObserverKind::kHistogram, QScheme::kPerChannelSymmetric, false)).ok());
  EXPECT_FALSE(MakeObserver(Spec(ObserverKind::kPerChannelMinMax, QScheme::kPerTensorAffine, true)).ok());
}

TEST(QConfigTest, PresetsAreTorchDefaults) {
  auto fbgemm = QConfigPreset("fbgemm");
  ASSERT_TRUE(fbgemm.ok());
  EXPECT_EQ(fbgemm->activation.kind, ObserverKind::kHistogram);
  EXPECT_TRUE(fbgemm->activation.reduce_range);
  EXPECT_EQ(fbgemm->weight.qscheme, QScheme::kPerChannelSymmetric);
  EXPECT_FALSE(QConfigPreset("onednn")->activation.reduce_range);
  EXPECT_EQ(QConfigPreset("qnnpack")->weight.qscheme, QScheme::kPerTensorSymmetric);
  EXPECT_TRUE(QConfigPreset("x86")->activation.reduce_range);
  auto unknown = QConfigPreset("tensorrt");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(unknown.status().message().find("tensorrt"), std::string::npos);
  EXPECT_FALSE(CustomQConfig("kl", "per_channel_symmetric", false).ok());
  EXPECT_TRUE(CustomQConfig("minmax", "per_tensor_affine", true).ok());
  // quantd's range estimators ride on the histogram observer; the presets
  // keep PyTorch's search.
  EXPECT_EQ(fbgemm->activation.estimator, RangeEstimator::kPyTorchL2);
  auto entropy = CustomQConfig("entropy", "per_channel_symmetric", false);
  ASSERT_TRUE(entropy.ok());
  EXPECT_EQ(entropy->activation.kind, ObserverKind::kHistogram);
  EXPECT_EQ(entropy->activation.estimator, RangeEstimator::kEntropy);
  EXPECT_EQ(CustomQConfig("mse", "per_channel_symmetric", false)->activation.estimator, RangeEstimator::kMse);
}

// The histogram observer hands its merged histogram to the chosen estimator:
// on a ReLU output with one far outlier, percentile leaves the outlier out,
// PyTorch's search and min/max do not.
TEST(HistogramObserverTest, RangeEstimatorsChooseFromTheSameHistogram) {
  at::Tensor x = at::relu(at::randn({20000}, at::TensorOptions().dtype(at::kFloat)));
  x[0] = 50.0f;
  auto range_of = [&](RangeEstimator estimator) {
    ObserverSpec spec = Spec(ObserverKind::kHistogram, QScheme::kPerTensorAffine, false);
    spec.estimator = estimator;
    spec.percentile = 99.9;
    auto observer = MakeObserver(spec);
    EXPECT_TRUE(observer.ok());
    (*observer)->Observe(x);
    auto q = (*observer)->Compute();
    EXPECT_TRUE(q.ok());
    return (*observer)->ObservedRange();
  };
  const auto percentile = range_of(RangeEstimator::kPercentile);
  EXPECT_EQ(percentile.first, 0.0f);
  EXPECT_LT(percentile.second, 5.0f);  // the 99.95th percentile of a half-normal is ~3.5
  EXPECT_GT(percentile.second, 2.5f);
  const auto mse = range_of(RangeEstimator::kMse);
  EXPECT_GT(mse.second, 0.0f);
  EXPECT_NE(mse.second, percentile.second);
}

// PyTorch 1.13 counts over int()-truncated bounds: for values in [0, 1.85]
// its bins cover [0, 1] and drop the rest. quantd's estimators once read
// those counts as if they covered [0, 1.85], and percentile 99.9 gave 1.83
// where the values' own 99.95th percentile is 1.52.
TEST(HistogramObserverTest, RangeEstimatorsReadTheValuesTrueRange) {
  at::manual_seed(0);
  const at::Tensor x = at::relu(at::randn({20000}, at::TensorOptions().dtype(at::kFloat))) * 0.45;
  ASSERT_GT(x.max().item<float>(), 1.0f);  // past int()'s bound
  const float quantile = at::quantile(x, 0.9995).item<float>();
  for (int batches : {1, 4}) {  // one batch, and merged across batches
    ObserverSpec spec = Spec(ObserverKind::kHistogram, QScheme::kPerTensorAffine, false);
    spec.estimator = RangeEstimator::kPercentile;
    spec.percentile = 99.9;
    auto observer = MakeObserver(spec);
    ASSERT_TRUE(observer.ok());
    for (const at::Tensor& part : x.chunk(batches)) (*observer)->Observe(part);
    ASSERT_TRUE((*observer)->Compute().ok());
    EXPECT_NEAR((*observer)->ObservedRange().second, quantile, 0.02) << batches << " batches";
  }
}

// Percentile 100 covers every value seen, however the calibration set is
// split: the estimators' histogram keeps its counts through a hundred merges
// (merged with PyTorch's float32 rounding, the ReLU's range below lost its
// top 5%: 32.67 for a top value of 34.40).
TEST(HistogramObserverTest, PercentileHundredKeepsTheTopValueThroughManyMerges) {
  for (bool relu : {true, false}) {
    at::manual_seed(0);
    ObserverSpec spec = Spec(ObserverKind::kHistogram, QScheme::kPerTensorAffine, false);
    spec.estimator = RangeEstimator::kPercentile;
    spec.percentile = 100;
    auto observer = MakeObserver(spec);
    ASSERT_TRUE(observer.ok());
    float lowest = std::numeric_limits<float>::infinity(), highest = -lowest;
    for (int batch = 0; batch < 100; ++batch) {
      at::Tensor x = (at::randn({16000}) * 2 + 0.5) * (at::rand({1}) * 3 + 1);
      if (relu) x = at::relu(x);
      lowest = std::min(lowest, x.min().item<float>());
      highest = std::max(highest, x.max().item<float>());
      (*observer)->Observe(x);
    }
    ASSERT_TRUE((*observer)->Compute().ok());
    const auto [low, high] = (*observer)->ObservedRange();
    const float bin = (highest - lowest) / 2048;  // a bin of the final histogram is about this wide
    EXPECT_GE(high, highest - 1e-4f) << "relu " << relu;
    EXPECT_LE(high, highest + 4 * bin) << "relu " << relu;
    EXPECT_LE(low, lowest + 1e-4f) << "relu " << relu;
    EXPECT_GE(low, lowest - 4 * bin) << "relu " << relu;
  }
}

// An activation whose first batch spans 1e-37 (PyTorch cannot merge the next
// batch into that histogram) keeps its counts, in the one bin of the wider
// range that holds them. Percentile 99 of 1000 values near 0 and 10 from 1
// to 10 leaves 5 values out at each end: it spans about [0, 6].
TEST(HistogramObserverTest, AFirstBatchTooNarrowToMergeKeepsItsCounts) {
  for (RangeEstimator estimator : {RangeEstimator::kPyTorchL2, RangeEstimator::kPercentile}) {
    ObserverSpec spec = Spec(ObserverKind::kHistogram, QScheme::kPerTensorAffine, false);
    spec.estimator = estimator;
    spec.percentile = 99;
    auto observer = MakeObserver(spec);
    ASSERT_TRUE(observer.ok());
    (*observer)->Observe(at::linspace(1e-37, 2e-37, 1000, at::kFloat));
    (*observer)->Observe(at::linspace(1, 10, 10, at::kFloat));
    auto q = (*observer)->Compute();
    ASSERT_TRUE(q.ok()) << q.status();
    EXPECT_TRUE(std::isfinite(q->scale[0]) && q->scale[0] > 0);
    const auto [lo, hi] = (*observer)->ObservedRange();
    EXPECT_GE(lo, 0.0f);
    EXPECT_LT(lo, 0.1f);
    if (estimator == RangeEstimator::kPercentile) {
      EXPECT_GT(hi, 5.0f);  // the new counts are there
      EXPECT_LT(hi, 7.0f);
    } else {
      EXPECT_GT(hi, 0.0f);
      EXPECT_LE(hi, 10.0f);
    }
  }
}

// PyTorch's observer fails on NaN (its int(min_val) raises); quantd's
// skipped the NaN and gave finite qparams from the rest.
TEST(HistogramObserverTest, NaNActivationsAreAnError) {
  at::Tensor x = at::randn({1000}, at::TensorOptions().dtype(at::kFloat));
  x[3] = std::numeric_limits<float>::quiet_NaN();
  auto observer = MakeObserver(Spec(ObserverKind::kHistogram, QScheme::kPerTensorAffine, false));
  ASSERT_TRUE(observer.ok());
  (*observer)->Observe(at::randn({1000}, at::TensorOptions().dtype(at::kFloat)));
  (*observer)->Observe(x);
  auto q = (*observer)->Compute();
  EXPECT_EQ(q.status().code(), absl::StatusCode::kFailedPrecondition) << q.status();
  EXPECT_NE(q.status().message().find("NaN"), std::string::npos);
}

// PyTorch's int() of a bound at 2^63 or more fails; the cast to int64 was
// undefined (INT64_MIN here: an empty histogram, a range-wide scale and
// every ordinary activation quantized to 0).
TEST(HistogramObserverTest, ValuesPastTwoToTheSixtyThreeAreAnError) {
  auto observer = MakeObserver(Spec(ObserverKind::kHistogram, QScheme::kPerTensorAffine, false));
  ASSERT_TRUE(observer.ok());
  (*observer)->Observe(at::tensor({0.f, 1.f, 2e19f}));
  auto q = (*observer)->Compute();
  EXPECT_EQ(q.status().code(), absl::StatusCode::kFailedPrecondition) << q.status();
  EXPECT_NE(q.status().message().find("2^63"), std::string::npos) << q.status();
}

}  // namespace
}  // namespace quantd::engine
