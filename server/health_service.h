#ifndef QUANTD_SERVER_HEALTH_SERVICE_H_
#define QUANTD_SERVER_HEALTH_SERVICE_H_

// grpc.health.v1.Health, implemented on our own generated code (see
// proto/grpc/health/v1/health.proto for why) with the callback API.

#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace quantd {

class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

  // "" (the whole server) and every name in `services` start SERVING.
  explicit HealthService(const std::vector<std::string>& services);
  ~HealthService() override;

  // Changes one service's status and notifies its watchers. Ignored after
  // Shutdown.
  void SetServingStatus(const std::string& service, ServingStatus status);
  // Returns the status of `service`, or SERVICE_UNKNOWN.
  ServingStatus GetServingStatus(const std::string& service) const;

  // Marks everything NOT_SERVING for good and ends Watch streams (after they
  // have sent NOT_SERVING), so that server shutdown does not wait for them.
  void Shutdown();

  grpc::ServerUnaryReactor* Check(
      grpc::CallbackServerContext* context,
      const grpc::health::v1::HealthCheckRequest* request,
      grpc::health::v1::HealthCheckResponse* response) override;

  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* context,
      const grpc::health::v1::HealthCheckRequest* request) override;

 private:
  class WatchReactor;

  ServingStatus StatusLocked(const std::string& service) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Called by a WatchReactor once gRPC is done with it.
  void RemoveWatcher(WatchReactor* watcher);

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, ServingStatus> statuses_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<WatchReactor*> watchers_ ABSL_GUARDED_BY(mu_);
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace quantd

#endif  // QUANTD_SERVER_HEALTH_SERVICE_H_
