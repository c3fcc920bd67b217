#include "worker/engine/accuracy_tuning.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "worker/engine/base/helper_threads.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"
#include "worker/engine/data/dataset.h"
#include "worker/engine/passes/compare_with_fp32.h"
#include "worker/engine/passes/convert.h"
#include "worker/engine/predicted_class.h"
#include "worker/engine/quantizer.h"
#include "worker/engine/runtime/int8_program.h"

namespace quantd::engine {
namespace {

// What a trial varies: the activation range estimator, bias correction and
// fitted weight rounding.
struct Candidate {
  ObserverSpec activation;
  bool bias_correction = false;
  bool fitted_rounding = false;
  std::string Describe() const {
    return absl::StrCat(activation.Describe(), fitted_rounding ? " +fitted_rounding" : "",
                        bias_correction ? " +bias_correction" : "");
  }
};

// The candidates, in the order tried: as requested; the requested estimator
// with 8-bit activations where this CPU's engine is exact with them (which
// measures reduce_range); then quantd's estimators with bias correction,
// most often best on the models measured first (README: "Range estimators",
// "Bias correction"); then, unless the request had it already, the same with
// fitted weight rounding, which needs no labels to pay off but changes every
// weight's integers ("Pooling folded into the classifier, fitted weight
// rounding").
std::vector<Candidate> Candidates(const QConfig& requested, bool eight_bit_exact) {
  std::vector<Candidate> out;
  auto add = [&](const Candidate& c) {
    for (const Candidate& o : out) {
      if (o.Describe() == c.Describe()) return;
    }
    out.push_back(c);
  };
  add({requested.activation, requested.bias_correction, requested.fitted_rounding});
  ObserverSpec base = requested.activation;
  if (eight_bit_exact) base.reduce_range = false;
  add({base, requested.bias_correction, requested.fitted_rounding});
  for (const bool fitted : {requested.fitted_rounding, true}) {
    auto with = [&](RangeEstimator estimator, double percentile) {
      ObserverSpec spec = base;
      spec.estimator = estimator;
      spec.percentile = percentile;
      return Candidate{spec, true, fitted};
    };
    add(Candidate{base, true, fitted});
    add(with(RangeEstimator::kPyTorchL2, 99.99));
    add(with(RangeEstimator::kPercentile, 99.99));
    add(with(RangeEstimator::kMse, 99.99));
    add(with(RangeEstimator::kPercentile, 99.999));
    add(with(RangeEstimator::kEntropy, 99.99));
  }
  return out;
}

// Images per int8 pass when judging a trial.
constexpr int64_t kJudgeBatch = 256;

// The images trials are judged on, in batches, with the FP32 outputs (and
// labels, when there are any) computed once.
struct JudgeSet {
  std::vector<at::Tensor> images, labels, fp32;
  int64_t samples = 0;
  std::string description;
  std::optional<double> fp32_top1;
};

absl::StatusOr<JudgeSet> LoadLabelled(const AccuracyGoal& goal, const torch::jit::Module& fp32_module,
                                      int64_t max_batch_bytes, const std::vector<int64_t>& input_shape) {
  QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<Dataset> dataset, OpenDataset(goal.tuning));
  if (!input_shape.empty() && dataset->sample_shape() != input_shape) {
    return absl::InvalidArgumentError(absl::StrCat("accuracy_goal.tuning: its samples are [",
                                                   absl::StrJoin(dataset->sample_shape(), ", "),
                                                   "], but the int8 model is fixed to the calibration's [",
                                                   absl::StrJoin(input_shape, ", "),
                                                   "] (its pooling is folded into the classifier)"));
  }
  if (!dataset->has_labels() && !goal.against_fp32) {
    return absl::InvalidArgumentError(
        "accuracy_goal.tuning: the tuning set has no labels (judging against FP32's predictions needs none)");
  }
  if (dataset->size() == 0) return absl::InvalidArgumentError("accuracy_goal.tuning: the tuning set is empty");
  int64_t image_bytes = 4;
  for (int64_t d : dataset->sample_shape()) image_bytes *= d;
  constexpr int64_t kMaxTuningBytes = int64_t{2} << 30;  // every trial rereads them: they stay in memory
  if (dataset->size() * image_bytes > kMaxTuningBytes) {
    return absl::InvalidArgumentError(absl::StrCat("accuracy_goal.tuning: ", dataset->size(),
                                                   " images take more than 2 GiB as float32; select fewer "
                                                   "(samples per class or a limit)"));
  }
  const int64_t batch =
      std::max<int64_t>(1, std::min(kJudgeBatch, max_batch_bytes > 0 ? max_batch_bytes / image_bytes : kJudgeBatch));
  JudgeSet judge;
  judge.samples = dataset->size();
  judge.description = absl::StrCat(goal.tuning.path, " (", dataset->size(),
                                   goal.against_fp32 ? " images, FP32's predictions as labels)" : " labelled images)");
  int64_t correct = 0;
  at::NoGradGuard no_grad;
  for (int64_t start = 0; start < dataset->size(); start += batch) {
    QUANTD_ASSIGN_OR_RETURN(Batch b, dataset->ReadBatch(start, std::min(batch, dataset->size() - start)));
    at::Tensor out;
    QUANTD_RETURN_IF_ERROR(TorchTry("running the FP32 model on the tuning set", [&]() {
      // A copy: a model may write its input in place, and the images are kept.
      out = const_cast<torch::jit::Module&>(fp32_module).forward({b.images.clone()}).toTensor().to(at::kFloat);
      return absl::OkStatus();
    }));
    if (!IsClassifierOutput(out)) {
      return absl::InvalidArgumentError(absl::StrCat("accuracy_goal needs a classifier: the model's output has shape [",
                                                     absl::StrJoin(out.sizes(), ", "), "]"));
    }
    const at::Tensor predicted = PredictedClasses(out);
    if (goal.against_fp32) {
      // FP32's predictions are the labels: an image it predicts nothing for
      // (NaN scores) would be a label no model can match.
      const at::Tensor none = predicted.eq(kNoClass).nonzero();
      if (none.numel() > 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("accuracy_goal.against_fp32: the FP32 model's scores are NaN on image ",
                         start + none[0].item<int64_t>(), " of ", goal.tuning.path, ", so it has no prediction to match"));
      }
      b.labels = predicted;
    }
    if (!b.labels.defined() || out.size(0) != b.labels.numel()) {
      return absl::InvalidArgumentError(absl::StrCat("accuracy_goal needs a classifier: the model's output has shape [",
                                                     absl::StrJoin(out.sizes(), ", "), "]"));
    }
    QUANTD_RETURN_IF_ERROR(CheckLabelsInRange(b.labels, out.size(1), "accuracy_goal.tuning", start));
    correct += predicted.eq(b.labels).sum().item<int64_t>();
    judge.images.push_back(b.images);
    judge.labels.push_back(b.labels);
    judge.fp32.push_back(out);
  }
  judge.fp32_top1 = static_cast<double>(correct) / static_cast<double>(judge.samples);
  return judge;
}

