#ifndef QUANTD_WORKER_MODEL_VETTER_H_
#define QUANTD_WORKER_MODEL_VETTER_H_

// LibTorch 1.13's TorchScript loader is not safe against damaged or crafted
// archives: some crash the process inside its unpickler and type parser
// (SIGSEGV; found by tests/fuzz/torchscript_import_fuzzer, inputs kept in
// tests/fuzz/crashers/). A server that loads users' models in-process would
// go down with every running job. So a child process loads a job's model
// first, and the server loads only what that child survived: loading is
// deterministic, the same bytes take the same path twice.

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace quantd::worker {

struct ModelVetterOptions {
  // The child's argv; the model path is appended as the last argument.
  // quantd uses {"/proc/self/exe", "--vet_model_file"}: itself, in vetting mode.
  std::vector<std::string> command;
  // A child still loading after this long is killed and the job fails.
  absl::Duration timeout = absl::Minutes(2);
  // Named in the timeout error, so the user knows what to raise.
  std::string timeout_flag = "--model_vet_seconds";
};

// Runs the child on `model_path` and waits for it. OK when the model loads;
// the child's own status when it does not; INVALID_ARGUMENT naming the signal
// when the loader crashed; DEADLINE_EXCEEDED naming the flag on timeout;
// INTERNAL when the child cannot be started.
absl::Status VetModelInChildProcess(const ModelVetterOptions& options, const std::string& model_path);

// VetModelInChildProcess once per model content: a model a child has loaded
// (by sha256) is not vetted again, so jobs on the same model do not each pay
// the child's start (about 1.3 s for ResNet8, most of it loading LibTorch).
// Failures are not remembered. Thread-safe.
class CachingModelVetter {
 public:
  explicit CachingModelVetter(ModelVetterOptions options, size_t capacity = 4096)
      : options_(std::move(options)), capacity_(capacity) {}
  absl::Status Vet(const std::string& model_path);

 private:
  const ModelVetterOptions options_;
  const size_t capacity_;
  absl::Mutex mu_;
  absl::flat_hash_set<std::string> loaded_ ABSL_GUARDED_BY(mu_);
};

// The child's side (quantd --vet_model_file=PATH): engine::CheckModelLoads, the
// outcome on stdout, and the exit code the parent reads. Its address space
// may grow by `memory_bytes` (quantd --model_vet_memory_bytes; 0 = the
// machine's memory and swap, or its cgroup's limit if less).
int RunModelVetterChild(const std::string& model_path, int64_t memory_bytes = 0);

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_MODEL_VETTER_H_
