// quantd: the gRPC edge of the quantization service. Flags -> Options ->
// QuantdServer::Start -> wait for SIGTERM/SIGINT -> graceful Shutdown.

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/allocator.h"
#include "worker/engine/base/log.h"
#include "server/server.h"
#include "worker/engine/base/crash_report.h"
#include "worker/engine/quantizer.h"
#include "worker/model_vetter.h"

ABSL_FLAG(std::string, bind_address, "0.0.0.0",
          "Address the gRPC and metrics listeners bind to.");
ABSL_FLAG(int, grpc_port, 50051, "gRPC port; 0 = pick a free port.");
ABSL_FLAG(int, metrics_port, 9464,
          "Prometheus /metrics port; 0 = pick a free port; -1 = disabled.");
ABSL_FLAG(std::string, data_dir, "./data",
          "Root folder for blobs, jobs and artifacts; created if missing.");
ABSL_FLAG(int, workers, 1, "Quantization jobs run concurrently.");
ABSL_FLAG(int, queue_capacity, 100,
          "Jobs that may wait in the queue; QuantizeJob beyond it is RESOURCE_EXHAUSTED.");
ABSL_FLAG(int64_t, max_upload_bytes, int64_t{512} << 20,
          "Largest UploadModel/UploadDataset accepted, in bytes.");
ABSL_FLAG(int64_t, upload_min_bytes_per_second, 4096,
          "Past its first --upload_idle_timeout_seconds (60 s when that is 0), an upload averaging fewer bytes per "
          "second since it began is dropped (DEADLINE_EXCEEDED; its partial file and quota reservation go); "
          "0 = no minimum.");
ABSL_FLAG(int, max_concurrent_uploads, 64,
          "Uploads (UploadModel and UploadDataset together) in progress at once; beyond it an upload is "
          "RESOURCE_EXHAUSTED at its start. 0 = no cap.");
ABSL_FLAG(int64_t, upload_idle_timeout_seconds, 60,
          "An UploadModel/UploadDataset stream that sends no message for this long is dropped "
          "(DEADLINE_EXCEEDED; its partial file and quota reservation go); 0 = never.");
ABSL_FLAG(int64_t, keepalive_seconds, 60,
          "Each gRPC connection quiet this long is pinged; one whose peer does not answer within "
          "20 s is closed with its calls (watch streams of a vanished client); 0 = never.");
ABSL_FLAG(double, job_deadline_seconds, 3600,
          "Longest one start of a job may run (it then FAILS with DEADLINE_EXCEEDED); a job started "
          "again after its server stopped gets the same again; 0 = none.");
ABSL_FLAG(std::string, port_file, "",
          "If set, write the bound ports as JSON to this file once serving.");
ABSL_FLAG(double, shutdown_grace_seconds, 10,
          "On SIGTERM/SIGINT, how long in-flight RPCs may take to finish.");
ABSL_FLAG(bool, log_rpcs, false, "Log one debug line per finished RPC.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain: serve gRPC and the HTTP port (/metrics, REST /v2, health probes) "
          "over TLS (with --tls_key).");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA: gRPC clients must present a certificate it signed (mTLS).");
ABSL_FLAG(std::string, metrics_tls_client_ca, "",
          "PEM CA: clients of the HTTPS port (/metrics, REST /v2, health probes) must present a "
          "certificate it signed (mTLS; needs --tls_cert).");
ABSL_FLAG(int32_t, tls_reload_seconds, 60,
          "How often the TLS files are looked at: a changed certificate, key or client CA is "
          "served to new connections without a restart (1..86400).");
ABSL_FLAG(std::string, token_file, "",
          "Bearer tokens, one per line: \"<name> <read|submit|admin> <token>\"; re-read when it "
          "changes. Empty = no authentication.");
ABSL_FLAG(std::vector<std::string>, read_roots, {},
          "Comma-separated folders outside --data_dir that request paths may reach through "
          "symlinks in the data dir (e.g. a read-only dataset volume).");
ABSL_FLAG(int64_t, max_batch_bytes, int64_t{256} << 20,
          "Most bytes one batch of float32 images may take in a job (calibration and evaluation); "
          "a larger batch_size fails the job with INVALID_ARGUMENT. 0 = no limit.");
ABSL_FLAG(int64_t, max_data_bytes, 0,
          "Quota for everything under --data_dir (uploads and artifacts beyond it are "
          "RESOURCE_EXHAUSTED); 0 = no limit.");
