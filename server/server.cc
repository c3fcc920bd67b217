#include "server/server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <utility>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/cpu_budget.h"
#include "worker/engine/base/log.h"
#include "server/metrics_interceptor.h"
#include "server/process_metrics.h"
#include "server/tls_identity.h"
#include "worker/data_dir_layout.h"
#include "worker/engine/base/pem_file.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/quantizer.h"
#include "worker/local_artifact_store.h"
#include "worker/local_blob_store.h"
#include "worker/model_vetter.h"
#include "worker/published_artifacts_check.h"
#include "worker/sqlite_job_store.h"

#ifndef QUANTD_VERSION
#error "QUANTD_VERSION must be defined by the build"
#endif

namespace quantd {
namespace {

constexpr char kReflectionService[] = "grpc.reflection.v1alpha.ServerReflection";

// "/<service>/<method>" for every method of the given services.
std::vector<std::string> FullMethodNames(const std::vector<std::string>& services) {
  std::vector<std::string> methods;
  const google::protobuf::DescriptorPool* pool =
      google::protobuf::DescriptorPool::generated_pool();
  for (const std::string& name : services) {
    const google::protobuf::ServiceDescriptor* service = pool->FindServiceByName(name);
    if (service == nullptr) continue;  // e.g. reflection is compiled elsewhere
    for (int i = 0; i < service->method_count(); ++i) {
      methods.push_back(absl::StrCat("/", name, "/", service->method(i)->name()));
    }
  }
  methods.push_back(absl::StrCat("/", kReflectionService, "/ServerReflectionInfo"));
  return methods;
}

// quantd_cpu_info's labels: what decides int8 kernel exactness and speed.
std::vector<std::pair<std::string, std::string>> CpuLabels(const engine::CpuInt8Report& cpu) {
  auto has = [&](const char* feature) {
    return std::find(cpu.features.begin(), cpu.features.end(), feature) != cpu.features.end();
  };
  std::vector<std::string> saturating;
  for (const auto& s : cpu.saturating_engines) saturating.push_back(s.engine);
  return {{"model", cpu.model_name},
          {"onednn_isa", cpu.onednn_isa},
          {"kernel_isa", cpu.kernel_isa},
          {"avx2", has("avx2") ? "true" : "false"},
          {"avx512", has("avx512f") ? "true" : "false"},
          {"vnni", has("avx512_vnni") || has("avx_vnni") ? "true" : "false"},
          {"amx", has("amx_int8") ? "true" : "false"},
          {"saturating_engines", absl::StrJoin(saturating, ",")}};
}

ServerMetrics::Options MetricsOptions() {
  ServerMetrics::Options options;
  options.version = QuantdVersion();
  options.cpu_labels = CpuLabels(engine::CpuInt8Info());
  options.methods = FullMethodNames({quantd::v1::QuantizationService::service_full_name(),
                                     inference::GRPCInferenceService::service_full_name(),
                                     grpc::health::v1::Health::service_full_name()});
  return options;
}

// An IPv4 or IPv6 address (bracketed or not), or a host name this machine
// resolves ("localhost"). Anything else failed only when the listeners
// bound, as a failed start naming the metrics port.
absl::Status CheckBindAddress(const std::string& address) {
  if (address.empty()) return absl::InvalidArgumentError("--bind_address must not be empty");
  std::string host = address;
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  unsigned char buffer[sizeof(in6_addr)];
  if (inet_pton(AF_INET, host.c_str(), buffer) == 1 || inet_pton(AF_INET6, host.c_str(), buffer) == 1) {
    return absl::OkStatus();
  }
  const bool looks_numeric = host.find_first_not_of("0123456789.") == std::string::npos;
  const bool host_name_characters =
      host.size() <= 253 &&
      host.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") == std::string::npos;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (!looks_numeric && host_name_characters && getaddrinfo(host.c_str(), nullptr, &hints, &found) == 0) {
    freeaddrinfo(found);
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("--bind_address: \"", address.substr(0, 80),
                                                 "\" is not an IP address nor a host name this machine resolves"));
}

absl::Status ValidateOptions(const QuantdServer::Options& options) {
  QUANTD_RETURN_IF_ERROR(CheckBindAddress(options.bind_address));
  if (options.grpc_port < 0 || options.grpc_port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--grpc_port ", options.grpc_port, " is not in 0..65535"));
  }
  if (options.metrics_port < -1 || options.metrics_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--metrics_port ", options.metrics_port, " is not in -1..65535 (-1 = off)"));
  }
  if (options.workers < 1 || options.workers > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("--workers must be in 1..256, got ", options.workers));
  }
  if (options.queue_capacity < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--queue_capacity must be at least 1, got ", options.queue_capacity));
  }
  if (options.max_upload_bytes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_upload_bytes must be at least 1, got ", options.max_upload_bytes));
  }
  if (options.max_batch_bytes < 0) {
    return absl::InvalidArgumentError("--max_batch_bytes must be >= 0 (0 = no limit)");
  }
  if (options.max_data_bytes < 0) {
    return absl::InvalidArgumentError("--max_data_bytes must be >= 0 (0 = no limit)");
  }
  // Below a second the collector would spin, and delete uploads before the
  // job that names them is submitted.
  if (!(options.blob_ttl_seconds == 0 || (options.blob_ttl_seconds >= 1 && options.blob_ttl_seconds <= 1e9))) {
    return absl::InvalidArgumentError(
        absl::StrCat("--blob_ttl_seconds must be 0 (keep blobs) or in 1..1e9, got ", options.blob_ttl_seconds));
  }
  if (!(options.model_vet_seconds > 0)) {
    return absl::InvalidArgumentError("--model_vet_seconds must be > 0");
  }
  if (options.rpc_threads < 1 || options.rpc_threads > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("--rpc_threads must be in 1..1024, got ", options.rpc_threads));
  }
  if (options.rpc_queue_capacity < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--rpc_queue_capacity must be at least 1, got ", options.rpc_queue_capacity));
  }
  if (options.inference_threads < 0 || options.inference_threads > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--inference_threads must be in 1..256, or 0 for one less than the usable CPUs, got ",
        options.inference_threads));
  }
  if (options.upload_idle_timeout < absl::ZeroDuration() || options.upload_idle_timeout > absl::Hours(24)) {
    return absl::InvalidArgumentError(absl::StrCat("--upload_idle_timeout_seconds must be in 0..86400 (0 = never), got ",
                                                   absl::ToDoubleSeconds(options.upload_idle_timeout)));
  }
  if (options.max_concurrent_uploads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--max_concurrent_uploads must be 0 (no cap) or more, got ",
                                                   options.max_concurrent_uploads));
  }
  if (options.upload_min_bytes_per_second < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--upload_min_bytes_per_second must be 0 (no minimum) or more, got ",
                                                   options.upload_min_bytes_per_second));
  }
  if (options.keepalive_time < absl::ZeroDuration() || options.keepalive_time > absl::Hours(24)) {
    return absl::InvalidArgumentError(absl::StrCat("--keepalive_seconds must be in 0..86400 (0 = never), got ",
                                                   absl::ToDoubleSeconds(options.keepalive_time)));
  }
  if (options.inference_queue_capacity < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--inference_queue_capacity must be at least 1, got ", options.inference_queue_capacity));
  }
  if (options.max_batch_size < 1 || options.max_batch_size > 65536) {
    return absl::InvalidArgumentError(absl::StrCat("--max_batch_size must be in 1..65536, got ", options.max_batch_size));
  }
  if (options.max_queue_delay_us < 0 || options.max_queue_delay_us > 10'000'000) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_queue_delay_us must be in 0..10000000 (10 s), got ", options.max_queue_delay_us));
  }
  if (options.model_cache_bytes < 0) {
    return absl::InvalidArgumentError("--model_cache_bytes must be >= 0 (0 = keep only the last model used)");
  }
  if (options.batch_size_copies < 0 || options.batch_size_copies > 65536) {
    return absl::InvalidArgumentError(
        absl::StrCat("--batch_size_copies must be in 0..65536, got ", options.batch_size_copies));
  }
  if (!(options.job_deadline_seconds >= 0)) {
    return absl::InvalidArgumentError("--job_deadline_seconds must be >= 0 (0 = none)");
  }
  if (options.data_dir.empty()) {
    return absl::InvalidArgumentError("--data_dir must not be empty");
  }
  for (const std::string& root : options.read_roots) {
    // An empty entry ("--read_roots=/mnt/a,") would have matched every path.
    if (root.empty() || root[0] != '/') {
      return absl::InvalidArgumentError(
          absl::StrCat("--read_roots: \"", root, "\" is not an absolute folder (entries are comma-separated)"));
    }
  }
  for (const std::string& root : options.read_roots) {
    // A mistyped root would only show later, as every path under it refused
    // for being outside the data root.
    std::error_code error;
    if (!std::filesystem::is_directory(root, error)) {
      return absl::InvalidArgumentError(absl::StrCat("--read_roots: \"", root, "\" is not a folder on this machine",
                                                     error ? absl::StrCat(" (", error.message(), ")") : ""));
    }
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  if (!options.tls_client_ca_file.empty() && options.tls_cert_file.empty()) {
    return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key (mTLS is TLS first)");
  }
  if (!options.metrics_tls_client_ca_file.empty() && options.tls_cert_file.empty()) {
    return absl::InvalidArgumentError("--metrics_tls_client_ca needs --tls_cert and --tls_key (mTLS is TLS first)");
  }
  if (options.metrics_require_token && options.token_file.empty()) {
    return absl::InvalidArgumentError("--metrics_require_token needs --token_file");
  }
  // Files the start reads: one that is missing or not PEM is a wrong flag,
  // refused before the data dir is made (what they grant is checked later).
  for (const auto& [flag, path] : {std::pair<const char*, const std::string*>{"--tls_cert", &options.tls_cert_file},
                                   {"--tls_key", &options.tls_key_file},
                                   {"--tls_client_ca", &options.tls_client_ca_file},
                                   {"--metrics_tls_client_ca", &options.metrics_tls_client_ca_file}}) {
    if (!path->empty()) QUANTD_RETURN_IF_ERROR(ReadPemFile(*path, flag).status());
  }
  if (options.tls_reload_interval < absl::Seconds(1) || options.tls_reload_interval > absl::Hours(24)) {
    return absl::InvalidArgumentError(absl::StrCat("--tls_reload_seconds must be in 1..86400, got ",
                                                   absl::ToDoubleSeconds(options.tls_reload_interval)));
  }
  if (!options.tls_cert_file.empty()) {
    // A key that does not match its certificate would only fail handshakes.
    for (const auto& [flags, client_ca] :
         {std::pair<const char*, const std::string*>{"--tls_cert/--tls_key/--tls_client_ca", &options.tls_client_ca_file},
          {"--tls_cert/--tls_key/--metrics_tls_client_ca", &options.metrics_tls_client_ca_file}}) {
      if (client_ca == &options.metrics_tls_client_ca_file && client_ca->empty()) continue;  // checked just above
      absl::StatusOr<std::unique_ptr<TlsIdentity>> identity = TlsIdentity::Load(
          TlsFiles{options.tls_cert_file, options.tls_key_file, *client_ca}, absl::Seconds(1), worker::Clock::Real());
      if (!identity.ok()) return absl::InvalidArgumentError(absl::StrCat(flags, ": ", identity.status().message()));
    }
  }
  if (!options.token_file.empty()) {
    std::error_code error;
    std::ifstream tokens(options.token_file);
    if (!std::filesystem::is_regular_file(options.token_file, error) || !tokens) {
      return absl::InvalidArgumentError(absl::StrCat("--token_file: cannot read ", options.token_file));
    }
    // Its lines too: a malformed file is a wrong flag value (exit 2), as a
    // missing one is.
    absl::StatusOr<std::unique_ptr<Authenticator>> parsed =
        Authenticator::FromFile(options.token_file, worker::Clock::Real());
    if (!parsed.ok()) return absl::InvalidArgumentError(absl::StrCat("--token_file: ", parsed.status().message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> GrpcCredentials(const QuantdServer::Options& options) {
  if (options.tls_cert_file.empty()) return grpc::InsecureServerCredentials();
  // gRPC reads the files again at every interval and serves what changed to
  // new connections (a renewed certificate without a restart). It serves the
  // pair as read, without checking that key and certificate match: the two
  // must change in one step, as a Kubernetes Secret update swaps them.
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      options.tls_key_file, options.tls_cert_file, options.tls_client_ca_file,
      static_cast<unsigned int>(absl::ToInt64Seconds(options.tls_reload_interval)));
  grpc::experimental::TlsServerCredentialsOptions tls(provider);
  tls.watch_identity_key_cert_pairs();
  if (options.tls_client_ca_file.empty()) {
    tls.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    tls.watch_root_certs();
    tls.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(tls);
}

int ClampedMillis(absl::Duration d) {
  return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(d), std::numeric_limits<int>::max()));
}

// Names this server to the job store for its leases: the same after a
// restart (so its interrupted jobs are recovered at once), and unique among
// live servers, since one host's servers cannot share a data dir.
std::string LeaseHolderName(const std::string& data_dir) {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  std::error_code error;
  std::filesystem::path dir = std::filesystem::canonical(data_dir, error);
  if (error) dir = std::filesystem::absolute(data_dir, error);
  return absl::StrCat(host[0] != '\0' ? host : "localhost", ":", dir.string());
}

absl::Status EnsureDataDir(const std::string& data_dir) {
  std::error_code error;
  std::filesystem::create_directories(data_dir, error);
  if (error) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot create data dir \"", data_dir, "\": ", error.message()));
  }
  if (!std::filesystem::is_directory(data_dir, error)) {
    return absl::FailedPreconditionError(
        absl::StrCat("data dir \"", data_dir, "\" is not a directory"));
  }
  if (::access(data_dir.c_str(), W_OK) != 0) {
    return absl::PermissionDeniedError(absl::StrCat(
        "data dir \"", data_dir, "\" is not writable: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

std::string HostPort(const std::string& host, int port) {
  if (host.find(':') != std::string::npos && host.front() != '[') {
    return absl::StrCat("[", host, "]:", port);  // bare IPv6 address
  }
  return absl::StrCat(host, ":", port);
}

// A job that succeeds here may have published a version: "newest" must name
// it at once, not after the repository's resolution TTL.
class PublishWatcher : public worker::JobWatcher {
 public:
  explicit PublishWatcher(worker::ModelRepository* models) : models_(models) {}
  void OnJobEvent(const worker::JobEvent& event) override {
    if (event.kind == worker::JobEvent::Kind::kStateChanged && event.state == worker::JobState::kSucceeded) {
      models_->ForgetResolutions();
    }
  }

 private:
  worker::ModelRepository* const models_;
};

}  // namespace

namespace {

QuantdServer::Options WithResolvedDefaults(QuantdServer::Options options) {
  if (options.inference_threads == 0) options.inference_threads = DefaultInferenceThreads(UsableCpus());
  return options;
}

// A warning per published artifact the store lacks (a volume not mounted, a
// wrong --data_dir, files deleted): said at start, not at a client's first
// failed inference. The server starts regardless: other versions serve.
void LogMissingPublishedArtifacts(worker::JobStore& jobs, worker::ArtifactStore& artifacts,
                                  const std::string& data_dir) {
  absl::StatusOr<std::vector<worker::MissingArtifact>> missing = worker::FindMissingPublishedArtifacts(jobs, artifacts);
  if (!missing.ok()) {
    LogLine(LogLevel::kWarning,
            absl::StrCat("quantd: could not check the published versions' artifacts: ", missing.status().message()));
    return;
  }
  for (const worker::MissingArtifact& m : *missing) {
    const std::string what =
        m.found_bytes < 0 ? absl::StrCat("is missing from the artifact store under ", data_dir)
                          : absl::StrCat("is ", m.found_bytes, " bytes in the artifact store under ", data_dir,
                                         ", not the ", m.recorded_bytes, " its job stored (damaged)");
    LogLine(LogLevel::kWarning,
            absl::StrCat("quantd: artifact ", m.artifact_id, " ", what, ": versions ", absl::StrJoin(m.versions, ", "),
                         " cannot be served until it is back (restore the files or rerun its job)"));
  }
}

}  // namespace

const char* QuantdVersion() { return QUANTD_VERSION; }

absl::Status QuantdServer::CheckOptions(const Options& options) { return ValidateOptions(options); }

QuantdServer::QuantdServer(const Options& options)
    : options_(WithResolvedDefaults(options)),
      metrics_(MetricsOptions()),
      // The inference service by name too: Kubernetes' gRPC probe of a
      // KServe-style deployment names it.
      health_({quantd::v1::QuantizationService::service_full_name(),
               inference::GRPCInferenceService::service_full_name()}) {}

absl::StatusOr<std::unique_ptr<QuantdServer>> QuantdServer::Start(
    const Options& options) {
  QUANTD_RETURN_IF_ERROR(CheckOptions(options));
  QUANTD_RETURN_IF_ERROR(EnsureDataDir(options.data_dir));
  QUANTD_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials, GrpcCredentials(options));
  std::unique_ptr<QuantdServer> server(new QuantdServer(options));
  if (options.token_file.empty()) {
    server->auth_ = Authenticator::Disabled();
  } else {
    absl::StatusOr<std::unique_ptr<Authenticator>> auth =
        Authenticator::FromFile(options.token_file, worker::Clock::Real());
    if (!auth.ok()) return absl::InvalidArgumentError(absl::StrCat("--token_file: ", auth.status().message()));
    server->auth_ = std::move(*auth);
  }
  QUANTD_ASSIGN_OR_RETURN(server->data_dir_lock_, worker::DataDirLock::Acquire(options.data_dir));
  QUANTD_RETURN_IF_ERROR(server->OpenStores());

  if (options.metrics_port >= 0) {
    MetricsHttpServer::Options http;
    http.host = options.bind_address;
    http.port = options.metrics_port;
    http.tls_cert_file = options.tls_cert_file;
    http.tls_key_file = options.tls_key_file;
    http.tls_client_ca_file = options.metrics_tls_client_ca_file;
    http.tls_reload_interval = options.tls_reload_interval;
    if (options.metrics_require_token) http.auth = server->auth_.get();
    http.inference = server->inference_rest_.get();
    QuantdServer* self = server.get();
    // Scrapes share refreshes (each walks the data dir and reads the store).
    server->scrape_refresh_ = std::make_unique<CoalescedRefresh>([self] {
      self->job_stats_->Refresh(*self->job_store_, self->quota_.get());
      self->job_stats_->CountRecovered(self->pool_->recovered());
      // Deleted versions' inference series go (model names are users' input).
      const uint64_t mark = self->inference_stats_->Mark();
      if (auto published = self->job_store_->ListModelVersions(""); published.ok()) {
        self->inference_stats_->KeepOnly(*published, mark);
      }
      // Versions another replica deleted leave this one's cache (this
      // replica's own deletes did at once).
      self->models_->DropUnpublished();
      // Evaluations load and evict models too, without passing through the
      // inference path that updates these.
      self->inference_stats_->SetCache(self->models_->cached_models(), self->models_->cached_bytes());
    });
    http.before_scrape = [self] { self->scrape_refresh_->Run(); };
    if (!options.tls_cert_file.empty()) {
      http.tls_certificate_expiry =
          &prometheus::BuildGauge()
               .Name("quantd_tls_certificate_expiry_timestamp_seconds")
               .Help("When the certificate in --tls_cert, as last loaded, expires (Unix time).")
               .Register(*server->metrics_.registry())
               .Add({});
    }
    QUANTD_ASSIGN_OR_RETURN(
        server->metrics_http_,
        MetricsHttpServer::Start(http, {server->metrics_.registry(), std::make_shared<ProcessMetrics>()}));
    server->metrics_port_ = server->metrics_http_->port();
  }

  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default on Linux: a second quantd on the same
  // port would then start "fine" and steal half the connections.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  if (options.keepalive_time > absl::ZeroDuration()) {
    // Pings go on for as long as a quiet call (a watch stream) lasts, and
    // on connections with no call at all.
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, ClampedMillis(options.keepalive_time));
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, ClampedMillis(options.keepalive_timeout));
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  }
  // Clients' own keepalive pings are welcome every 10 s (gRPC's default
  // answers pings more often than every 5 min with GOAWAY).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  std::string grpc_address = HostPort(options.bind_address, options.grpc_port);
  builder.AddListeningPort(grpc_address, credentials, &server->grpc_port_);
  builder.RegisterService(server->quantization_service_.get());
  builder.RegisterService(server->inference_service_.get());
  // Upload chunks may be 4 MiB plus framing.
  builder.SetMaxReceiveMessageSize(8 << 20);
  builder.RegisterService(&server->health_);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(std::make_unique<MetricsInterceptorFactory>(&server->metrics_));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->grpc_port_ == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot serve gRPC on ", grpc_address, " (address in use or not local?)"));
  }
  server->pool_->Start();
  if (options.blob_ttl_seconds > 0) {
    const absl::Duration ttl = absl::Seconds(options.blob_ttl_seconds);
    server->blob_collector_ = std::make_unique<worker::BlobCollector>(
        server->blob_store_.get(), server->job_store_.get(), worker::Clock::Real(), ttl,
        std::min(ttl, absl::Minutes(10)));
  }
  return server;
}