// The int8 outputs of every batch. With several intra-op threads, the
// batches are spread over that many threads running one LibTorch thread each:
// one pass split over two threads makes two thread pools (OpenMP's and
// QNNPACK's) spin against each other, and on a 2-core AVX2 EPYC (QNNPACK
// kernels) ran only 1.6x faster than one thread.
absl::StatusOr<std::vector<at::Tensor>> RunBatches(const Int8Executor& executor,
                                                   const std::vector<at::Tensor>& batches) {
  const int intra_op_threads = at::get_num_threads();
  const int threads = static_cast<int>(std::min<size_t>(static_cast<size_t>(intra_op_threads), batches.size()));
  std::vector<at::Tensor> outputs(batches.size());
  std::vector<absl::Status> statuses(static_cast<size_t>(std::max(1, threads)));
  std::atomic<size_t> next{0};
  auto work = [&](int k) {
    // Through SetIntraOpThreads, never at::set_num_threads directly: that
    // rebuilds QNNPACK's global thread pool, which the other trial threads
    // (and served models) may be running on.
    if (threads > 1) SetIntraOpThreads(1);
    statuses[static_cast<size_t>(k)] = TorchTry("running a trial's int8 model", [&]() -> absl::Status {
      at::NoGradGuard no_grad;
      for (size_t b = next++; b < batches.size(); b = next++) {
        QUANTD_ASSIGN_OR_RETURN(outputs[b], executor.Forward(batches[b]));
      }
      return absl::OkStatus();
    });
  };
  // On kept threads: with a thread started per trial, a job once crashed
  // inside LibTorch's int8 convolution on such a thread (helper_threads.h).
  HelperThreads::Shared().Run(std::max(1, threads), work);
  if (threads > 1) SetIntraOpThreads(intra_op_threads);
  for (const absl::Status& status : statuses) QUANTD_RETURN_IF_ERROR(status);
  return outputs;
}

