#include "worker/engine/tuning/accuracy_search.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace quantd::engine {

double Objective(const TrialScore& score) { return score.agreement; }

bool CloserToFp32(const TrialScore& a, const TrialScore& b, const SearchGoal& goal) {
  if (goal.sqnr_first && a.output_sqnr_db != b.output_sqnr_db) return a.output_sqnr_db > b.output_sqnr_db;
  if (a.agreement != b.agreement) return a.agreement > b.agreement;
  if (a.top1.value_or(0) != b.top1.value_or(0)) return a.top1.value_or(0) > b.top1.value_or(0);
  return a.output_sqnr_db > b.output_sqnr_db;
}

namespace {

class Search {
 public:
  Search(const std::vector<std::string>& candidates, const SearchGoal& goal, const RunTrial& run,
         const std::function<absl::Time()>& now, const TrialDone& on_trial)
      : candidates_(candidates), goal_(goal), run_(run), now_(now), on_trial_(on_trial), start_(now()) {}

  // Runs one trial unless a budget is spent; false when the search must stop
  // (budget, goal met or an error in *status).
  bool Try(const char* stage, int candidate, std::vector<std::string> fp32_layers, absl::Status* status) {
    if (static_cast<int64_t>(out_.trials.size()) >= goal_.max_trials) {
      out_.stopped_because = "trial budget";
      return false;
    }
    // A trial started near the end would overrun the budget by its length,
    // and the final conversion after it takes about as long again: the
    // longest trial so far predicts both. The first trial always runs: it is
    // the model to return if nothing beats it.
    const absl::Duration elapsed = now_() - start_;
    if (!out_.trials.empty() && (elapsed + 2 * longest_trial_ > goal_.time_budget || elapsed >= goal_.time_budget)) {
      out_.stopped_because = "time budget";
      return false;
    }
    Trial trial;
    trial.index = static_cast<int>(out_.trials.size());
    trial.stage = stage;
    trial.candidate = candidate;
    trial.settings = candidates_[static_cast<size_t>(candidate)];
    trial.fp32_layers = std::move(fp32_layers);
    const absl::Time began = now_();
    absl::StatusOr<TrialScore> score = run_({trial.index, stage, candidate, trial.fp32_layers});
    longest_trial_ = std::max(longest_trial_, now_() - began);
    trial.seconds = absl::ToDoubleSeconds(now_() - began);
    if (!score.ok()) {
      if (trial.index == 0 || score.status().code() == absl::StatusCode::kCancelled) {
        *status = score.status();
        return false;
      }
      trial.error = std::string(score.status().message());
    } else {
      trial.score = *score;
      trial.meets_goal = Meets(trial.score);
    }
    out_.trials.push_back(std::move(trial));
    const Trial& done = out_.trials.back();
    if (on_trial_ && !on_trial_(done)) {
      *status = absl::CancelledError(absl::StrCat("cancelled after trial ", done.index + 1));
      return false;
    }
    if (done.meets_goal) {
      out_.met = true;
      if (!finish_stage_) {
        out_.stopped_because = "goal met";
        return false;
      }
    }
    return true;
  }

  // While set, a trial that meets the goal does not stop the stage.
  void FinishStage(bool finish) { finish_stage_ = finish; }

  bool Meets(const TrialScore& score) const {
    return goal_.fp32_top1 && score.top1 && *score.top1 >= *goal_.fp32_top1 - goal_.max_top1_drop - 1e-12;
  }

  // The best trial so far among those that ran, optionally only all-int8 ones.
  int Best(bool int8_only) const {
    int best = -1;
    for (const Trial& t : out_.trials) {
      if (!t.error.empty() || (int8_only && !t.fp32_layers.empty())) continue;
      if (best < 0) {
        best = t.index;
        continue;
      }
      const Trial& b = out_.trials[static_cast<size_t>(best)];
      if (t.meets_goal != b.meets_goal) {
        if (t.meets_goal) best = t.index;
      } else if (t.meets_goal && t.fp32_layers.size() != b.fp32_layers.size()) {
        if (t.fp32_layers.size() < b.fp32_layers.size()) best = t.index;
      } else if (CloserToFp32(t.score, b.score, goal_) ||
                 (!CloserToFp32(b.score, t.score, goal_) && t.fp32_layers.size() < b.fp32_layers.size())) {
        best = t.index;
      }
    }
    return best;
  }

  SearchOutcome& out() { return out_; }