ABSL_FLAG(double, blob_ttl_seconds, 7 * 24 * 3600,
          "Delete uploaded blobs that no queued or running job uses after this long unused; "
          "0 = keep them until DeleteBlob.");
ABSL_FLAG(bool, metrics_require_token, false,
          "With --token_file: /metrics needs a read token as well (else it is open).");
ABSL_FLAG(bool, vet_models, true,
          "Load each job's model in a child quantd first: a damaged or crafted TorchScript "
          "archive can crash LibTorch's loader, and then only that child dies. false = load "
          "models in the server process (trusted models only).");
ABSL_FLAG(double, model_vet_seconds, 120,
          "How long the child loading a job's model may take before the job fails.");
ABSL_FLAG(int64_t, model_vet_memory_bytes, 0,
          "Address space the model-vetting child may add to what it maps at start; 0 = the "
          "machine's memory and swap, or the cgroup's limit if less. In a container whose memory "
          "limit quantd itself shares, set it below what quantd leaves free: a child that "
          "outgrows the container would take the server down with it (OOM killer).");
ABSL_FLAG(std::string, vet_model_file, "",
          "Internal (what quantd runs as the child of --vet_models): load this TorchScript "
          "model, print why it fails, exit 0 when it loads.");
ABSL_FLAG(int, rpc_threads, 8,
          "Threads for the blocking part of RPC handlers (job store, blob and artifact files), so "
          "gRPC's own threads never wait on the disk.");
ABSL_FLAG(int, rpc_queue_capacity, 1000,
          "RPCs that may wait for --rpc_threads; beyond it calls are RESOURCE_EXHAUSTED.");
ABSL_FLAG(int, inference_threads, 0,
          "Threads that run inference forward passes (and as many that load models and check requests), "
          "apart from jobs; 0: one less than the CPUs this process may use (affinity mask and cgroup quota), "
          "at least 1.");
ABSL_FLAG(int, inference_queue_capacity, 256,
          "Inference requests that may wait, per model; beyond it RESOURCE_EXHAUSTED.");
ABSL_FLAG(int64_t, max_batch_size, 64,
          "Most samples one inference request, or one pass of coalesced requests, may carry.");
ABSL_FLAG(int64_t, max_queue_delay_us, 100,
          "Dynamic batching: how long a request waits for others to join its pass, from its arrival or "
          "the last pass's end, at most twice this (requests already waiting join without it; one that finds "
          "the batcher idle runs at once).");
ABSL_FLAG(bool, dynamic_batching, true,
          "Coalesce concurrent inference requests for the same model into one pass (false: each runs alone).");
ABSL_FLAG(int64_t, model_cache_bytes, int64_t{1} << 30,
          "Byte budget of loaded models (int8 artifacts and FP32 sources), least recently used out.");
ABSL_FLAG(int, batch_size_copies, quantd::engine::kDefaultBatchSizeCopies,
          "Batch sizes that may get a copy of an int8 model of their own on onednn (oneDNN's prepared "
          "convolutions fit one input shape each), at most an eighth of --model_cache_bytes per model; "
          "0 = none.");
ABSL_FLAG(int, intra_op_threads, 1,
          "LibTorch intra-op threads per job (set explicitly: 2 OpenMP threads on a busy "
          "2-core machine can be 10-100x slower).");

namespace {

// Self-pipe: the handler only write()s the signal number (async-signal-safe);
// main() blocks reading it. Works whichever thread the kernel picks, also the
// ones gRPC may start before main().
int signal_pipe[2] = {-1, -1};

void OnSignal(int signal_number) {
  const unsigned char byte = static_cast<unsigned char>(signal_number);
  const int saved_errno = errno;
  [[maybe_unused]] ssize_t ignored = ::write(signal_pipe[1], &byte, 1);
  errno = saved_errno;
}

bool InstallSignalHandlers() {
  if (::pipe(signal_pipe) != 0) return false;
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  // Past a file size limit (ulimit -f) a write fails with EFBIG, which the
  // stores report, instead of SIGXFSZ ending the whole server.
  ::signal(SIGXFSZ, SIG_IGN);
  // An ignored SIGCHLD survives exec: whoever started quantd may have left
  // it so, and the kernel would then reap the model-vetting children before
  // quantd reads how they ended.
  ::signal(SIGCHLD, SIG_DFL);
  // SIGHUP (a closed terminal or SSH session, or an operator expecting a
  // reload) is read and logged, not the default death mid-job: quantd
  // rereads its tokens and TLS files by itself.
  return ::sigaction(SIGTERM, &action, nullptr) == 0 && ::sigaction(SIGINT, &action, nullptr) == 0 &&
         ::sigaction(SIGHUP, &action, nullptr) == 0;
}

int WaitForSignal() {
  unsigned char byte = 0;
  while (true) {
    ssize_t n = ::read(signal_pipe[0], &byte, 1);
    if (n == 1) return byte;
    if (n < 0 && errno == EINTR) continue;
    return SIGTERM;  // pipe broken: treat like a termination request
  }
}

// --help (or -h, --helpfull, --helpshort): quantd's flags, sorted, on stdout,
// exit 0, as quantctl and quantd-quantize answer it. (Abseil's own help
// exits 1, which reads as a failure to scripts.)
bool HelpRequested(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help" || arg == "-help" || arg == "--helpfull" || arg == "--helpshort") return true;
  }
  return false;
}

