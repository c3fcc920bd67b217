#include "worker/engine/tuning/accuracy_search.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

namespace quantd::engine {
namespace {

// Scores from a table: the candidate's base top-1 plus a gain for each layer
// kept in FP32. Each trial advances a fake clock by one second.
struct ScriptedModel {
  ScriptedModel(std::vector<double> top1, std::map<std::string, double> gains, std::set<int> failing = {})
      : candidate_top1(std::move(top1)), layer_gain(std::move(gains)), failing_candidates(std::move(failing)) {}
  std::vector<double> candidate_top1;
  std::map<std::string, double> layer_gain;
  std::set<int> failing_candidates;
  absl::Time clock = absl::UnixEpoch();
  std::vector<TrialRequest> requests;

  RunTrial Runner() {
    return [this](const TrialRequest& r) -> absl::StatusOr<TrialScore> {
      requests.push_back(r);
      clock += absl::Seconds(1);
      if (failing_candidates.count(r.candidate) > 0) return absl::InternalError("boom");
      TrialScore s;
      double top1 = candidate_top1[static_cast<size_t>(r.candidate)];
      for (const std::string& layer : r.fp32_layers) top1 += layer_gain[layer];
      s.top1 = top1;
      s.agreement = 0.9 + top1 / 10;
      s.output_sqnr_db = 20;
      return s;
    };
  }
  std::function<absl::Time()> Now() {
    return [this] { return clock; };
  }
};

SearchGoal Goal(double fp32, double drop) {
  SearchGoal goal;
  goal.fp32_top1 = fp32;
  goal.max_top1_drop = drop;
  return goal;
}

const std::vector<std::string> kCandidates = {"l2", "mse", "percentile", "entropy"};
const std::vector<std::string> kLayers = {"conv1", "conv2", "add", "fc"};

TEST(AccuracySearchTest, EveryEstimatorRunsAndTheClosestThatMeetsTheGoalWins) {
  ScriptedModel model({0.860, 0.871, 0.8715, 0.850}, {});
  RunTrial run = [&, scripted = model.Runner()](const TrialRequest& r) -> absl::StatusOr<TrialScore> {
    auto score = scripted(r);
    if (score.ok() && r.candidate == 1) score->agreement = 0.99;  // mse: fewer disagreements, same top-1 within noise
    return score;
  };
  auto out = SearchForAccuracy(kCandidates, kLayers, Goal(0.872, 0.001), run, model.Now());
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->met);
  EXPECT_EQ(out->stopped_because, "goal met");
  ASSERT_EQ(out->trials.size(), 4u);  // l2 misses by 1.2 points; mse and percentile are within 0.1
  EXPECT_FALSE(out->trials[0].meets_goal);
  EXPECT_TRUE(out->trials[1].meets_goal);
  EXPECT_TRUE(out->trials[2].meets_goal);
  EXPECT_FALSE(out->trials[3].meets_goal);
  EXPECT_EQ(out->best, 1);
  EXPECT_EQ(out->trials[1].settings, "mse");
  EXPECT_DOUBLE_EQ(out->trials[1].seconds, 1.0);
  EXPECT_TRUE(out->sensitivity.empty());
}

TEST(AccuracySearchTest, KeepsTheFewestMostSensitiveLayersInFp32) {
  // Best all-int8 candidate: percentile (0.865). conv2 is worth 0.3 points,
  // fc 0.25, the others nothing: neither alone reaches 0.870, both do.
  ScriptedModel model({0.860, 0.862, 0.865, 0.850}, {{"conv1", 0.0}, {"conv2", 0.003}, {"add", 0.0}, {"fc", 0.0025}});
  auto out = SearchForAccuracy(kCandidates, kLayers, Goal(0.8710, 0.001), model.Runner(), model.Now());
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->met);
  ASSERT_EQ(out->trials.size(), 4u + 4u + 1u);
  for (size_t i = 4; i < 8; ++i) {
    EXPECT_EQ(out->trials[i].stage, "sensitivity");
    EXPECT_EQ(out->trials[i].candidate, 2);  // the best estimator
    EXPECT_EQ(out->trials[i].fp32_layers, std::vector<std::string>{kLayers[i - 4]});
  }
  const Trial& best = out->trials[static_cast<size_t>(out->best)];
  EXPECT_EQ(best.stage, "fallback");
  EXPECT_EQ(best.fp32_layers, (std::vector<std::string>{"conv2", "fc"}));
  EXPECT_NEAR(*best.score.top1, 0.8705, 1e-12);
  ASSERT_EQ(out->sensitivity.size(), 4u);
  EXPECT_EQ(out->sensitivity[0].layer, "conv2");
  EXPECT_NEAR(out->sensitivity[0].gain, 0.0003, 1e-12);  // in agreement, which the script ties to top-1 / 10
  EXPECT_EQ(out->sensitivity[1].layer, "fc");

