// Accuracy-aware mode and the best preset through Quantize, on the real
// ResNet8 and CIFAR-10 fixtures. Figures differ between CPUs (onednn with
// VNNI, qnnpack without), so these tests check what must hold on any.

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/jit/serialization/import.h>

#include <algorithm>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/quantizer.h"
#include "worker/engine/quantizer_internal.h"
#include "worker/engine/testing/test_env.h"

namespace quantd::engine {
namespace {

QuantizeOptions ResNet8Options(const std::string& preset) {
  QuantizeOptions options;
  options.model_path = testing::ResNet8Path();
  options.calibration.path = testing::CalibrationPath();
  options.calibration.samples_per_class = 20;  // 200 images keep the tests quick
  options.qconfig.preset = preset;
  options.fusion.automatic = true;
  return options;
}

AccuracyGoal ValidationGoal(int64_t images) {
  AccuracyGoal goal;
  goal.tuning.path = testing::ValidationPath();
  goal.tuning.limit = images;
  return goal;
}

// Fraction of `images` where the int8 model and the FP32 model agree on top-1.
double Agreement(QuantizedModel& model, const at::Tensor& images) {
  at::NoGradGuard no_grad;
  at::Tensor int8 = *model.impl().executor->Forward(images);
  at::Tensor fp32 = model.impl().fp32_module.forward({images}).toTensor();
  return int8.argmax(1).eq(fp32.argmax(1)).to(at::kDouble).mean().item<double>();
}

void ExpectArtifactRunsLikeTheRuntime(QuantizedModel& model, const at::Tensor& images) {
  auto bytes = model.SerializeArtifact();
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  std::istringstream stream(*bytes);
  torch::jit::Module artifact = torch::jit::load(stream);
  at::NoGradGuard no_grad;
  at::Tensor ours = *model.impl().executor->Forward(images);
  at::Tensor theirs = artifact.forward({images}).toTensor();
  // Bit-identical, FP32 layers included (their inputs' layout decides how
  // oneDNN rounds: see the kDequantize comment in int8_program.cc).
  EXPECT_TRUE(at::equal(ours, theirs)) << "largest difference " << (ours - theirs).abs().max().item<double>();
}

at::Tensor TuningImages(int64_t n) {
  DatasetSpec spec;
  spec.path = testing::ValidationPath();
  return (*OpenDataset(spec))->ReadBatch(0, n)->images;
}

// A goal no estimator reaches (no disagreement with FP32 at all) runs every
// stage: each estimator, each layer alone in FP32, then the greedy FP32 set.
TEST(AccuracyTuningTest, AnUnreachableGoalRunsEveryStageAndKeepsTheBestModelFound) {
  QuantizeOptions options = ResNet8Options("fbgemm");
  options.accuracy_goal = ValidationGoal(300);
  options.accuracy_goal->against_fp32 = true;
  options.accuracy_goal->max_top1_drop = 0;
  options.accuracy_goal->max_trials = 30;  // 12 estimator trials, 13 layers alone, 5 greedy steps
  options.accuracy_goal->time_budget_seconds = 600;
  std::vector<ProgressEvent> trial_events;
  options.progress = [&](const ProgressEvent& e) {
    if (e.phase == Phase::kTuning && e.trial != nullptr) trial_events.push_back(e);
    return true;
  };
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  const QuantizeReport& r = (*model)->report();
  ASSERT_TRUE(r.tuning.has_value());
  const TuningReport& t = *r.tuning;
  EXPECT_EQ(t.samples, 300);
  EXPECT_DOUBLE_EQ(*t.fp32_top1, 1.0);  // FP32's predictions are the labels
  ASSERT_GE(t.trials.size(), 12u + 13u);
  EXPECT_LE(t.trials.size(), 30u);
  EXPECT_EQ(trial_events.size(), t.trials.size());
  // The requested qconfig first, then the same with 8-bit activations, then
  // quantd's estimators with 8-bit activations and bias correction.
  EXPECT_EQ(t.trials[0].settings, "HistogramObserver(quint8, per_tensor_affine, reduce_range)");
  EXPECT_EQ(t.trials[1].settings, "HistogramObserver(quint8, per_tensor_affine)");
  EXPECT_EQ(t.trials[2].settings, "HistogramObserver(quint8, per_tensor_affine) +bias_correction");
  std::set<std::string> estimators;
  for (const Trial& trial : t.trials) {
    if (trial.stage == "estimator") estimators.insert(trial.settings);
  }
  EXPECT_EQ(estimators.size(), 12u);
  // Every stage ran: each layer alone in FP32, then at least one greedy step.
  auto trials_of = [&](const std::string& stage) {
    return std::count_if(t.trials.begin(), t.trials.end(), [&](const Trial& trial) { return trial.stage == stage; });
  };
  EXPECT_EQ(trials_of("sensitivity"), 13);
  EXPECT_GE(trials_of("fallback"), 1);
  EXPECT_EQ(estimators.count("HistogramObserver[mse](quint8, per_tensor_affine) +bias_correction"), 1u);
  EXPECT_EQ(estimators.count("HistogramObserver[mse](quint8, per_tensor_affine) +fitted_rounding +bias_correction"),
            1u);
  // Both measured alternatives are explained: reduce_range and bias correction.
  auto advised = [&](const std::string& start) {
    return std::count_if(r.advice.begin(), r.advice.end(),
                         [&](const std::string& a) { return a.rfind(start, 0) == 0; });
  };
  EXPECT_EQ(advised("reduce_range (7-bit activations) on "), 1);
  EXPECT_EQ(advised("fitted weight rounding on "), 1);
  EXPECT_EQ(advised("bias correction on "), 1);
  // 13 int8 layers (8 convs, 3 adds, fc): each measured alone in FP32.
  EXPECT_EQ(t.sensitivity.size(), 13u);
  const Trial& best = t.trials[static_cast<size_t>(t.best_trial)];
  double best_int8 = 0;
  for (const Trial& trial : t.trials) {
    if (trial.fp32_layers.empty()) best_int8 = std::max(best_int8, trial.score.agreement);
  }
  EXPECT_GE(best.score.agreement, best_int8);
  EXPECT_EQ(t.met, best.meets_goal);
  if (!t.met) {
    EXPECT_EQ(t.stopped_because, "trial budget");
    // Out of trials, a larger budget is what may help (not so when the
    // search was done, or stopped at the FP32 layer cap).
    const auto missed = std::find_if(r.advice.begin(), r.advice.end(), [](const std::string& a) {
      return a.rfind("the goal was missed by ", 0) == 0;
    });
    ASSERT_NE(missed, r.advice.end());
    EXPECT_NE(missed->find("(stopped: trial budget); a larger trial or time budget"), std::string::npos) << *missed;
  }
  // The artifact is the best trial's model: same FP32 layers, same agreement
  // on the tuning images.
  EXPECT_EQ(t.fp32_layers, best.fp32_layers);
  EXPECT_FALSE(best.fp32_layers.empty());
  for (const std::string& layer : best.fp32_layers) {
    auto fallback = std::find_if(r.fallbacks.begin(), r.fallbacks.end(),
                                 [&](const FallbackReport& f) { return f.node == layer; });
    ASSERT_NE(fallback, r.fallbacks.end()) << layer;
    EXPECT_NE(fallback->reason.find("accuracy-aware"), std::string::npos);
    for (const LayerReport& l : r.layers) EXPECT_NE(l.name, layer);
  }
  const at::Tensor images = TuningImages(300);
  EXPECT_NEAR(Agreement(**model, images), best.score.agreement, 1e-12);
  ExpectArtifactRunsLikeTheRuntime(**model, images.narrow(0, 0, 64));
  EXPECT_NE(r.qconfig_description.find("HistogramObserver"), std::string::npos);
  EXPECT_EQ(r.qconfig_name, "fbgemm+tuned");
  EXPECT_FALSE(r.advice.empty());
}

// The goal met by a range estimator: no layer leaves int8, and the search
// ends after the estimators.
// A search that ran to its end without meeting the goal says what it did
// not try: the greedy stage adds each layer once, so larger FP32 sets (the
// whole FP32 model among them) may still meet it.
TEST(AccuracyTuningTest, ASearchDoneShortOfTheGoalSaysWhichSetsItLeftUntried) {
  QuantizeOptions options = ResNet8Options("fbgemm");
  options.accuracy_goal = ValidationGoal(1000);
  options.accuracy_goal->against_fp32 = true;
  options.accuracy_goal->max_top1_drop = 0;  // every one of 1000 predictions as FP32's
  options.accuracy_goal->max_trials = 1000;
  options.accuracy_goal->time_budget_seconds = 3600;
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  const QuantizeReport& r = (*model)->report();
  const TuningReport& t = *r.tuning;
  ASSERT_FALSE(t.met) << "the greedy set reached 100% agreement: " << absl::StrJoin(t.fp32_layers, ", ");
  EXPECT_EQ(t.stopped_because, "search done");
  EXPECT_LT(t.fp32_layers.size(), t.sensitivity.size());
  const auto missed = std::find_if(r.advice.begin(), r.advice.end(), [](const std::string& a) {
    return a.rfind("the goal was missed by ", 0) == 0;
  });
  ASSERT_NE(missed, r.advice.end());
  EXPECT_NE(missed->find("(stopped: search done); the greedy stage tried each layer once"), std::string::npos)
      << *missed;
  EXPECT_NE(missed->find("sets of FP32 layers it did not try may meet it"), std::string::npos) << *missed;
}

TEST(AccuracyTuningTest, AGoalMetByAnEstimatorKeepsTheModelFullyInt8) {
  QuantizeOptions options = ResNet8Options("onednn");
  options.accuracy_goal = ValidationGoal(500);
  options.accuracy_goal->max_top1_drop = 0.05;  // five points on labels: any 8-bit estimator
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  const TuningReport& t = *(*model)->report().tuning;
  EXPECT_TRUE(t.met);
  EXPECT_EQ(t.stopped_because, "goal met");
  // As requested, then 5 estimators with bias correction, then with fitted
  // weight rounding too.
  EXPECT_EQ(t.trials.size(), 11u);
  for (const Trial& trial : t.trials) EXPECT_EQ(trial.stage, "estimator");
  EXPECT_TRUE(t.fp32_layers.empty());
  ASSERT_EQ((*model)->report().fallbacks.size(), 1u);  // softmax only
}

// A goal any model meets (a tolerance of 100 points, above FP32's top-1 on
// any set), judged on the first 100 images of `tuning`, and an evaluation on
// the first 100 of `evaluation`.
QuantizeOptions GoalOfAnyModel(const std::string& tuning, const std::string& evaluation) {
  QuantizeOptions options = ResNet8Options("onednn");
  options.accuracy_goal = ValidationGoal(100);
  options.accuracy_goal->tuning.path = tuning;
  options.accuracy_goal->max_top1_drop = 1.0;
  options.evaluation.emplace();
  options.evaluation->path = evaluation;
  options.evaluation->limit = 100;
  return options;
}

// A tolerance above FP32's top-1 allows any model: the goal is 0%, not a
// negative figure; the evaluation's advice says a drop as a drop and a gain
// as a gain, never "a drop of -0.25 points".
TEST(AccuracyTuningTest, AToleranceAboveFp32sTop1MakesAGoalOfZero) {
  auto model = Quantize(GoalOfAnyModel(testing::ValidationPath(), testing::ValidationPath()));
  ASSERT_TRUE(model.ok()) << model.status();
  const QuantizeReport& report = (*model)->report();
  ASSERT_TRUE(report.tuning->target_top1.has_value());
  EXPECT_EQ(*report.tuning->target_top1, 0.0);
  EXPECT_TRUE(report.tuning->met);
  bool said = false;
  for (const std::string& advice : report.advice) {
    if (advice.find("on the evaluation set") == std::string::npos) continue;
    said = true;
    EXPECT_EQ(advice.find(" -"), std::string::npos) << "a negative figure: " << advice;
    EXPECT_TRUE(advice.find("a drop of") != std::string::npos || advice.find("points above FP32") != std::string::npos)
        << advice;
    EXPECT_NE(advice.find("within it"), std::string::npos) << advice;
  }
  EXPECT_TRUE(said);
}

// Tuning on the calibration set, or evaluating on the tuning set, is
// allowed but said: the figures it gives flatter the model.
TEST(AccuracyTuningTest, ATuningSetThatIsAlsoTheCalibrationOrEvaluationSetIsWarnedOf) {
  QuantizeOptions options = GoalOfAnyModel(testing::CalibrationPath(), testing::CalibrationPath());
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<std::string>& warnings = (*model)->report().warnings;
  auto warned = [&](const std::string& start) {
    return std::any_of(warnings.begin(), warnings.end(),
                       [&](const std::string& w) { return w.rfind(start, 0) == 0; });
  };
  EXPECT_TRUE(warned("accuracy_goal.tuning: " + testing::CalibrationPath() + " is also the calibration set"));
  EXPECT_TRUE(warned("evaluation: " + testing::CalibrationPath() + " is also the tuning set"));

  // Separate sets: no such warning.
  options.accuracy_goal->tuning.path = testing::ValidationPath();
  options.evaluation->path = testing::TestSetPath();
  model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  for (const std::string& w : (*model)->report().warnings) EXPECT_EQ(w.find("is also the"), std::string::npos) << w;
}

TEST(AccuracyTuningTest, TheBestPresetPicksTheEstimatorClosestToFp32OnCalibrationImages) {
  auto model = Quantize(ResNet8Options("best"));
  ASSERT_TRUE(model.ok()) << model.status();
  const QuantizeReport& r = (*model)->report();
  ASSERT_TRUE(r.tuning.has_value());
  const TuningReport& t = *r.tuning;
  EXPECT_FALSE(t.fp32_top1.has_value());
  EXPECT_EQ(t.samples, 200);
  ASSERT_EQ(t.trials.size(), 5u);  // 5 estimators, all with fitted rounding and bias correction
  const Trial& best = t.trials[static_cast<size_t>(t.best_trial)];
  const std::string corrected = " +fitted_rounding +bias_correction";
  for (const Trial& trial : t.trials) {
    EXPECT_TRUE(trial.fp32_layers.empty());
    // Without labels, output SQNR ranks first (agreement on the calibration
    // images favours the estimators that fit them tightest).
    EXPECT_LE(trial.score.output_sqnr_db, best.score.output_sqnr_db);
    ASSERT_GT(trial.settings.size(), corrected.size());
    EXPECT_EQ(trial.settings.substr(trial.settings.size() - corrected.size()), corrected);
  }
  const std::string activation = best.settings.substr(0, best.settings.size() - corrected.size());
  EXPECT_NE(r.qconfig_description.find(absl::StrCat("activation=", activation, " ")), std::string::npos)
      << r.qconfig_description;
  EXPECT_NE(r.qconfig_description.find(" fitted_rounding bias_correction"), std::string::npos)
      << r.qconfig_description;
  EXPECT_EQ(r.requirements.activation_quant_max, 255);
  ASSERT_EQ(r.fallbacks.size(), 1u);  // fully int8 but the softmax
  // The quality check now runs on the images the choice was judged on.
  EXPECT_EQ(r.quality.samples, 200);
  EXPECT_NEAR(*r.quality.top1_agreement, best.score.agreement, 1e-12);
}

TEST(AccuracyTuningTest, BadGoalsNameTheirField) {
  QuantizeOptions options = ResNet8Options("onednn");
  options.accuracy_goal = ValidationGoal(100);
  options.accuracy_goal->max_top1_drop = 2;
  EXPECT_NE(Quantize(options).status().message().find("accuracy_goal.max_top1_drop"), std::string::npos);
  options.accuracy_goal = ValidationGoal(100);
  options.accuracy_goal->max_trials = 0;
  EXPECT_NE(Quantize(options).status().message().find("accuracy_goal.max_trials"), std::string::npos);
  options.accuracy_goal = ValidationGoal(100);
  options.accuracy_goal->tuning.path.clear();
  EXPECT_NE(Quantize(options).status().message().find("accuracy_goal.tuning"), std::string::npos);
  // Range estimators need the histogram a min/max observer does not keep.
  options = ResNet8Options("");
  options.qconfig.activation_observer = "minmax";
  options.accuracy_goal = ValidationGoal(100);
  auto minmax = Quantize(options);
  EXPECT_EQ(minmax.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(minmax.status().message().find("accuracy_goal"), std::string::npos);
}

}  // namespace
}  // namespace quantd::engine