void PrintHelp() {
  std::vector<const absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (absl::EndsWith(flag->Filename(), "server/main.cc")) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(), [](const auto* a, const auto* b) { return a->Name() < b->Name(); });
  std::cout << "quantd: " << absl::ProgramUsageMessage() << "\n\nflags (--flag=VALUE or --flag VALUE):\n";
  for (const absl::CommandLineFlag* flag : flags) {
    std::cout << "  --" << flag->Name() << " (default: " << flag->DefaultValue() << ")\n      " << flag->Help()
              << "\n";
  }
}

// What a flag's value must be, said as quantctl and quantd-quantize say it.
std::string ExpectedValue(const absl::CommandLineFlag& flag) {
  if (flag.IsOfType<bool>()) return "true or false";
  if (flag.IsOfType<int>() || flag.IsOfType<int64_t>()) return "an integer";
  if (flag.IsOfType<double>()) return "a number";
  return "a valid value";
}

// Unknown flags and values that do not parse, reported in the form of the
// other tools ("quantd: --grpc_port: 'abc' is not an integer"), not in
// Abseil's ("ERROR: Illegal value 'abc' specified for flag 'grpc_port'").
// Run after the checks that every value flag has a value.
bool FlagsParse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--") break;  // the rest are arguments, for Abseil too
    if (!absl::StartsWith(arg, "--")) continue;
    const absl::string_view body = arg.substr(2);
    const size_t equals = body.find('=');
    const absl::string_view name = body.substr(0, equals);
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && absl::StartsWith(name, "no") && equals == absl::string_view::npos) {
      // Abseil's --noFLAG for a boolean.
      if (absl::CommandLineFlag* negated = absl::FindCommandLineFlag(name.substr(2));
          negated != nullptr && negated->IsOfType<bool>()) {
        continue;
      }
    }
    if (flag == nullptr) {
      std::cerr << "quantd: --" << name << ": unknown flag (quantd --help lists them)\n";
      return false;
    }
    absl::string_view value;
    if (equals != absl::string_view::npos) {
      value = body.substr(equals + 1);
    } else if (flag->IsOfType<bool>() || i + 1 >= argc) {
      continue;
    } else {
      value = argv[++i];
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      std::cerr << "quantd: --" << name << ": '" << value << "' is not " << ExpectedValue(*flag) << "\n";
      return false;
    }
  }
  return true;
}