  // With at most one FP32 layer the pair is never tried: the search stops at
  // the cap and keeps the closest model within it (conv2 alone), goal missed.
  ScriptedModel capped({0.860, 0.862, 0.865, 0.850}, {{"conv1", 0.0}, {"conv2", 0.003}, {"add", 0.0}, {"fc", 0.0025}});
  SearchGoal goal = Goal(0.8710, 0.001);
  goal.max_fp32_layers = 1;
  out = SearchForAccuracy(kCandidates, kLayers, goal, capped.Runner(), capped.Now());
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_FALSE(out->met);
  EXPECT_EQ(out->stopped_because, "FP32 layer cap");
  EXPECT_EQ(out->trials.size(), 4u + 4u);
  for (const Trial& t : out->trials) EXPECT_LE(t.fp32_layers.size(), 1u);
  EXPECT_EQ(out->trials[static_cast<size_t>(out->best)].fp32_layers, std::vector<std::string>{"conv2"});
}

TEST(AccuracySearchTest, OneSensitiveLayerEndsTheSearchAtOnce) {
  ScriptedModel model({0.860, 0.862}, {{"conv1", 0.0}, {"conv2", 0.012}, {"add", 0.02}});
  auto out = SearchForAccuracy({"l2", "mse"}, kLayers, Goal(0.8725, 0.001), model.Runner(), model.Now());
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->met);
  ASSERT_EQ(out->trials.size(), 4u);  // l2, mse, conv1 alone, conv2 alone
  EXPECT_EQ(out->trials[static_cast<size_t>(out->best)].fp32_layers, std::vector<std::string>{"conv2"});
}

TEST(AccuracySearchTest, ALayerThatDoesNotHelpTheSetIsLeftInInt8) {
  // conv1 and add help, conv2 changes nothing, fc hurts: the goal (0.8715)
  // is out of reach, and the best set is {conv1, add}.
  ScriptedModel model({0.860}, {{"conv1", 0.004}, {"conv2", 0.0}, {"add", 0.001}, {"fc", -0.002}});
  auto out = SearchForAccuracy({"l2"}, kLayers, Goal(0.8725, 0.001), model.Runner(), model.Now());
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_FALSE(out->met);
  EXPECT_EQ(out->stopped_because, "search done");
  ASSERT_EQ(out->trials.size(), 1u + 4u + 3u);
  EXPECT_EQ(out->trials[5].fp32_layers, (std::vector<std::string>{"conv1", "add"}));
  EXPECT_EQ(out->trials[6].fp32_layers, (std::vector<std::string>{"conv1", "add", "conv2"}));
  EXPECT_EQ(out->trials[7].fp32_layers, (std::vector<std::string>{"conv1", "add", "fc"}));
  EXPECT_EQ(out->trials[static_cast<size_t>(out->best)].fp32_layers, (std::vector<std::string>{"conv1", "add"}));
}

