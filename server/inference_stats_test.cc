#include "server/inference_stats.h"

#include <prometheus/text_serializer.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace quantd {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Exposition(prometheus::Registry& registry) {
  return prometheus::TextSerializer().Serialize(registry.Collect());
}

worker::ModelVersion Version(const std::string& name, int64_t version) {
  worker::ModelVersion v;
  v.name = name;
  v.version = version;
  return v;
}

// A request that ran alone in its pass.
worker::BatchStats PassOfOne() {
  worker::BatchStats ran;
  ran.first_of_pass = true;
  ran.executed_batch_size = 1;
  return ran;
}

// Series of deleted versions went on being exported for the life of the
// process; the names come from users, so they grew without bound.
TEST(InferenceStatsTest, DeletedVersionsLoseTheirSeriesPublishedOnesKeepThem) {
  prometheus::Registry registry;
  InferenceStats stats(registry);
  const worker::BatchStats ran = PassOfOne();
  stats.RecordRequest("resnet8", 1, absl::StatusCode::kOk, 1, &ran);
  stats.RecordRequest("resnet8", 2, absl::StatusCode::kOk, 1, &ran);
  stats.RecordRequest("resnet8.fp32", 2, absl::StatusCode::kOk, 1, &ran);
  stats.RecordRequest("mobilenet", 1, absl::StatusCode::kOk, 1, &ran);
  stats.RecordRequest("", 0, absl::StatusCode::kNotFound, 1, nullptr);
  std::string before = Exposition(registry);
  EXPECT_THAT(before, HasSubstr("quantd_inference_requests_total{code=\"OK\",model=\"resnet8\",version=\"1\"}"));
  EXPECT_THAT(before, HasSubstr("quantd_inference_queue_duration_seconds_count{model=\"mobilenet\"}"));

  // resnet8 version 1 and all of mobilenet were deleted.
  stats.KeepOnly({Version("resnet8", 2)}, stats.Mark());
  const std::string after = Exposition(registry);
  EXPECT_THAT(after, Not(HasSubstr("model=\"resnet8\",version=\"1\"")));
  EXPECT_THAT(after, HasSubstr("quantd_inference_requests_total{code=\"OK\",model=\"resnet8\",version=\"2\"}"));
  EXPECT_THAT(after, HasSubstr("model=\"resnet8.fp32\",version=\"2\""));
  EXPECT_THAT(after, Not(HasSubstr("mobilenet")));
  EXPECT_THAT(after, HasSubstr("quantd_inference_queue_duration_seconds_count{model=\"resnet8\"}"));
  EXPECT_THAT(after, HasSubstr("code=\"NOT_FOUND\",model=\"\""));  // requests naming nothing published

  inference::ModelStatisticsResponse triton;
  stats.Fill("", 0, &triton);
  ASSERT_EQ(triton.model_stats_size(), 2);
  EXPECT_EQ(triton.model_stats(0).name(), "resnet8");
  EXPECT_EQ(triton.model_stats(0).version(), "2");
  EXPECT_EQ(triton.model_stats(1).name(), "resnet8.fp32");

  // A version published again later (a new number) counts from zero.
  stats.RecordRequest("mobilenet", 2, absl::StatusCode::kOk, 1, &ran);
  EXPECT_THAT(Exposition(registry),
              HasSubstr("quantd_inference_requests_total{code=\"OK\",model=\"mobilenet\",version=\"2\"} 1"));
}

// A scrape lists the published versions, then drops the others' series: a
// version published after the listing and served before the drop kept
// nothing of its first requests (its counters restarted from zero).
TEST(InferenceStatsTest, AVersionServedAfterTheListingKeepsItsSeries) {
  prometheus::Registry registry;
  InferenceStats stats(registry);
  const worker::BatchStats ran = PassOfOne();
  stats.RecordRequest("resnet8", 1, absl::StatusCode::kOk, 1, &ran);
  const uint64_t mark = stats.Mark();
  const std::vector<worker::ModelVersion> listed = {Version("resnet8", 1)};
  stats.RecordRequest("resnet8", 2, absl::StatusCode::kOk, 1, &ran);  // published after the listing
  stats.KeepOnly(listed, mark);
  EXPECT_THAT(Exposition(registry),
              HasSubstr("quantd_inference_requests_total{code=\"OK\",model=\"resnet8\",version=\"2\"} 1"));
  // At the next scrape it is listed, or (deleted) dropped.
  stats.KeepOnly(listed, stats.Mark());
  EXPECT_THAT(Exposition(registry), Not(HasSubstr("version=\"2\"")));
}

}  // namespace
}  // namespace quantd
