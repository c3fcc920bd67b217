#include "server/job_stats.h"

#include <prometheus/text_serializer.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace quantd {
namespace {

using ::testing::HasSubstr;

std::string Scrape(prometheus::Registry& registry) {
  return prometheus::TextSerializer().Serialize(registry.Collect());
}

worker::JobEvent Finished(const std::string& id, worker::JobState state) {
  worker::JobEvent event;
  event.kind = worker::JobEvent::Kind::kStateChanged;
  event.job_id = id;
  event.state = state;
  return event;
}

TEST(JobStatsTest, RecoveriesAreCountedOnceAndRecoveredFailuresAreFinishedJobs) {
  prometheus::Registry registry;
  JobStats stats(registry);
  // Both outcomes exist before the first recovery, so a rate sees the first.
  std::string text = Scrape(registry);
  EXPECT_THAT(text, HasSubstr("quantd_jobs_recovered_total{outcome=\"requeued\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("quantd_jobs_recovered_total{outcome=\"failed\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("quantd_jobs_recovered_total{outcome=\"cancelled\"} 0\n"));

  stats.OnJobEvent(Finished("job-1", worker::JobState::kFailed));  // a runner's failure
  // The pool's running totals, read before each scrape: only what is new counts.
  stats.CountRecovered({.requeued = 2, .failed = 0});
  stats.CountRecovered({.requeued = 2, .failed = 0});
  stats.CountRecovered({.requeued = 3, .failed = 1});
  stats.CountRecovered({.requeued = 3, .failed = 1, .cancelled = 2});
  text = Scrape(registry);
  EXPECT_THAT(text, HasSubstr("quantd_jobs_recovered_total{outcome=\"requeued\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("quantd_jobs_recovered_total{outcome=\"failed\"} 1\n"));
  // A job failed by recovery has no runner to report it: the job failure
  // ratio sees it through this counter.
  EXPECT_THAT(text, HasSubstr("quantd_jobs_finished_total{state=\"failed\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("quantd_jobs_finished_total{state=\"succeeded\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("quantd_jobs_recovered_total{outcome=\"cancelled\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("quantd_jobs_finished_total{state=\"cancelled\"} 2\n"));
}

}  // namespace
}  // namespace quantd
