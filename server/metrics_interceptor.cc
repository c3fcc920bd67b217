#include "server/metrics_interceptor.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "worker/engine/base/log.h"
#include "server/status_conversion.h"

namespace quantd {
namespace {

using grpc::experimental::InterceptionHookPoints;

class MetricsInterceptor : public grpc::experimental::Interceptor {
 public:
  MetricsInterceptor(ServerMetrics* metrics, const char* method)
      : metrics_(metrics), method_(method == nullptr ? "" : method),
        start_(absl::Now()) {
    metrics_->RpcStarted();
  }

  // An RPC that ends without sending a status (the client went away) is
  // counted as CANCELLED.
  ~MetricsInterceptor() override {
    if (!recorded_) Record(grpc::StatusCode::CANCELLED);
    metrics_->RpcFinished();
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::PRE_SEND_STATUS)) {
      Record(methods->GetSendStatus().error_code());
    }
    methods->Proceed();
  }

 private:
  void Record(grpc::StatusCode code) {
    recorded_ = true;
    double seconds = absl::ToDoubleSeconds(absl::Now() - start_);
    metrics_->RecordRpc(method_, code, seconds);
    if (DebugLoggingEnabled()) {
      LogLine(LogLevel::kDebug,
              absl::StrCat("rpc method=", method_, " code=",
                           GrpcStatusCodeName(code), " seconds=", seconds));
    }
  }

  ServerMetrics* metrics_;
  std::string method_;
  absl::Time start_;
  bool recorded_ = false;
};

}  // namespace

grpc::experimental::Interceptor* MetricsInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  return new MetricsInterceptor(metrics_, info->method());
}

}  // namespace quantd
