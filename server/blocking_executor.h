#ifndef QUANTD_SERVER_BLOCKING_EXECUTOR_H_
#define QUANTD_SERVER_BLOCKING_EXECUTOR_H_

// Threads for the blocking part of RPC handlers (SQLite, fsync, reading and
// hashing artifacts). gRPC's callback threads are few and shared by every
// call, health checks included: a handler that waits on the disk there stalls
// all of them. Handlers hand that work to this executor instead; its queue is
// bounded, so a flood of calls is refused (RESOURCE_EXHAUSTED) rather than
// growing memory without limit.

#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace quantd {

class BlockingExecutor {
 public:
  // `threads` >= 1 run tasks; at most `queue_capacity` wait for them. The
  // threads are named `thread_name` (see worker/engine/base/thread_name.h).
  BlockingExecutor(int threads, int queue_capacity, std::string thread_name = "quantd-exec");
  ~BlockingExecutor();  // Shutdown()
  BlockingExecutor(const BlockingExecutor&) = delete;
  BlockingExecutor& operator=(const BlockingExecutor&) = delete;

  // Queues `task`; false (and `task` is dropped unrun) when the queue is full
  // or the executor is shutting down: the caller then answers for it.
  [[nodiscard]] bool TrySchedule(absl::AnyInvocable<void() &&> task);

  // Queues the next step of a call already admitted (the next chunk of an
  // upload), past a full queue: such a call has at most one step queued, so
  // the queue stays bounded by its capacity plus the calls in progress, and a
  // burst of new calls cannot kill a long upload halfway. False (and `task`
  // is dropped unrun) only when shutting down.
  [[nodiscard]] bool ScheduleContinuation(absl::AnyInvocable<void() &&> task);

  // Refuses new tasks, runs the queued ones, joins the threads. Idempotent.
  // A task that throws ends the process (logged first): it would leave its
  // call unanswered. Tasks that answer a call catch for themselves
  // (StatusOfTask).
  void Shutdown();

  int queue_capacity() const { return queue_capacity_; }
  // Tasks waiting for a thread (not counting the running ones).
  int queued() const;

 private:
  void Loop();

  const int queue_capacity_;
  mutable absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void() &&>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;  // written only in the constructor and Shutdown
  absl::Mutex join_mu_;  // one Shutdown joins
};

// What `work` returns; if it throws, RESOURCE_EXHAUSTED (std::bad_alloc) or
// INTERNAL naming `method` and the exception: a handler that throws (a
// protobuf or allocation failure) still answers its call.
absl::Status StatusOfTask(absl::string_view method, absl::AnyInvocable<absl::Status() &&> work);

}  // namespace quantd

#endif  // QUANTD_SERVER_BLOCKING_EXECUTOR_H_
