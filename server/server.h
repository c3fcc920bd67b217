#ifndef QUANTD_SERVER_SERVER_H_
#define QUANTD_SERVER_SERVER_H_

// Wires quantd together: gRPC server (QuantizationService, health,
// reflection, metrics interceptor) and the Prometheus /metrics endpoint.

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/auth.h"
#include "server/blocking_executor.h"
#include "server/coalesced_refresh.h"
#include "server/health_service.h"
#include "server/inference_core.h"
#include "server/inference_rest.h"
#include "server/inference_service.h"
#include "server/inference_stats.h"
#include "server/job_stats.h"
#include "server/metrics.h"
#include "server/metrics_http_server.h"
#include "server/quantization_service.h"
#include "server/upload_slots.h"
#include "worker/artifact_store.h"
#include "worker/blob_collector.h"
#include "worker/blob_store.h"
#include "worker/input_locator.h"
#include "worker/clock.h"
#include "worker/data_quota.h"
#include "worker/data_dir_lock.h"
#include "worker/dynamic_batcher.h"
#include "worker/evaluation.h"
#include "worker/job_runner.h"
#include "worker/job_store.h"
#include "worker/model_repository.h"
#include "worker/worker_pool.h"

namespace quantd {

// The build's version string (the CMake project version).
const char* QuantdVersion();

class QuantdServer {
 public:
  struct Options {
    // Address both listeners bind to ("0.0.0.0" = all IPv4 interfaces).
    std::string bind_address = "0.0.0.0";
    // gRPC port; 0 = pick a free one (see grpc_port()).
    int grpc_port = 50051;
    // Prometheus /metrics port; 0 = pick a free one; -1 = no endpoint.
    int metrics_port = 9464;
    // Root of stored blobs, jobs and artifacts; created if missing.
    std::string data_dir = "./data";
    // Concurrent quantization jobs.
    int workers = 1;
    // QUEUED jobs allowed at once; QuantizeJob beyond it is RESOURCE_EXHAUSTED.
    int queue_capacity = 100;
    // Largest accepted UploadModel/UploadDataset, in bytes.
    int64_t max_upload_bytes = int64_t{512} << 20;
    // An upload stream that sends nothing for this long is dropped; zero:
    // never (--upload_idle_timeout_seconds; a duration for tests).
    absl::Duration upload_idle_timeout = absl::Seconds(60);
    // Past its first `upload_idle_timeout` (a minute when that is zero), an
    // upload averaging fewer bytes per second since it began is dropped, so a client trickling a byte now
    // and then does not hold its quota reservation; zero: no minimum
    // (--upload_min_bytes_per_second).
    int64_t upload_min_bytes_per_second = 4096;
    // Uploads (UploadModel and UploadDataset together) in progress at once;
    // beyond it an upload is RESOURCE_EXHAUSTED at its start; 0 = no cap
    // (--max_concurrent_uploads).
    int max_concurrent_uploads = 64;
    // Times uploads and requests' "timeout" parameters; nullptr: a clock
    // that never jumps (tests pass a fake one).
    worker::Clock* clock = nullptr;
    // Each gRPC connection is pinged after this long without traffic, and
    // closed (ending its calls, e.g. watch streams) when the peer does not
    // answer within `keepalive_timeout`: a client that vanished without
    // closing its connection holds nothing. Zero: never
    // (--keepalive_seconds; durations for tests).
    absl::Duration keepalive_time = absl::Seconds(60);
    absl::Duration keepalive_timeout = absl::Seconds(20);
    // Longest a job may run once started; 0 = no limit.
    double job_deadline_seconds = 3600;
    // Most bytes one batch of float32 images may take in a job (calibration
    // and evaluation); a larger batch_size fails the job. 0 = no limit.
    int64_t max_batch_bytes = int64_t{256} << 20;
    // TLS on gRPC and HTTP: PEM certificate chain and private key (both or
    // neither). With a client CA as well, gRPC requires client certificates
    // signed by it (mTLS).
    std::string tls_cert_file;
    std::string tls_key_file;
    std::string tls_client_ca_file;
    // The same for HTTPS /metrics (a scraper then needs a client certificate).
    std::string metrics_tls_client_ca_file;
    // The TLS files are read again once they change (a renewed certificate
    // is served without a restart), looked at this often; 1 s to 1 day.
    absl::Duration tls_reload_interval = absl::Seconds(60);
    // Bearer tokens with roles (see server/auth.h); empty = no authentication.
    std::string token_file;
    // With a token file: /metrics needs a read token too (else it is open).
    bool metrics_require_token = false;
    // Folders outside data_dir that request paths may reach through links.
    std::vector<std::string> read_roots;
    // Everything stored under data_dir (blobs, artifacts, jobs) stays below
    // this many bytes; 0 = no limit.
    int64_t max_data_bytes = 0;
    // Blobs no queued or running job uses, idle this long, are deleted;
    // 0 = keep them until DeleteBlob.
    double blob_ttl_seconds = 7 * 24 * 3600;
    // A job's model is first loaded by this command (the model path appended;
    // see worker/model_vetter.h), since a damaged or crafted archive can crash
    // LibTorch's loader. quantd runs itself: {"/proc/self/exe", "--vet_model_file"}.
    // Empty = models load in the server process (trusted models only).
    std::vector<std::string> model_vet_command;
    // How long that child may take before the job fails.
    double model_vet_seconds = 120;
    // Threads for RPC handlers' blocking work (job store, blob and artifact
    // files), off gRPC's callback threads; and how many calls may wait for
    // them before more are RESOURCE_EXHAUSTED.
    int rpc_threads = 8;
    int rpc_queue_capacity = 1000;
    // Serving (the Open Inference Protocol over gRPC and REST): threads that
    // run forward passes (and as many that look up and check requests),
    // requests that may wait for them (per model), the most samples one
    // request or coalesced pass may carry, how long a request waits for
    // others to join its pass (dynamic batching; off: each runs alone), and
    // the loaded models' byte budget. inference_threads 0: one less than the
    // usable CPUs, at least 1 (DefaultInferenceThreads).
    int inference_threads = 0;
    int inference_queue_capacity = 256;
    int64_t max_batch_size = 64;
    int64_t max_queue_delay_us = 100;
    bool dynamic_batching = true;
    int64_t model_cache_bytes = int64_t{1} << 30;
    int batch_size_copies = engine::kDefaultBatchSizeCopies;
  };