// A trial budget ends the search and the best found is returned. The
// estimator stage runs on after a trial meets the goal; a budget that then
// runs out still reports the goal met (it read "met (trial budget)").
TEST(AccuracySearchTest, BudgetsStopTheSearchAndTheBestFoundIsReturned) {
  struct Case {
    std::vector<double> top1;
    int64_t max_trials;
    bool met;
    const char* stopped_because;
    int best;
  };
  for (const Case& c : {Case{{0.860, 0.864, 0.862, 0.850}, 3, false, "trial budget", 1},
                        Case{{0.872, 0.860, 0.862, 0.850}, 2, true, "goal met", 0}}) {
    ScriptedModel model(c.top1, {{"conv1", 0.001}});
    SearchGoal goal = Goal(0.8725, 0.001);
    goal.max_trials = c.max_trials;
    auto out = SearchForAccuracy(kCandidates, kLayers, goal, model.Runner(), model.Now());
    ASSERT_TRUE(out.ok());
    EXPECT_EQ(out->met, c.met) << c.stopped_because;
    EXPECT_EQ(out->stopped_because, c.stopped_because);
    EXPECT_EQ(out->trials.size(), static_cast<size_t>(c.max_trials));
    EXPECT_EQ(out->best, c.best) << c.stopped_because;
  }

  SearchGoal goal = Goal(0.8725, 0.001);
  ScriptedModel timed({0.860, 0.864, 0.862, 0.850}, {});
  goal.max_trials = 100;
  goal.time_budget = absl::Seconds(6);  // each trial takes one fake second
  auto out = SearchForAccuracy(kCandidates, kLayers, goal, timed.Runner(), timed.Now());
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->stopped_because, "time budget");
  EXPECT_EQ(out->trials.size(), 5u);  // a sixth would leave no second for the final conversion
  EXPECT_EQ(out->trials[static_cast<size_t>(out->best)].candidate, 1);

  // No trial starts unless it and the final conversion (one more trial, by
  // the longest so far) fit: with 2 s trials, 2.5 s left is not enough.
  ScriptedModel slow({0.860, 0.864, 0.862, 0.850}, {});
  RunTrial two_seconds = [&, scripted = slow.Runner()](const TrialRequest& r) {
    slow.clock += absl::Seconds(1);
    return scripted(r);
  };
  goal.time_budget = absl::Seconds(6.5);
  out = SearchForAccuracy(kCandidates, kLayers, goal, two_seconds, slow.Now());
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->stopped_because, "time budget");
  EXPECT_EQ(out->trials.size(), 2u);
  EXPECT_LE(slow.clock - absl::UnixEpoch() + absl::Seconds(2), goal.time_budget);
  // The first trial runs whatever the budget: it is the model returned.
  goal.time_budget = absl::ZeroDuration();
  out = SearchForAccuracy(kCandidates, kLayers, goal, timed.Runner(), timed.Now());
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->trials.size(), 1u);
  EXPECT_EQ(out->best, 0);
}

TEST(AccuracySearchTest, WithoutLabelsTheBestSqnrWinsAndNoLayerLeavesInt8) {
  ScriptedModel model({0, 0, 0}, {});
  RunTrial run = [&](const TrialRequest& r) -> absl::StatusOr<TrialScore> {
    model.requests.push_back(r);
    TrialScore s;
    s.agreement = 0.97;
    s.output_sqnr_db = r.candidate == 1 ? 23.5 : 22.0;
    return s;
  };
  SearchGoal goal;  // no fp32_top1: no labels
  auto out = SearchForAccuracy({"l2", "percentile", "entropy"}, kLayers, goal, run, model.Now());
  ASSERT_TRUE(out.ok());
  EXPECT_FALSE(out->met);
  EXPECT_EQ(out->stopped_because, "search done");
  EXPECT_EQ(out->trials.size(), 3u);
  EXPECT_EQ(out->best, 1);
  for (const TrialRequest& r : model.requests) EXPECT_TRUE(r.fp32_layers.empty());
}

TEST(AccuracySearchTest, AFailedTrialIsRecordedAndSkippedButAFirstOrCancelledOneEndsTheSearch) {
  ScriptedModel model({0.860, 0.0, 0.872}, {}, {1});
  auto out = SearchForAccuracy({"l2", "broken", "percentile"}, kLayers, Goal(0.872, 0.001), model.Runner(), model.Now());
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->trials.size(), 3u);
  EXPECT_EQ(out->trials[1].error, "boom");
  EXPECT_EQ(out->best, 2);

  ScriptedModel first_fails({0.860}, {}, {0});
  EXPECT_EQ(SearchForAccuracy({"l2"}, kLayers, Goal(0.872, 0.001), first_fails.Runner(), first_fails.Now())
                .status()
                .code(),
            absl::StatusCode::kInternal);

  int calls = 0;
  RunTrial cancelled = [&](const TrialRequest&) -> absl::StatusOr<TrialScore> {
    if (++calls == 2) return absl::CancelledError("job cancelled");
    TrialScore s;
    s.top1 = 0.5;
    return s;
  };
  EXPECT_EQ(SearchForAccuracy(kCandidates, kLayers, Goal(0.872, 0.001), cancelled, model.Now()).status().code(),
            absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace quantd::engine