absl::StatusOr<TrialScore> Score(const Int8Executor& executor, const JudgeSet& judge) {
  int64_t correct = 0, agree = 0;
  double signal = 0, noise = 0;
  bool classifier = true;
  QUANTD_ASSIGN_OR_RETURN(std::vector<at::Tensor> outputs, RunBatches(executor, judge.images));
  at::NoGradGuard no_grad;
  for (size_t b = 0; b < judge.images.size(); ++b) {
    const at::Tensor out = outputs[b].to(at::kFloat).reshape(judge.fp32[b].sizes());
    const at::Tensor& ref = judge.fp32[b];
    signal += ref.pow(2).sum().item<double>();
    noise += (out - ref).pow(2).sum().item<double>();
    classifier = classifier && IsClassifierOutput(ref);
    if (!classifier) continue;
    const at::Tensor predicted = PredictedClasses(out);
    agree += CountAgreeing(predicted, PredictedClasses(ref));
    if (judge.labels[b].defined()) correct += predicted.eq(judge.labels[b]).sum().item<int64_t>();
  }
  TrialScore score;
  const double n = static_cast<double>(std::max<int64_t>(1, judge.samples));
  if (judge.fp32_top1) score.top1 = static_cast<double>(correct) / n;
  score.agreement = classifier ? static_cast<double>(agree) / n : 0;
  // NaN in the int8 outputs ranks below every model (SqnrDb); no error at
  // all is 100 dB, a finite figure for the trial table.
  const double sqnr = SqnrDb(signal, noise);
  score.output_sqnr_db = sqnr == std::numeric_limits<double>::infinity() ? 100.0 : sqnr;
  return score;
}

std::string Points(double fraction) { return absl::StrFormat("%.2f points", 100 * fraction); }
std::string Pct(double fraction) { return absl::StrFormat("%.2f%%", 100 * fraction); }