  // Validates `options`, binds both ports and starts serving.
  static absl::StatusOr<std::unique_ptr<QuantdServer>> Start(const Options& options);
  // Start's checks of `options` alone (INVALID_ARGUMENT naming the flag), so
  // that main can tell a bad command line (exit 2) from a failed start.
  static absl::Status CheckOptions(const Options& options);

  ~QuantdServer();
  QuantdServer(const QuantdServer&) = delete;
  QuantdServer& operator=(const QuantdServer&) = delete;

  int grpc_port() const { return grpc_port_; }
  // -1 when the metrics endpoint is off.
  int metrics_port() const { return metrics_port_; }
  // The options, with defaults that depend on the CPUs resolved
  // (inference_threads).
  const Options& options() const { return options_; }

  // Health turns NOT_SERVING, new RPCs are refused, in-flight ones get up to
  // `grace` to finish (then they are cancelled), the metrics endpoint stops.
  // Safe to call more than once; later calls do nothing.
  void Shutdown(absl::Duration grace);

  HealthService& health() { return health_; }
  worker::WorkerPool& pool() { return *pool_; }
  ServerMetrics& metrics() { return metrics_; }
  BlockingExecutor& rpc_executor() { return *rpc_executor_; }
  int uploads_in_progress() const { return upload_slots_->in_use(); }
  // A channel to this server that bypasses the network (for tests).
  std::shared_ptr<grpc::Channel> InProcessChannel();

 private:
  explicit QuantdServer(const Options& options);
  absl::Status OpenStores();

  const Options options_;
  std::unique_ptr<worker::DataDirLock> data_dir_lock_;  // first in, last out
  std::unique_ptr<Authenticator> auth_;
  ServerMetrics metrics_;
  HealthService health_;
  // Observe the pool's events: outlive the pool.
  std::unique_ptr<JobStats> job_stats_;
  std::unique_ptr<worker::JobWatcher> publish_watcher_;
  std::unique_ptr<worker::DataQuota> quota_;
  std::unique_ptr<worker::JobStore> job_store_;
  std::unique_ptr<worker::ArtifactStore> artifact_store_;
  std::unique_ptr<worker::BlobStore> blob_store_;
  // Jobs' input references -> this server's files (for the pool and models).
  std::unique_ptr<worker::InputLocator> input_locator_;
  std::unique_ptr<worker::ModelRepository> models_;  // before the pool: its events reach it
  std::unique_ptr<worker::QuantizationEngine> engine_;
  std::unique_ptr<worker::WorkerPool> pool_;
  // After the stores and pool it uses; stopped once gRPC has stopped.
  std::unique_ptr<BlockingExecutor> rpc_executor_;
  std::unique_ptr<UploadSlots> upload_slots_;  // held by upload calls: outlives gRPC, as the executor does
  std::unique_ptr<QuantizationServiceImpl> quantization_service_;
  std::unique_ptr<worker::Evaluator> evaluator_;
  std::unique_ptr<BlockingExecutor> inference_executor_;
  std::unique_ptr<InferenceStats> inference_stats_;
  std::unique_ptr<worker::DynamicBatcher> batcher_;
  std::unique_ptr<InferenceCore> inference_core_;
  std::unique_ptr<InferenceServiceImpl> inference_service_;
  std::unique_ptr<InferenceRest> inference_rest_;
  std::unique_ptr<worker::BlobCollector> blob_collector_;
  std::unique_ptr<CoalescedRefresh> scrape_refresh_;  // before metrics_http_, which calls it
  std::unique_ptr<MetricsHttpServer> metrics_http_;
  std::unique_ptr<grpc::Server> server_;
  int grpc_port_ = 0;
  int metrics_port_ = -1;

  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

// Writes {"grpc_port": N, "metrics_port": M, "pid": P} to `path` atomically
// (temporary file + rename), for tests and scripts that start quantd on
// ephemeral ports.
absl::Status WritePortFile(const std::string& path, int grpc_port,
                           int metrics_port);

}  // namespace quantd

#endif  // QUANTD_SERVER_SERVER_H_
