#ifndef QUANTD_WORKER_ENGINE_BASE_HELPER_THREADS_H_
#define QUANTD_WORKER_ENGINE_BASE_HELPER_THREADS_H_

#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace quantd::engine {

// Threads that help one call spread work, kept for the life of the process.
//
// Why kept: LibTorch 1.13 keeps oneDNN primitive descriptors per thread
// (ideep) and sets up each new thread's thread pools on its first call. With
// a thread started and ended per accuracy trial, a quantization job once
// crashed inside LibTorch's int8 convolution on such a thread (the 4th job of
// 48, with runtime/ideep_cache.h's fix in place); with the helpers kept, the
// same jobs finished, until CI crashed once more at the 6th. The cause was
// oneDNN rebuilding kernels with post-ops from freed descriptors, closed by
// runtime/onednn_post_ops.h; the crash that was left on trial threads was
// two of them making the first call on one LibTorch pack at once (closed in
// runtime/int8_program.h). Kept threads still spare each trial setting up
// LibTorch's thread pools.
class HelperThreads {
 public:
  HelperThreads() = default;
  HelperThreads(const HelperThreads&) = delete;
  HelperThreads& operator=(const HelperThreads&) = delete;
  // Ends and joins the threads (after the calls in progress).
  ~HelperThreads();

  // The process's helpers (never destroyed: they are still parked at exit).
  static HelperThreads& Shared();

  // Runs fn(0) on the calling thread and fn(1), ..., fn(n - 1) on helper
  // threads at the same time, starting threads only when too few are idle;
  // returns when all have returned and the helpers are idle again. fn must
  // not throw. Calls may overlap.
  void Run(int n, const std::function<void(int)>& fn);

  // Threads started so far.
  size_t size() const;

 private:
  struct Call;
  struct Task {
    const std::function<void(int)>* fn;
    int index;
    std::shared_ptr<Call> call;
  };
  void Loop();
  bool HasTaskOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty() || stopping_; }

  mutable absl::Mutex mu_;
  std::deque<Task> queue_ ABSL_GUARDED_BY(mu_);
  size_t idle_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_BASE_HELPER_THREADS_H_