// What cost accuracy and what would fix it, from the trials' measurements.
std::vector<std::string> Advise(const TuningSetup& setup, const SearchGoal& goal,
                                const std::vector<Candidate>& candidates, const std::vector<std::string>& layers,
                                const SearchOutcome& outcome, const JudgeSet& judge) {
  std::vector<std::string> advice;
  const bool labelled = judge.fp32_top1.has_value();
  auto measure = [&](const TrialScore& s) {
    return labelled
               ? absl::StrFormat("top-1 %s (agreement with FP32 %s)", Pct(*s.top1), Pct(s.agreement))
               : absl::StrFormat("agreement with FP32 %s (output SQNR %.2f dB)", Pct(s.agreement), s.output_sqnr_db);
  };
  auto all_int8_trial = [&](size_t candidate) -> const Trial* {
    for (const Trial& t : outcome.trials) {
      if (t.candidate == static_cast<int>(candidate) && t.fp32_layers.empty() && t.error.empty()) return &t;
    }
    return nullptr;
  };
  const Candidate& requested = candidates[0];
  const Trial* first = all_int8_trial(0);
  // The same settings but one, fully int8, when a trial measured them.
  auto trial_of = [&](const Candidate& wanted) -> const Trial* {
    for (size_t c = 0; c < candidates.size(); ++c) {
      if (candidates[c].Describe() == wanted.Describe()) return all_int8_trial(c);
    }
    return nullptr;
  };
  // reduce_range: measured against the same estimator with 8-bit activations.
  if (requested.activation.reduce_range && first != nullptr) {
    if (setup.eight_bit_exact) {
      Candidate same = requested;
      same.activation.reduce_range = false;
      if (const Trial* eight = trial_of(same); eight != nullptr) {
        advice.push_back(absl::StrCat("reduce_range (7-bit activations) on ", judge.description, ": ",
                                      measure(first->score), " with it, ", measure(eight->score),
                                      " without; kernel engine '", setup.engine,
                                      "' computes 8-bit activations exactly on this CPU, so it is not needed "
                                      "here (the onednn and best presets have none)"));
      }
    } else {
      advice.push_back(absl::StrCat("reduce_range is needed here: kernel engine '", setup.engine,
                                    "' saturates with 8-bit activations on this CPU"));
    }
  }
  // Bias correction: measured against the same estimator without it.
  if (first != nullptr) {
    Candidate without = requested;
    if (setup.eight_bit_exact) without.activation.reduce_range = false;
    without.bias_correction = false;
    Candidate with = without;
    with.bias_correction = true;
    const Trial* off = trial_of(without);
    const Trial* on = trial_of(with);
    if (off != nullptr && on != nullptr) {
      advice.push_back(absl::StrCat("bias correction on ", judge.description, ": ", measure(on->score), " with it, ",
                                    measure(off->score), " without (", without.activation.Describe(), ")"));
    }
    // Fitted rounding: the same, bias-corrected, with and without it.
    Candidate nearest = with;
    nearest.fitted_rounding = false;
    Candidate fitted = with;
    fitted.fitted_rounding = true;
    const Trial* rounded = trial_of(nearest);
    const Trial* fit = trial_of(fitted);
    if (rounded != nullptr && fit != nullptr) {
      advice.push_back(absl::StrCat("fitted weight rounding on ", judge.description, ": ", measure(fit->score),
                                    " with it, ", measure(rounded->score), " rounding to nearest (",
                                    nearest.activation.Describe(), " +bias_correction)"));
    }
  }
  // The settings that won among the fully int8 trials.
  int best_int8 = -1;
  for (const Trial& t : outcome.trials) {
    if (!t.fp32_layers.empty() || !t.error.empty()) continue;
    if (best_int8 < 0 || CloserToFp32(t.score, outcome.trials[static_cast<size_t>(best_int8)].score, goal)) {
      best_int8 = t.index;
    }
  }
  if (best_int8 >= 0 && first != nullptr && outcome.trials[static_cast<size_t>(best_int8)].candidate != 0) {
    const Trial& b = outcome.trials[static_cast<size_t>(best_int8)];
    advice.push_back(absl::StrCat("settings: ", b.settings, " gives ", measure(b.score), " against ",
                                  measure(first->score), " for the requested ", first->settings, " on ",
                                  judge.description));
  }
  // The three least accurate layers, and what keeping them in FP32 measured.
  if (best_int8 >= 0) {
    const Trial& b = outcome.trials[static_cast<size_t>(best_int8)];
    std::vector<std::pair<double, std::string>> worst;
    for (size_t i = 0; i < layers.size() && i < b.score.layer_sqnr_db.size(); ++i) {
      if (b.score.layer_sqnr_db[i]) worst.push_back({*b.score.layer_sqnr_db[i], layers[i]});
    }
    std::sort(worst.begin(), worst.end());
    if (worst.size() > 3) worst.resize(3);
    std::vector<std::string> parts;
    for (const auto& [db, layer] : worst) {
      std::string part = absl::StrFormat("%s (%.1f dB", layer, db);
      for (const LayerSensitivity& s : outcome.sensitivity) {
        if (s.layer == layer) {
          absl::StrAppend(&part, ", alone in FP32: agreement ", s.gain >= 0 ? "+" : "", Points(s.gain));
        }
      }
      parts.push_back(part + ")");
    }
    if (!parts.empty()) {
      advice.push_back(
          absl::StrCat("least accurate int8 layers (output SQNR against FP32): ", absl::StrJoin(parts, ", "),
                       !outcome.sensitivity.empty() ? ""
                       : !labelled ? "; accuracy-aware mode with a labelled tuning set measures what keeping each in "
                                     "FP32 gains"
                       : !goal.allow_fp32_layers
                           ? "; without int8_only, the search measures what keeping each in FP32 gains"
                           : ""));
    }
  }
  if (labelled && !outcome.met && outcome.best >= 0) {
    const Trial& b = outcome.trials[static_cast<size_t>(outcome.best)];
    const double target = *judge.fp32_top1 - goal.max_top1_drop;
    // What could still meet it depends on what ended the search.
    const std::string remedy =
        outcome.stopped_because == "FP32 layer cap" ? "a higher max_fp32_layers, or a larger tolerance, may meet it"
        : outcome.stopped_because == "search done"
            ? (goal.allow_fp32_layers
                   ? "the greedy stage tried each layer once, in order of sensitivity, and kept those that brought "
                     "the model closer to FP32; sets of FP32 layers it did not try may meet it (all of them do), and "
                     "so may a larger tolerance"
                                      : "every estimator was tried: allowing FP32 layers (without int8_only), or a "
                                        "larger tolerance, may meet it")
            : "a larger trial or time budget, or a larger tolerance, may meet it";
    advice.push_back(absl::StrCat("the goal was missed by ", Points(target - *b.score.top1), " after ",
                                  outcome.trials.size(), " trials (stopped: ", outcome.stopped_because, "); ",
                                  remedy));
  }
  return advice;
}

}  // namespace

