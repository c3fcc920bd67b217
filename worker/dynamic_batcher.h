#ifndef QUANTD_WORKER_DYNAMIC_BATCHER_H_
#define QUANTD_WORKER_DYNAMIC_BATCHER_H_

// Dynamic batching (as in Triton): concurrent inference requests for the same
// loaded model are coalesced into one forward pass of up to max_batch_size
// samples. A request waits a short delay (max_queue_delay; see BatchDueAt)
// for others to join it; requests already waiting while the inference
// threads are busy join without any delay. Requests are never split across passes. Each model has a bounded
// queue: a request that finds it full is refused at once.
//
// At most `threads` passes run at once. A request that finds the batcher
// idle (no pass running, nothing queued, and none ended within the delay)
// runs at once on the submitting thread, without waiting for a delay: nobody
// is likely to join it, and a hand-off to a batcher thread and back plus the
// delay cost more than the pass of one image (p50 0.97 vs 0.58 ms per gRPC
// request with the 100 us delay, 2-core VM). Under load a pass has always
// just ended, or the last pass held several requests (concurrent clients),
// so requests queue and meet; a pass of one request makes the batcher
// idle-eligible again. (Without that second rule, the first request after
// each coalesced pass ran alone: 16 clients averaged 6 images a pass instead
// of 11, with the server on one AVX2 core.) Queued requests run on the
// batcher's own threads, coalesced. Their delay counts from the end of the
// last pass if that came after the first of them arrived, since the clients
// a pass answered send again right after it, but ends at most twice the
// delay after that arrival. Callers get their rows through a callback, on
// whichever thread ran the pass, or on a completion thread
// (Options::completion_threads) for passes on the batcher's threads.
// A queued request whose caller has gone (cancelled, or past its deadline),
// or whose own timeout has passed, by the time its pass starts is answered
// with the reason its Abandoned callback gives and left out of the pass:
// under overload, timed-out requests would otherwise take the passes of
// those still waiting.

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "worker/clock.h"
#include "worker/engine/servable_model.h"

namespace quantd::worker {

// When a batch that is not full runs: `delay` after its first request
// arrived, or after the last pass ended if that came later (the clients that
// pass answered are about to send again), but no later than twice `delay`
// after the arrival, however often passes end.
absl::Time BatchDueAt(absl::Time first_arrival, absl::Time last_pass_end, absl::Duration delay);

// What the batcher runs: `batch` samples, concatenated, in one pass.
class BatchableModel {
 public:
  virtual ~BatchableModel() = default;
  virtual absl::StatusOr<engine::ServingOutput> Run(std::vector<float> samples, int64_t batch) const = 0;
  // false: each request runs as a pass of its own. For a model whose scores
  // depend on the pass's size (FP32 kernels add in another order at another
  // batch size), so that coalescing never changes a request's answer.
  virtual bool coalesces() const { return true; }
};

// How a request was run, for its response and the metrics.
struct BatchStats {
  int64_t executed_batch_size = 0;  // samples in the pass this request was part of; 0: not run
  absl::Duration queue_time;        // from Submit to the start of the pass
  absl::Duration compute_time;      // the pass
  bool first_of_pass = false;       // exactly one request of each pass has it
};

class DynamicBatcher {
 public:
  struct Options {
    int threads = 2;
    int64_t max_batch_size = 64;
    // How long the first request of a batch waits for others to join.
    absl::Duration max_queue_delay = absl::Microseconds(100);
    // false: every request runs alone (for comparison).
    bool batching = true;
    // Requests waiting per model.
    int64_t queue_capacity = 256;
    // A request that finds the batcher idle runs on the submitting thread.
    bool run_on_caller_when_idle = true;
    // Threads that deliver the results of passes run on the batcher's own
    // threads (the callbacks: encoding and sending responses), so that those
    // go on to their next pass at once; 0: delivered on the pass's thread.
    // A pass run on the submitting thread always delivers there.
    int completion_threads = 0;
    // Runs first on each thread before its first pass, the submitting ones
    // included (e.g. LibTorch's intra-op thread count, which OpenMP keeps per
    // thread).
    std::function<void()> thread_init;
  };
  // This request's rows of the output (shape [its batch, ...]), or the
  // pass's error. Runs on the thread that ran the pass:
  // a batcher thread, or the submitting one before Submit returns.
  using Done = absl::AnyInvocable<void(absl::StatusOr<engine::ServingOutput> output, const BatchStats& stats) &&>;
  // OK while the request's caller still waits for it; otherwise the status it
  // is answered with, not run (CANCELLED for a caller gone, DEADLINE_EXCEEDED
  // for a timeout passed, ...). Called from any thread, before its pass.
  using Abandoned = std::function<absl::Status()>;