 private:
  const std::vector<std::string>& candidates_;
  const SearchGoal& goal_;
  const RunTrial& run_;
  const std::function<absl::Time()>& now_;
  const TrialDone& on_trial_;
  const absl::Time start_;
  absl::Duration longest_trial_ = absl::ZeroDuration();
  bool finish_stage_ = false;
  SearchOutcome out_;
};

}  // namespace

absl::StatusOr<SearchOutcome> SearchForAccuracy(const std::vector<std::string>& candidates,
                                                const std::vector<std::string>& layers, const SearchGoal& goal,
                                                const RunTrial& run, const std::function<absl::Time()>& now,
                                                const TrialDone& on_trial) {
  if (candidates.empty()) return absl::InvalidArgumentError("no estimator candidates to try");
  if (goal.max_trials < 1) return absl::InvalidArgumentError("the trial budget must allow one trial");
  Search search(candidates, goal, run, now, on_trial);
  absl::Status status;
  auto finish = [&]() -> absl::StatusOr<SearchOutcome> {
    if (!status.ok()) return status;
    SearchOutcome& out = search.out();
    out.best = search.Best(/*int8_only=*/false);
    // A budget that ran out in the estimator stage, after a trial met the
    // goal, read "met (trial budget)".
    if (out.met) out.stopped_because = "goal met";
    if (out.stopped_because.empty()) out.stopped_because = "search done";
    return std::move(out);
  };

  // Every estimator runs (each is one conversion and one pass over the
  // tuning set): among several that meet the goal, the closest to FP32 wins.
  search.FinishStage(true);
  for (int c = 0; c < static_cast<int>(candidates.size()); ++c) {
    if (!search.Try("estimator", c, {}, &status)) return finish();
  }
  search.FinishStage(false);
  if (search.out().met) {
    search.out().stopped_because = "goal met";
    return finish();
  }
  if (!goal.fp32_top1 || !goal.allow_fp32_layers || layers.empty()) return finish();

  // Sensitivity: each layer alone in FP32, with the best all-int8 settings.
  const int base = search.Best(/*int8_only=*/true);
  const Trial base_trial = search.out().trials[static_cast<size_t>(base)];
  std::vector<LayerSensitivity>& sensitivity = search.out().sensitivity;
  for (size_t i = 0; i < layers.size(); ++i) {
    LayerSensitivity s{layers[i], 0, std::nullopt};
    if (i < base_trial.score.layer_sqnr_db.size()) s.sqnr_db = base_trial.score.layer_sqnr_db[i];
    const bool more = search.Try("sensitivity", base_trial.candidate, {layers[i]}, &status);
    const Trial& t = search.out().trials.back();
    if (t.fp32_layers == std::vector<std::string>{layers[i]} && t.error.empty()) {
      s.gain = Objective(t.score) - Objective(base_trial.score);
      sensitivity.push_back(s);
    }
    if (!more) {
      if (!status.ok()) return status;
      break;
    }
  }
  // Most sensitive first; equally sensitive: lowest SQNR (unknown last).
  std::stable_sort(sensitivity.begin(), sensitivity.end(), [](const LayerSensitivity& a, const LayerSensitivity& b) {
    if (a.gain != b.gain) return a.gain > b.gain;
    if (a.sqnr_db.has_value() != b.sqnr_db.has_value()) return a.sqnr_db.has_value();
    return a.sqnr_db.value_or(0) < b.sqnr_db.value_or(0);
  });
  if (search.out().met || !search.out().stopped_because.empty()) return finish();

  // Fallback, greedy: add the layers in order of sensitivity, keeping each
  // only if the set with it comes closer to FP32 than the set without (layers
  // interact: one that helps alone can hurt beside others).
  std::vector<std::string> fp32;
  TrialScore current = base_trial.score;
  for (const LayerSensitivity& s : sensitivity) {
    if (goal.max_fp32_layers > 0 && static_cast<int64_t>(fp32.size()) >= goal.max_fp32_layers) {
      search.out().stopped_because = "FP32 layer cap";
      break;
    }
    std::vector<std::string> with = fp32;
    with.push_back(s.layer);
    const Trial* tried = nullptr;
    if (with.size() == 1) {  // measured alone already
      for (const Trial& t : search.out().trials) {
        if (t.stage == "sensitivity" && t.fp32_layers == with) tried = &t;
      }
    } else {
      if (!search.Try("fallback", base_trial.candidate, with, &status)) return finish();
      tried = &search.out().trials.back();
    }
    if (tried != nullptr && tried->error.empty() && CloserToFp32(tried->score, current, goal)) {
      fp32 = std::move(with);
      current = tried->score;
    }
  }
  return finish();
}

}  // namespace quantd::engine