absl::StatusOr<std::map<int, QParams>> ActivationQParamsFor(const CalibrationResult& calibrated,
                                                            const QuantizationPlan& plan,
                                                            const ObserverSpec& activation, const Graph& fused) {
  std::map<int, QParams> qparams;
  for (int v : plan.observed_values) {
    auto it = calibrated.observers.find(v);
    if (it == calibrated.observers.end() || it->second == nullptr) {
      std::string producer = "the model input";
      for (const Node& node : fused.nodes) {
        if (!node.removed && std::find(node.outputs.begin(), node.outputs.end(), v) != node.outputs.end()) {
          producer = absl::StrCat("'", node.name, "'");
        }
      }
      return absl::FailedPreconditionError(
          absl::StrCat("no calibration statistics for the output of ", producer, ", which this plan quantizes"));
    }
    QUANTD_ASSIGN_OR_RETURN(qparams[v], it->second->ComputeAs(activation, nullptr));
  }
  return qparams;
}

absl::StatusOr<TunedSettings> TuneQuantization(const TuningSetup& setup) {
  const absl::Time began = absl::Now();
  const Graph& fused = *setup.fused;
  const bool labelled = setup.goal.has_value();
  JudgeSet judge;
  if (labelled) {
    QUANTD_ASSIGN_OR_RETURN(judge, LoadLabelled(*setup.goal, *setup.fp32_module, setup.max_batch_bytes, setup.input_shape));
  } else {
    if (!setup.judge_images.defined() || setup.judge_images.size(0) == 0) {
      return absl::InvalidArgumentError("the best preset needs calibration images to compare with FP32");
    }
    judge.samples = setup.judge_images.size(0);
    const at::Tensor fp32 = setup.judge_fp32_outputs.to(at::kFloat);
    for (int64_t start = 0; start < judge.samples; start += kJudgeBatch) {
      const int64_t n = std::min(kJudgeBatch, judge.samples - start);
      judge.images.push_back(setup.judge_images.narrow(0, start, n));
      judge.labels.push_back(at::Tensor());
      judge.fp32.push_back(fp32.narrow(0, start, n));
    }
    judge.description = absl::StrCat("the first ", judge.samples, " calibration images (no labels)");
  }

  const std::vector<Candidate> candidates = Candidates(setup.qconfig, setup.eight_bit_exact);
  std::vector<std::string> descriptions;
  for (const Candidate& c : candidates) descriptions.push_back(c.Describe());
  const QuantizationPlan full_plan = PlanQuantization(fused);
  std::vector<std::string> layers;
  for (const Node& node : fused.nodes) {
    if (!node.removed && full_plan.roles[static_cast<size_t>(node.id)] == NodeRole::kInt8) layers.push_back(node.name);
  }

  RunTrial run = [&](const TrialRequest& r) -> absl::StatusOr<TrialScore> {
    TrialScore score;
    QUANTD_RETURN_IF_ERROR(TorchTry(absl::StrCat("trial ", r.index + 1), [&]() -> absl::Status {
      const std::set<std::string> fp32(r.fp32_layers.begin(), r.fp32_layers.end());
      const QuantizationPlan plan = PlanQuantization(fused, fp32);
      const Candidate& candidate = candidates[static_cast<size_t>(r.candidate)];
      QUANTD_ASSIGN_OR_RETURN(auto qparams, ActivationQParamsFor(*setup.calibrated, plan, candidate.activation, fused));
      QConfig qconfig = setup.qconfig;
      qconfig.activation = candidate.activation;
      qconfig.bias_correction = candidate.bias_correction;
      qconfig.fitted_rounding = candidate.fitted_rounding;
      std::vector<LayerReport> layer_reports;
      QUANTD_ASSIGN_OR_RETURN(Program program, Convert(fused, plan, qparams, qconfig, setup.engine, &layer_reports,
                                                       setup.calibrated->means,
                                                       setup.calibrated->input_second_moments,
                                                       setup.calibrated->fitted_weights.get()));
      QUANTD_ASSIGN_OR_RETURN(Int8Executor executor, Int8Executor::Create(&program));
      QUANTD_ASSIGN_OR_RETURN(score, Score(executor, judge));
      if (fp32.empty() && setup.sqnr_images.defined() && setup.sqnr_images.size(0) > 0) {
        QUANTD_ASSIGN_OR_RETURN(Int8VsFp32 compared,
                                CompareWithFp32(executor, setup.sqnr_images, setup.calibrated->references, {}));
        for (const std::string& layer : layers) {
          auto it = compared.layer_sqnr_db.find(layer);
          score.layer_sqnr_db.push_back(it == compared.layer_sqnr_db.end() ? std::nullopt
                                                                           : std::optional<double>(it->second));
        }
      }
      return absl::OkStatus();
    }));
    return score;
  };

  SearchGoal goal;
  if (labelled) {
    const AccuracyGoal& g = *setup.goal;
    goal.fp32_top1 = judge.fp32_top1;
    goal.max_top1_drop = g.relative ? g.max_top1_drop * *judge.fp32_top1 : g.max_top1_drop;
    goal.max_trials = g.max_trials;
    goal.time_budget = absl::Seconds(g.time_budget_seconds) - setup.spent_before - (absl::Now() - began);
    goal.allow_fp32_layers = g.allow_fp32_layers;
    goal.max_fp32_layers = g.max_fp32_layers;
  } else {
    goal.max_trials = static_cast<int64_t>(candidates.size());
    goal.time_budget = absl::InfiniteDuration();
    goal.allow_fp32_layers = false;
    goal.sqnr_first = true;
  }
  int64_t done = 0;
  TrialDone on_trial = [&](const Trial& trial) {
    ++done;
    return !setup.progress || setup.progress({Phase::kTuning, done, goal.max_trials, &trial});
  };
  QUANTD_ASSIGN_OR_RETURN(SearchOutcome outcome,
                          SearchForAccuracy(descriptions, layers, goal, run, [] { return absl::Now(); }, on_trial));
  if (outcome.best < 0) return absl::InternalError("no tuning trial ran");

  const Trial& best = outcome.trials[static_cast<size_t>(outcome.best)];
  TunedSettings out;
  out.activation = candidates[static_cast<size_t>(best.candidate)].activation;
  out.bias_correction = candidates[static_cast<size_t>(best.candidate)].bias_correction;
  out.fitted_rounding = candidates[static_cast<size_t>(best.candidate)].fitted_rounding;
  out.fp32_layers.insert(best.fp32_layers.begin(), best.fp32_layers.end());
  TuningReport& report = out.report;
  report.judged_on = judge.description;
  report.samples = judge.samples;
  report.fp32_top1 = judge.fp32_top1;
  // A tolerance above FP32's top-1 allows any model: the goal is 0, not below.
  if (labelled) report.target_top1 = std::max(0.0, *judge.fp32_top1 - goal.max_top1_drop);
  report.met = outcome.met;
  report.stopped_because = outcome.stopped_because;
  report.best_trial = outcome.best;
  report.candidates = descriptions;
  report.sensitivity = outcome.sensitivity;
  report.fp32_layers = best.fp32_layers;
  out.advice = Advise(setup, goal, candidates, layers, outcome, judge);
  report.trials = std::move(outcome.trials);
  report.seconds = absl::ToDoubleSeconds(absl::Now() - began);
  return out;
}

}  // namespace quantd::engine
