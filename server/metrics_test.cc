#include "server/metrics.h"

#include <prometheus/text_serializer.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace quantd {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Scrape(const ServerMetrics& metrics) {
  return prometheus::TextSerializer().Serialize(metrics.registry()->Collect());
}

ServerMetrics::Options TestOptions() {
  ServerMetrics::Options options;
  options.version = "1.2.3";
  options.methods = {"/quantd.v1.QuantizationService/GetJob",
                     "/grpc.health.v1.Health/Check"};
  return options;
}

TEST(ServerMetricsTest, ExportsBuildInfo) {
  ServerMetrics metrics(TestOptions());
  EXPECT_THAT(Scrape(metrics), HasSubstr("quantd_build_info{version=\"1.2.3\"} 1"));
}

TEST(ServerMetricsTest, CountsByMethodAndCode) {
  ServerMetrics metrics(TestOptions());
  metrics.RecordRpc("/quantd.v1.QuantizationService/GetJob",
                    grpc::StatusCode::UNIMPLEMENTED, 0.002);
  metrics.RecordRpc("/quantd.v1.QuantizationService/GetJob",
                    grpc::StatusCode::UNIMPLEMENTED, 0.003);
  metrics.RecordRpc("/grpc.health.v1.Health/Check", grpc::StatusCode::OK, 0.0001);
  std::string text = Scrape(metrics);
  EXPECT_THAT(text, HasSubstr("quantd_grpc_requests_total{code=\"UNIMPLEMENTED\","
                              "method=\"quantd.v1.QuantizationService/GetJob\"} 2"));
  EXPECT_THAT(text, HasSubstr("quantd_grpc_requests_total{code=\"OK\","
                              "method=\"grpc.health.v1.Health/Check\"} 1"));
  EXPECT_THAT(text, HasSubstr("quantd_grpc_request_duration_seconds_count{"
                              "method=\"quantd.v1.QuantizationService/GetJob\"} 2"));
}

TEST(ServerMetricsTest, UnknownMethodsShareOneLabel) {
  ServerMetrics metrics(TestOptions());
  EXPECT_EQ(metrics.MethodLabel("/evil.Service/Random1"), "other");
  EXPECT_EQ(metrics.MethodLabel("/quantd.v1.QuantizationService/GetJob"),
            "quantd.v1.QuantizationService/GetJob");
  metrics.RecordRpc("/evil.Service/Random1", grpc::StatusCode::OK, 0.1);
  metrics.RecordRpc("/evil.Service/Random2", grpc::StatusCode::OK, 0.1);
  std::string text = Scrape(metrics);
  EXPECT_THAT(text, HasSubstr("quantd_grpc_requests_total{code=\"OK\",method=\"other\"} 2"));
  EXPECT_THAT(text, Not(HasSubstr("Random")));
}

TEST(ServerMetricsTest, HistogramsExistBeforeFirstRequest) {
  ServerMetrics metrics(TestOptions());
  EXPECT_THAT(Scrape(metrics),
              HasSubstr("quantd_grpc_request_duration_seconds_count{"
                        "method=\"grpc.health.v1.Health/Check\"} 0"));
}

TEST(ServerMetricsTest, InFlightGauge) {
  ServerMetrics metrics(TestOptions());
  metrics.RpcStarted();
  metrics.RpcStarted();
  metrics.RpcFinished();
  EXPECT_THAT(Scrape(metrics), HasSubstr("quantd_grpc_requests_in_flight 1"));
}

}  // namespace
}  // namespace quantd