// Whether only this machine can reach `address` (--bind_address).
bool IsLoopbackAddress(absl::string_view address) {
  return absl::StartsWith(address, "127.") || address == "localhost" || address == "::1" || address == "[::1]";
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "quantizes FP32 TorchScript models to int8 and serves them over gRPC.\n"
      "  quantd --grpc_port=50051 --metrics_port=9464 --data_dir=./data");
  // --help lists the flags of this file (Abseil's default looks for a file
  // named after the program, and found none).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view path) { return absl::EndsWith(path, "server/main.cc"); };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  // --grpc-port = --grpc_port, as in quantctl and quantd-quantize.
  for (int i = 1; i < argc; ++i) {
    if (argv[i][0] != '-' || argv[i][1] != '-') continue;
    for (char* c = argv[i] + 2; *c != '\0' && *c != '='; ++c) {
      if (*c == '-') *c = '_';
    }
  }
  if (HelpRequested(argc, argv)) {
    PrintHelp();
    return 0;
  }
  // Abseil's own usage flags end in exit(0) inside flag parsing, which the
  // exit-2 hook below turns into a silent exit 2: answered here instead.
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--version") {
      std::cout << "quantd " << quantd::QuantdVersion() << "\n";
      return 0;
    }
    if (absl::StartsWith(arg, "--help") || absl::StartsWith(arg, "--only_check_args") ||
        absl::StartsWith(arg, "--version=")) {
      std::cerr << "quantd: " << arg << ": not supported; --help lists the flags, --version prints the version\n";
      return 2;
    }
  }
  // Flags from a file or the environment would pass every check below (an
  // empty --token_file there would run without auth): refused, as quantctl
  // and quantd-quantize know no such flags.
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    for (const absl::string_view indirect : {"flagfile", "fromenv", "tryfromenv"}) {
      const std::string flag = absl::StrCat("--", indirect);
      if (arg == flag || absl::StartsWith(arg, flag + "=") || arg == absl::StrCat("-", indirect) ||
          absl::StartsWith(arg, absl::StrCat("-", indirect, "="))) {
        std::cerr << "quantd: " << arg << ": not supported; give every flag on the command line\n";
        return 2;
      }
    }
  }
  // Abseil also takes "-token_file=...", but every check here looks at "--"
  // (an empty "-token_file=" turned auth off silently): one dash is refused,
  // as quantctl and quantd-quantize refuse it. A value after a flag that
  // takes one ("--metrics_port -1") is not a flag.
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg.size() < 2 || arg[0] != '-' || arg[1] == '-' || !absl::ascii_isalpha(arg[1])) continue;
    if (i > 1) {
      const absl::string_view previous = argv[i - 1];
      const absl::CommandLineFlag* flag =
          absl::StartsWith(previous, "--") && !absl::StrContains(previous, '=')
              ? absl::FindCommandLineFlag(previous.substr(2))
              : nullptr;
      if (flag != nullptr && !flag->IsOfType<bool>()) continue;
    }
    std::cerr << "quantd: " << arg << ": flags take two dashes (-" << arg << ")\n";
    return 2;
  }
  // "--data_dir --workers=4" would make "--workers=4" the data dir (Abseil
  // only logs a warning): a value flag followed by a flag has no value, as
  // in quantctl and quantd-quantize.
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (!absl::StartsWith(arg, "--") || absl::StrContains(arg, '=')) continue;
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(arg.substr(2));
    if (flag == nullptr || flag->IsOfType<bool>()) continue;
    if (i + 1 >= argc || absl::StartsWith(argv[i + 1], "--")) {
      std::cerr << "quantd: " << arg << " needs a value (" << arg << "=VALUE or " << arg << " VALUE)\n";
      return 2;
    }
  }
  if (!FlagsParse(argc, argv)) return 2;
  // Abseil reports what got past that and calls exit(1), the code of a
  // failed start. Exit 2 instead, the usage error of quantd's own checks
  // below, of quantctl and of quantd-quantize.
  static bool parsing_flags = false;
  std::atexit([] {
    if (parsing_flags) std::_Exit(2);
  });
  parsing_flags = true;
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  parsing_flags = false;
  if (positional.size() > 1) {
    // "--vet_models false" would otherwise leave the flag true, silently.
    std::cerr << "quantd: unexpected argument '" << positional[1]
              << "': quantd takes only flags (--flag=VALUE or --flag VALUE; booleans --flag or --flag=false)\n";
    return 2;
  }
  // Given but empty (an unset variable: --token_file="$TOKENS"), these would
  // turn auth or TLS off without a word: left out, they mean off.
  for (int i = 1; i < argc; ++i) {
    for (const char* flag : {"token_file", "tls_cert", "tls_key", "tls_client_ca", "metrics_tls_client_ca"}) {
      const std::string name = absl::StrCat("--", flag);
      const absl::string_view arg = argv[i];
      if (arg == name + "=" || (arg == name && i + 1 < argc && argv[i + 1][0] == '\0')) {
        std::cerr << "quantd: " << name << " is empty (an unset variable?); leave the flag out to run without it\n";
        return 2;
      }
    }
  }