absl::Status QuantdServer::OpenStores() {
  const std::filesystem::path root(options_.data_dir);
  quota_ = std::make_unique<worker::DataQuota>(options_.data_dir, options_.max_data_bytes);
  QUANTD_ASSIGN_OR_RETURN(job_store_, worker::SqliteJobStore::Open((root / worker::kJobStoreFile).string()));
  QUANTD_ASSIGN_OR_RETURN(artifact_store_,
                          worker::LocalArtifactStore::Open((root / worker::kArtifactsDir).string(), quota_.get()));
  QUANTD_ASSIGN_OR_RETURN(blob_store_, worker::LocalBlobStore::Open((root / worker::kBlobsDir).string(),
                                                               options_.max_upload_bytes, quota_.get()));
  input_locator_ = std::make_unique<worker::InputLocator>(options_.data_dir, blob_store_.get());
  worker::ModelVetter vet_model;
  if (!options_.model_vet_command.empty()) {
    worker::ModelVetterOptions vetter;
    vetter.command = options_.model_vet_command;
    vetter.timeout = absl::Seconds(options_.model_vet_seconds);
    auto cache = std::make_shared<worker::CachingModelVetter>(vetter);
    vet_model = [cache](const std::string& model_path) { return cache->Vet(model_path); };
  }
  engine_ = worker::NewRealEngine(std::move(vet_model));
  worker::WorkerPool::Options pool_options;
  pool_options.workers = options_.workers;
  pool_options.queue_capacity = options_.queue_capacity;
  pool_options.max_batch_bytes = options_.max_batch_bytes;
  pool_options.holder = LeaseHolderName(options_.data_dir);
  pool_options.inputs = input_locator_.get();
  pool_options.interval_clock = worker::Clock::Monotonic();
  if (options_.job_deadline_seconds > 0) {
    pool_options.job_deadline = absl::Seconds(options_.job_deadline_seconds);
  }
  QUANTD_ASSIGN_OR_RETURN(pool_, worker::WorkerPool::Create(pool_options, job_store_.get(),
                                                            artifact_store_.get(), engine_.get(),
                                                            worker::Clock::Real()));
  job_stats_ = std::make_unique<JobStats>(*metrics_.registry());
  pool_->events().AddObserver(job_stats_.get());
  worker::ModelRepository::Options repository;
  repository.cache_bytes = options_.model_cache_bytes;
  repository.batch_size_copies = options_.batch_size_copies;
  repository.inputs = input_locator_.get();
  repository.refresh_in_background = true;  // models in use never wait on the load threads to re-resolve
  models_ = std::make_unique<worker::ModelRepository>(job_store_.get(), artifact_store_.get(), repository);
  publish_watcher_ = std::make_unique<PublishWatcher>(models_.get());
  pool_->events().AddObserver(publish_watcher_.get());
  if (const worker::JobStore::RecoveryCounts recovered = pool_->recovered();
      recovered.requeued > 0 || recovered.failed > 0 || recovered.cancelled > 0) {
    LogLine(LogLevel::kInfo, absl::StrCat("quantd: recovered interrupted jobs: requeued=", recovered.requeued,
                                          " failed=", recovered.failed, " cancelled=", recovered.cancelled));
    job_stats_->CountRecovered(recovered);
  }
  LogMissingPublishedArtifacts(*job_store_, *artifact_store_, options_.data_dir);
  const worker::SweptArtifacts swept = pool_->swept();
  if (swept.kept_unknown > 0) {
    LogLine(LogLevel::kWarning,
            absl::StrCat("quantd: kept ", swept.kept_unknown, " artifact files of jobs the job store has no record of (",
                         worker::FirstNames(swept.unknown_jobs, swept.unknown_jobs.size()),
                         "; was an older jobs.db restored?): they are those jobs' only record, so they are not removed"));
  }
  if (swept.artifacts > 0 || swept.manifests > 0) {
    LogLine(LogLevel::kInfo, absl::StrCat("quantd: removed files no job holds: artifacts=", swept.artifacts,
                                          swept.removed_ids.empty()
                                              ? ""
                                              : absl::StrCat(" (",
                                                             worker::FirstNames(swept.removed_ids,
                                                                                static_cast<size_t>(swept.artifacts)),
                                                             ")"),
                                          " manifests=", swept.manifests));
  }
  QuantizationServiceImpl::Deps deps;
  deps.data_dir = options_.data_dir;
  deps.pool = pool_.get();
  deps.blobs = blob_store_.get();
  deps.artifacts = artifact_store_.get();
  deps.server_info.set_version(QuantdVersion());
  deps.server_info.set_libtorch_version(engine::TorchVersion());
  for (const std::string& e : engine::AvailableKernelEngines()) deps.server_info.add_kernel_engines(e);
  ToProto(engine::CpuInt8Info(), deps.server_info.mutable_cpu());
  deps.server_info.set_intra_op_threads(engine::IntraOpThreads());
  deps.server_info.set_workers(options_.workers);
  deps.server_info.set_inference_threads(options_.inference_threads);
  deps.auth = auth_.get();
  deps.read_roots = options_.read_roots;
  rpc_executor_ = std::make_unique<BlockingExecutor>(options_.rpc_threads, options_.rpc_queue_capacity, "quantd-rpc");
  deps.executor = rpc_executor_.get();
  deps.models = models_.get();
  worker::Evaluator::Options evaluation_options;
  evaluation_options.max_batch_bytes = options_.max_batch_bytes;
  evaluation_options.runner = LeaseHolderName(options_.data_dir);
  evaluation_options.on_finished = [stats = job_stats_.get()](worker::EvaluationState state) {
    stats->CountEvaluationFinished(worker::EvaluationStateName(state));
  };
  evaluator_ = std::make_unique<worker::Evaluator>(job_store_.get(), models_.get(), worker::Clock::Real(),
                                                   evaluation_options);
  deps.evaluator = evaluator_.get();
  deps.upload_idle_timeout = options_.upload_idle_timeout;
  deps.upload_min_bytes_per_second = options_.upload_min_bytes_per_second;
  upload_slots_ = std::make_unique<UploadSlots>(options_.max_concurrent_uploads);
  deps.upload_slots = upload_slots_.get();
  deps.quota = options_.max_data_bytes > 0 ? quota_.get() : nullptr;
  if (options_.clock != nullptr) deps.clock = options_.clock;
  inference_executor_ =
      std::make_unique<BlockingExecutor>(options_.inference_threads, options_.inference_queue_capacity,
                                         "quantd-load");
  inference_stats_ = std::make_unique<InferenceStats>(*metrics_.registry());
  worker::DynamicBatcher::Options batching;
  batching.threads = options_.inference_threads;
  batching.max_batch_size = options_.max_batch_size;
  batching.max_queue_delay = absl::Microseconds(options_.max_queue_delay_us);
  batching.batching = options_.dynamic_batching;
  batching.queue_capacity = options_.inference_queue_capacity;
  // With a CPU left over beside the inference threads, responses are
  // encoded and written there, and the inference threads go on to their
  // next pass at once: with one inference thread on 2 cores, 16 batch-1
  // clients got 1-24% more images/s (5 A/B pairs, AVX2 EPYC). With every CPU
  // running passes, the hand-off only made passes smaller.
  batching.completion_threads = options_.inference_threads < UsableCpus() ? 1 : 0;
  // OpenMP keeps the thread count per thread: a new thread would otherwise
  // run oneDNN on every core, fighting the other inference thread.
  const int intra_op_threads = engine::IntraOpThreads();
  batching.thread_init = [intra_op_threads] { engine::SetIntraOpThreads(intra_op_threads); };
  batcher_ = std::make_unique<worker::DynamicBatcher>(batching, worker::Clock::Monotonic());
  InferenceCore::Deps core;
  core.models = models_.get();
  core.jobs = job_store_.get();
  core.batcher = batcher_.get();
  core.health = &health_;
  core.stats = inference_stats_.get();
  core.server_version = QuantdVersion();
  if (options_.clock != nullptr) core.clock = options_.clock;
  inference_core_ = std::make_unique<InferenceCore>(core);
  InferenceServiceImpl::Deps inference;
  inference.core = inference_core_.get();
  inference.auth = auth_.get();
  inference.executor = inference_executor_.get();
  inference_service_ = std::make_unique<InferenceServiceImpl>(inference);
  inference_rest_ = std::make_unique<InferenceRest>(inference_core_.get(), auth_.get());
  quantization_service_ = std::make_unique<QuantizationServiceImpl>(deps);
  return absl::OkStatus();
}

