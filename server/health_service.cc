#include "server/health_service.h"

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/status_conversion.h"

namespace quantd {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

namespace {
// Registered names are gRPC service names; a longer one is nobody's.
constexpr size_t kMaxServiceNameBytes = 256;
// Open Watch streams (each a reactor and its name) across all callers.
constexpr size_t kMaxWatchers = 4096;
}  // namespace

// One Watch stream. Writes are serialized: at most one in flight, and only
// the latest status is sent when several changes happen during a write.
class HealthService::WatchReactor
    : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  WatchReactor(HealthService* service, std::string name)
      : service_(service), name_(std::move(name)) {}

  const std::string& name() const { return name_; }

  // Queues `status` for sending unless it was the last one sent.
  void Notify(ServingStatus status) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    pending_ = status;
    MaybeWriteLocked();
  }

  // Ends the stream with OK once everything queued has been written.
  void EndStream() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    end_requested_ = true;
    MaybeWriteLocked();
  }

  // Ends the stream with `status` before anything was sent.
  void Refuse(grpc::Status status) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    FinishLocked(std::move(status));
  }

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      return;
    }
    MaybeWriteLocked();
  }

  void OnCancel() override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
  }

  void OnDone() override {
    service_->RemoveWatcher(this);
    delete this;
  }

 private:
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || writing_) return;
    if (pending_.has_value() && pending_ != last_sent_) {
      response_.set_status(*pending_);
      last_sent_ = pending_;
      pending_.reset();
      writing_ = true;
      StartWrite(&response_);
      return;
    }
    pending_.reset();
    if (end_requested_) FinishLocked(grpc::Status::OK);
  }

  void FinishLocked(grpc::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(std::move(status));
  }

  HealthService* const service_;
  const std::string name_;
  absl::Mutex mu_;
  HealthCheckResponse response_ ABSL_GUARDED_BY(mu_);
  std::optional<ServingStatus> pending_ ABSL_GUARDED_BY(mu_);
  std::optional<ServingStatus> last_sent_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool end_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

HealthService::HealthService(const std::vector<std::string>& services) {
  absl::MutexLock lock(&mu_);
  statuses_[""] = HealthCheckResponse::SERVING;
  for (const std::string& service : services) {
    statuses_[service] = HealthCheckResponse::SERVING;
  }
}

HealthService::~HealthService() = default;

void HealthService::SetServingStatus(const std::string& service,
                                     ServingStatus status) {
  absl::MutexLock lock(&mu_);
  if (shutting_down_) return;
  statuses_[service] = status;
  for (WatchReactor* watcher : watchers_) {
    if (watcher->name() == service) watcher->Notify(status);
  }
}

HealthService::ServingStatus HealthService::GetServingStatus(
    const std::string& service) const {
  absl::ReaderMutexLock lock(&mu_);
  return StatusLocked(service);
}

HealthService::ServingStatus HealthService::StatusLocked(
    const std::string& service) const {
  auto it = statuses_.find(service);
  return it == statuses_.end() ? HealthCheckResponse::SERVICE_UNKNOWN
                               : it->second;
}

void HealthService::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutting_down_ = true;
  for (auto& [name, status] : statuses_) status = HealthCheckResponse::NOT_SERVING;
  for (WatchReactor* watcher : watchers_) {
    watcher->Notify(StatusLocked(watcher->name()));
    watcher->EndStream();
  }
}

void HealthService::RemoveWatcher(WatchReactor* watcher) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(watcher);
}

grpc::ServerUnaryReactor* HealthService::Check(
    grpc::CallbackServerContext* context, const HealthCheckRequest* request,
    HealthCheckResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  ServingStatus status = GetServingStatus(request->service());
  if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
    reactor->Finish(ToGrpcStatus(absl::NotFoundError(
        absl::StrCat("service: unknown service \"", request->service().substr(0, kMaxServiceNameBytes), "\""))));
    return reactor;
  }
  response->set_status(status);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(
    grpc::CallbackServerContext* context, const HealthCheckRequest* request) {
  // Health checks need no token: what an anonymous watch may hold is bounded.
  if (request->service().size() > kMaxServiceNameBytes) {
    auto* refused = new WatchReactor(this, "");
    refused->Refuse(ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("service: ", request->service().size(), " bytes; a service name has at most ",
                     kMaxServiceNameBytes))));
    return refused;
  }
  auto* watcher = new WatchReactor(this, request->service());
  absl::MutexLock lock(&mu_);
  if (watchers_.size() >= kMaxWatchers) {
    watcher->Refuse(ToGrpcStatus(absl::ResourceExhaustedError(
        absl::StrCat(kMaxWatchers, " health watches are open; retry later or use Check"))));
    return watcher;
  }
  watchers_.insert(watcher);
  watcher->Notify(StatusLocked(request->service()));
  if (shutting_down_) watcher->EndStream();
  return watcher;
}

}  // namespace quantd