  DynamicBatcher(const Options& options, Clock* clock);
  ~DynamicBatcher();
  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  // Queues `batch` samples (1..max_batch_size) for `model`; `done` runs once
  // they have run (or, not run, with the status `abandoned` gives once it is
  // not OK).
  // RESOURCE_EXHAUSTED when the model's queue is full and UNAVAILABLE after
  // Shutdown; `done` is not called then.
  absl::Status Submit(std::shared_ptr<const BatchableModel> model, std::vector<float> samples, int64_t batch,
                      Done done, Abandoned abandoned = nullptr);

  // Runs every queued request, then stops the threads. Idempotent.
  void Shutdown();

  const Options& options() const { return options_; }
  int threads() const { return options_.threads < 1 ? 1 : options_.threads; }

 private:
  struct Request {
    std::vector<float> samples;
    int64_t batch = 0;
    Done done;
    absl::Time enqueued;
    Abandoned abandoned;
  };
  struct ModelQueue {
    std::shared_ptr<const BatchableModel> model;
    std::deque<Request> requests;
    int64_t samples = 0;
  };
  struct Pass {
    std::shared_ptr<const BatchableModel> model;
    std::vector<Request> requests;
    // Found abandoned while the pass was taken: answered, not run.
    std::vector<std::pair<Request, absl::Status>> abandoned;
  };

  // One pass's results, ready to hand to its requests' callbacks.
  struct Completion {
    std::vector<Request> requests;
    absl::StatusOr<engine::ServingOutput> output;
    absl::Time start;
    absl::Time end;
    int64_t total = 0;
  };

  void Loop();
  void CompletionLoop();
  // Runs `pass`; delivers its results here, or on a completion thread when
  // `offload` and there are any.
  void RunPass(Pass pass, bool offload);
  // Answers and removes the requests of `pass` whose callers have gone.
  void DropAbandoned(Pass& pass);
  static void Deliver(Completion completion);
  // Takes the next batch that is due, oldest first; otherwise sets `*wake`
  // to when the earliest one will be. Requests whose callers have gone take
  // no room in it: they go to the pass's `abandoned`.
  bool TakeDuePass(Pass* pass, absl::Time* wake) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void InitThisThread();

  static std::atomic<uint64_t> next_id_;
  const Options options_;
  Clock* const clock_;
  const uint64_t id_;  // for thread_init's once-per-thread bookkeeping
  absl::Mutex shutdown_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // held through Shutdown
  absl::Mutex mu_;
  absl::CondVar work_;
  absl::flat_hash_map<const BatchableModel*, ModelQueue> queues_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Passes in progress, on batcher threads and submitting ones; at most
  // options_.threads.
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_pass_end_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // Requests in the pass that ended last: more than one means concurrent
  // clients, whose next requests should meet rather than run alone.
  int64_t last_pass_requests_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::thread> threads_;

  absl::Mutex completions_mu_;
  std::deque<Completion> completions_ ABSL_GUARDED_BY(completions_mu_);
  bool completions_stopping_ ABSL_GUARDED_BY(completions_mu_) = false;
  std::vector<std::thread> completion_threads_;
};

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_DYNAMIC_BATCHER_H_