QuantdServer::~QuantdServer() { Shutdown(absl::ZeroDuration()); }

void QuantdServer::Shutdown(absl::Duration grace) {
  {
    absl::MutexLock lock(&shutdown_mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  health_.Shutdown();
  // Watch streams would otherwise hold the gRPC shutdown for its whole grace.
  if (pool_ != nullptr) pool_->events().CloseAll();
  if (server_ != nullptr) {
    server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
    LogLine(LogLevel::kDebug, "quantd: grpc server shut down");
    server_->Wait();
  }
  // Every call has ended, so no task is left that could still answer one.
  if (rpc_executor_ != nullptr) rpc_executor_->Shutdown();
  if (inference_executor_ != nullptr) inference_executor_->Shutdown();
  // A running evaluation stops at its next batch, stored as FAILED.
  if (evaluator_ != nullptr) evaluator_->Shutdown();
  // Runs what is queued (REST calls still waiting get their answers).
  if (batcher_ != nullptr) batcher_->Shutdown();
  blob_collector_.reset();
  if (pool_ != nullptr) {
    pool_->Stop();  // a running job is interrupted and goes back to the queue
    LogLine(LogLevel::kDebug, "quantd: workers stopped");
  }
  metrics_http_.reset();
  LogLine(LogLevel::kDebug, "quantd: metrics endpoint stopped");
}

std::shared_ptr<grpc::Channel> QuantdServer::InProcessChannel() {
  return server_->InProcessChannel(grpc::ChannelArguments());
}

absl::Status WritePortFile(const std::string& path, int grpc_port,
                           int metrics_port) {
  std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot write port file \"", tmp, "\": ", std::strerror(errno)));
    }
    out << "{\"grpc_port\": " << grpc_port << ", \"metrics_port\": " << metrics_port
        << ", \"pid\": " << ::getpid() << "}\n";
    out.close();
    if (!out) {
      return absl::DataLossError(absl::StrCat("cannot finish port file \"", tmp, "\""));
    }
  }
  std::error_code error;
  std::filesystem::rename(tmp, path, error);
  if (error) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot rename \"", tmp, "\" to \"", path, "\": ", error.message()));
  }
  return absl::OkStatus();
}

}  // namespace quantd