#ifdef NDEBUG
  // Debian builds Abseil without NDEBUG, so every Mutex::Lock would also
  // maintain a global lock-order graph (measured: ~2% of the server's CPU
  // per inference request). Debug builds and the tests keep the check.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif
  // Checked here: these two are used before the server's own option checks.
  if (const int threads = absl::GetFlag(FLAGS_intra_op_threads); threads < 1 || threads > 1024) {
    std::cerr << "quantd: --intra_op_threads must be in 1..1024, got " << threads << "\n";
    return 2;
  }
  if (const double grace = absl::GetFlag(FLAGS_shutdown_grace_seconds); !(grace >= 0 && grace <= 3600)) {
    std::cerr << "quantd: --shutdown_grace_seconds must be in 0..3600, got " << grace << "\n";
    return 2;
  }
  quantd::SetDebugLogging(absl::GetFlag(FLAGS_log_rpcs));
  quantd::engine::InitializeRuntime(absl::GetFlag(FLAGS_intra_op_threads));
  if (const std::string model = absl::GetFlag(FLAGS_vet_model_file); !model.empty()) {
    return quantd::worker::RunModelVetterChild(model, absl::GetFlag(FLAGS_model_vet_memory_bytes));
  }
  // After the vetting child's branch: a model that crashes LibTorch's loader
  // is an expected death there, reported by the parent.
  quantd::engine::InstallCrashReport(argv[0]);

  if (!InstallSignalHandlers()) {
    quantd::LogLine(quantd::LogLevel::kError, "quantd: cannot install signal handlers");
    return EXIT_FAILURE;
  }

  quantd::QuantdServer::Options options;
  options.bind_address = absl::GetFlag(FLAGS_bind_address);
  options.grpc_port = absl::GetFlag(FLAGS_grpc_port);
  options.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.workers = absl::GetFlag(FLAGS_workers);
  options.queue_capacity = absl::GetFlag(FLAGS_queue_capacity);
  options.max_upload_bytes = absl::GetFlag(FLAGS_max_upload_bytes);
  options.upload_idle_timeout = absl::Seconds(absl::GetFlag(FLAGS_upload_idle_timeout_seconds));
  options.upload_min_bytes_per_second = absl::GetFlag(FLAGS_upload_min_bytes_per_second);
  options.max_concurrent_uploads = absl::GetFlag(FLAGS_max_concurrent_uploads);
  options.keepalive_time = absl::Seconds(absl::GetFlag(FLAGS_keepalive_seconds));
  options.job_deadline_seconds = absl::GetFlag(FLAGS_job_deadline_seconds);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.metrics_tls_client_ca_file = absl::GetFlag(FLAGS_metrics_tls_client_ca);
  options.tls_reload_interval = absl::Seconds(absl::GetFlag(FLAGS_tls_reload_seconds));
  options.token_file = absl::GetFlag(FLAGS_token_file);
  options.metrics_require_token = absl::GetFlag(FLAGS_metrics_require_token);
  options.read_roots = absl::GetFlag(FLAGS_read_roots);
  options.max_data_bytes = absl::GetFlag(FLAGS_max_data_bytes);
  options.max_batch_bytes = absl::GetFlag(FLAGS_max_batch_bytes);
  options.blob_ttl_seconds = absl::GetFlag(FLAGS_blob_ttl_seconds);
  if (const int64_t vet_memory = absl::GetFlag(FLAGS_model_vet_memory_bytes); vet_memory < 0) {
    std::cerr << "quantd: --model_vet_memory_bytes must be >= 0, got " << vet_memory << "\n";
    return 2;
  } else if (absl::GetFlag(FLAGS_vet_models)) {
    options.model_vet_command = {"/proc/self/exe", absl::StrCat("--model_vet_memory_bytes=", vet_memory),
                                 "--vet_model_file"};
  }
  options.model_vet_seconds = absl::GetFlag(FLAGS_model_vet_seconds);
  options.rpc_threads = absl::GetFlag(FLAGS_rpc_threads);
  options.rpc_queue_capacity = absl::GetFlag(FLAGS_rpc_queue_capacity);
  options.inference_threads = absl::GetFlag(FLAGS_inference_threads);
  options.inference_queue_capacity = absl::GetFlag(FLAGS_inference_queue_capacity);
  options.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  options.max_queue_delay_us = absl::GetFlag(FLAGS_max_queue_delay_us);
  options.dynamic_batching = absl::GetFlag(FLAGS_dynamic_batching);
  options.model_cache_bytes = absl::GetFlag(FLAGS_model_cache_bytes);
  options.batch_size_copies = absl::GetFlag(FLAGS_batch_size_copies);

  // A bad value is a usage error (exit 2, as an unknown flag's), not a failed start.
  if (const absl::Status checked = quantd::QuantdServer::CheckOptions(options); !checked.ok()) {
    std::cerr << "quantd: " << checked.message() << "\n";
    return 2;
  }
  quantd::LogLine(quantd::LogLevel::kInfo,
                  absl::StrCat("quantd: cpu: ", quantd::engine::CpuInt8Info().Summary()));
  quantd::LogLine(quantd::LogLevel::kInfo, absl::StrCat("quantd: allocator: ", quantd::AllocatorSummary()));
  quantd::LogLine(quantd::LogLevel::kInfo,
                  absl::StrCat("quantd: starting version=", quantd::QuantdVersion(),
                               " data_dir=", options.data_dir,
                               " workers=", options.workers,
                               " queue_capacity=", options.queue_capacity,
                               " tls=", options.tls_cert_file.empty() ? "off" : options.tls_client_ca_file.empty() ? "on" : "mtls",
                               " auth=", options.token_file.empty() ? "off" : "tokens"));
  if (options.token_file.empty() && !IsLoopbackAddress(options.bind_address)) {
    quantd::LogLine(quantd::LogLevel::kWarning,
                    absl::StrCat("quantd: no --token_file: every caller that reaches ", options.bind_address,
                                 " is an admin (submit, delete, upload); give --token_file, or "
                                 "--bind_address=127.0.0.1 for this machine only"));
  }
  if (!options.tls_client_ca_file.empty() && options.metrics_tls_client_ca_file.empty() && options.metrics_port >= 0) {
    // The HTTP port serves the same inference API (REST /v2): mTLS on gRPC
    // alone leaves it to tokens and server-side TLS.
    quantd::LogLine(quantd::LogLevel::kWarning,
                    "quantd: --tls_client_ca requires client certificates on gRPC only; the HTTP port (REST "
                    "inference under /v2, /metrics, the health probes) takes any client: give "
                    "--metrics_tls_client_ca for it too (probes then need a certificate), or --metrics_port=-1");
  }
  auto server = quantd::QuantdServer::Start(options);
  if (!server.ok()) {
    quantd::LogLine(quantd::LogLevel::kError,
                    absl::StrCat("quantd: failed to start: ", server.status().ToString()));
    return EXIT_FAILURE;
  }
  std::string metrics =
      (*server)->metrics_port() < 0
          ? std::string("off")
          : absl::StrCat(options.bind_address, ":", (*server)->metrics_port(), "/metrics");
  quantd::LogLine(quantd::LogLevel::kInfo,
                  absl::StrCat("quantd: listening grpc=", options.bind_address, ":",
                               (*server)->grpc_port(), " metrics=", metrics,
                               " inference_threads=", (*server)->options().inference_threads));

  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty()) {
    absl::Status status = quantd::WritePortFile(port_file, (*server)->grpc_port(),
                                                (*server)->metrics_port());
    if (!status.ok()) {
      quantd::LogLine(quantd::LogLevel::kError,
                      absl::StrCat("quantd: ", status.ToString()));
      (*server)->Shutdown(absl::ZeroDuration());
      return EXIT_FAILURE;
    }
  }

  int signal_number = WaitForSignal();
  for (; signal_number == SIGHUP; signal_number = WaitForSignal()) {
    quantd::LogLine(quantd::LogLevel::kInfo,
                    "quantd: received SIGHUP, ignored: tokens and TLS files are reread by themselves; SIGTERM or "
                    "SIGINT stops quantd");
  }
  const absl::Duration grace = absl::Seconds(absl::GetFlag(FLAGS_shutdown_grace_seconds));
  quantd::LogLine(quantd::LogLevel::kInfo,
                  absl::StrCat("quantd: received ", signal_number == SIGTERM ? "SIGTERM" : "SIGINT",
                               ", shutting down (grace ", absl::FormatDuration(grace),
                               "; a second SIGTERM or SIGINT stops at once)"));
  // A second request to stop (Ctrl-C again, an impatient supervisor) ends
  // the process now, as a crash would: nothing is lost (writes are atomic,
  // the running job is queued again at the next start). Before, it went
  // unheard while the stop waited out its grace.
  std::thread([] {
    for (int again = WaitForSignal();; again = WaitForSignal()) {
      if (again == SIGHUP) continue;
      quantd::LogLine(quantd::LogLevel::kWarning,
                      absl::StrCat("quantd: received ", again == SIGTERM ? "SIGTERM" : "SIGINT",
                                   " again while shutting down: stopping now, without waiting for in-flight calls "
                                   "(a running job runs again at the next start)"));
      ::_exit(128 + again);
    }
  }).detach();
  (*server)->Shutdown(grace);
  quantd::LogLine(quantd::LogLevel::kInfo, "quantd: stopped");
  return EXIT_SUCCESS;
}
