#include "worker/dynamic_batcher.h"

#include <algorithm>
#include <new>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/base/log.h"
#include "worker/engine/base/thread_name.h"

namespace quantd::worker {

std::atomic<uint64_t> DynamicBatcher::next_id_{0};

namespace {

// Passes whose results may wait for a completion thread.
constexpr size_t kMaxPendingCompletions = 8;

}  // namespace

absl::Time BatchDueAt(absl::Time first_arrival, absl::Time last_pass_end, absl::Duration delay) {
  return std::min(std::max(first_arrival, last_pass_end) + delay, first_arrival + 2 * delay);
}

DynamicBatcher::DynamicBatcher(const Options& options, Clock* clock)
    : options_(options), clock_(clock), id_(next_id_.fetch_add(1) + 1) {
  const int threads = this->threads();
  threads_.reserve(threads);
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([this] {
      NameThisThread("quantd-infer");
      Loop();
    });
  }
  for (int i = 0; i < options_.completion_threads; ++i) {
    completion_threads_.emplace_back([this] {
      NameThisThread("quantd-deliver");
      CompletionLoop();
    });
  }
}

DynamicBatcher::~DynamicBatcher() { Shutdown(); }

absl::Status DynamicBatcher::Submit(std::shared_ptr<const BatchableModel> model, std::vector<float> samples,
                                    int64_t batch, Done done, Abandoned abandoned) {
  if (batch < 1 || batch > options_.max_batch_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch of ", batch, " samples; 1..", options_.max_batch_size, " (--max_batch_size)"));
  }
  Request request{std::move(samples), batch, std::move(done), clock_->Now(), std::move(abandoned)};
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::UnavailableError("the server is shutting down");
    // Idle: no pass running, none queued, and none ended within the delay
    // (under load, the clients of the last pass are about to send again,
    // and their requests should meet in one pass).
    const bool quiet = !options_.batching ||
                       (clock_->Now() - last_pass_end_ >= options_.max_queue_delay && last_pass_requests_ <= 1);
    const bool run_here = options_.run_on_caller_when_idle && running_ == 0 && queues_.empty() && quiet;
    if (!run_here) {
      ModelQueue& queue = queues_[model.get()];
      if (static_cast<int64_t>(queue.requests.size()) >= options_.queue_capacity) {
        const size_t waiting = queue.requests.size();
        return absl::ResourceExhaustedError(absl::StrCat(
            waiting, " requests already wait for this model (--inference_queue_capacity); retry with backoff"));
      }
      if (queue.model == nullptr) queue.model = std::move(model);
      queue.samples += batch;
      queue.requests.push_back(std::move(request));
      work_.Signal();
      return absl::OkStatus();
    }
    ++running_;
  }
  // Even if the pass throws: a slot never given back would stop every pass.
  absl::Cleanup give_back_the_slot = [this] {
    absl::MutexLock lock(&mu_);
    --running_;
    last_pass_end_ = clock_->Now();
    last_pass_requests_ = 1;
    // Requests that queued meanwhile may have found every slot busy.
    if (!queues_.empty()) work_.Signal();
  };
  InitThisThread();
  Pass pass;
  pass.model = std::move(model);
  pass.requests.push_back(std::move(request));
  RunPass(std::move(pass), /*offload=*/false);
  return absl::OkStatus();
}

void DynamicBatcher::InitThisThread() {
  // By id, not address: a later batcher may be built where this one was.
  thread_local uint64_t initialized_for = 0;
  if (initialized_for == id_) return;
  initialized_for = id_;
  if (options_.thread_init) options_.thread_init();
}

void DynamicBatcher::Shutdown() {
  // A second caller returns once the first one's joins are done.
  absl::MutexLock joining(&shutdown_mu_);
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    work_.SignalAll();
  }
  for (std::thread& thread : threads_) thread.join();
  {
    // And the passes that requests run on their own threads.
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return running_ == 0; };
    mu_.Await(absl::Condition(&idle));
  }
  {
    absl::MutexLock lock(&completions_mu_);
    completions_stopping_ = true;
  }
  for (std::thread& thread : completion_threads_) thread.join();
}

namespace {

// Why the request's caller no longer wants it (OK: it does). A check that
// throws ends its own request only.
absl::Status Unwanted(const DynamicBatcher::Abandoned& abandoned) {
  if (!abandoned) return absl::OkStatus();
  try {
    return abandoned();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of memory checking whether the caller is still there; retry");
  } catch (...) {
    return absl::InternalError("checking whether the caller is still there failed");
  }
}

}  // namespace

bool DynamicBatcher::TakeDuePass(Pass* pass, absl::Time* wake) {
  const absl::Time now = clock_->Now();
  ModelQueue* due = nullptr;
  *wake = absl::InfiniteFuture();
  for (auto& [key, queue] : queues_) {
    const absl::Time head = queue.requests.front().enqueued;
    const bool full = !options_.batching || !queue.model->coalesces() || queue.samples >= options_.max_batch_size;
    const absl::Time due_at =
        full || stopping_ ? head : BatchDueAt(head, last_pass_end_, options_.max_queue_delay);
    if (due_at > now) {
      *wake = std::min(*wake, due_at);
      continue;
    }
    if (due == nullptr || head < due->requests.front().enqueued) due = &queue;
  }
  if (due == nullptr) return false;
  pass->model = due->model;
  const bool coalesce = options_.batching && due->model->coalesces();
  int64_t samples = 0;
  int64_t taken = 0;
  while (!due->requests.empty()) {
    Request& next = due->requests.front();
    if (!pass->requests.empty() && (!coalesce || samples + next.batch > options_.max_batch_size)) break;
    taken += next.batch;
    if (absl::Status unwanted = Unwanted(next.abandoned); !unwanted.ok()) {
      pass->abandoned.emplace_back(std::move(next), std::move(unwanted));
    } else {
      samples += next.batch;
      pass->requests.push_back(std::move(next));
    }
    due->requests.pop_front();
  }
  due->samples -= taken;
  if (due->requests.empty()) queues_.erase(pass->model.get());
  return true;
}

void DynamicBatcher::Loop() {
  InitThisThread();
  mu_.Lock();
  while (true) {
    Pass pass;
    absl::Time wake = absl::InfiniteFuture();
    if (running_ < threads() && TakeDuePass(&pass, &wake)) {
      ++running_;
      const int64_t requests = static_cast<int64_t>(pass.requests.size());
      // More may be due: let another thread look while this one runs.
      if (!queues_.empty()) work_.Signal();
      mu_.Unlock();
      RunPass(std::move(pass), /*offload=*/true);
      mu_.Lock();
      --running_;
      // A pass of abandoned requests only ran nothing: it does not count
      // as the last pass.
      if (requests > 0) {
        last_pass_end_ = clock_->Now();
        last_pass_requests_ = requests;
      }
      continue;
    }
    if (stopping_ && queues_.empty()) break;
    if (wake == absl::InfiniteFuture()) {
      work_.Wait(&mu_);
    } else {
      work_.WaitWithTimeout(&mu_, wake - clock_->Now());
    }
  }
  mu_.Unlock();
}

namespace {

// A request's answer; what its callback throws (the caller's own encoding,
// out of memory) is logged, never let out: it runs on a batcher thread, or
// on a submitting one with other requests still to answer.
void Answer(DynamicBatcher::Done done, absl::StatusOr<engine::ServingOutput> answer, const BatchStats& stats) {
  try {
    std::move(done)(std::move(answer), stats);
  } catch (const std::exception& e) {
    Log(LogLevel::kError, "quantd: answering an inference request failed: ", e.what());
  } catch (...) {
    Log(LogLevel::kError, "quantd: answering an inference request failed with an unknown exception");
  }
}

}  // namespace

void DynamicBatcher::DropAbandoned(Pass& pass) {
  for (auto& [r, unwanted] : pass.abandoned) {
    BatchStats stats;
    stats.queue_time = clock_->Now() - r.enqueued;
    Answer(std::move(r.done), std::move(unwanted), stats);
  }
  pass.abandoned.clear();
  std::vector<Request> live;
  live.reserve(pass.requests.size());
  for (Request& r : pass.requests) {
    absl::Status unwanted = Unwanted(r.abandoned);
    if (unwanted.ok()) {
      live.push_back(std::move(r));
      continue;
    }
    BatchStats stats;
    stats.queue_time = clock_->Now() - r.enqueued;
    Answer(std::move(r.done), std::move(unwanted), stats);
  }
  pass.requests = std::move(live);
}

void DynamicBatcher::RunPass(Pass pass, bool offload) {
  // A request run on its submitting thread is checked too: it may have
  // waited before Submit (a cold model's load) while its caller left.
  DropAbandoned(pass);
  if (pass.requests.empty()) return;
  int64_t total = 0;
  for (const Request& r : pass.requests) total += r.batch;
  Completion completion;
  completion.total = total;
  completion.start = clock_->Now();
  // Nothing thrown here may leave the thread (a batcher thread would end
  // the process) or skip a request's answer: every request gets one.
  try {
    std::vector<float> samples;
    if (pass.requests.size() == 1) {
      samples = std::move(pass.requests.front().samples);
    } else {
      size_t values = 0;
      for (const Request& r : pass.requests) values += r.samples.size();
      samples.reserve(values);
      for (Request& r : pass.requests) {
        samples.insert(samples.end(), r.samples.begin(), r.samples.end());
        std::vector<float>().swap(r.samples);
      }
    }
    completion.output = pass.model->Run(std::move(samples), total);
  } catch (const std::bad_alloc&) {
    completion.output =
        absl::ResourceExhaustedError(absl::StrCat("out of memory for a pass of ", total, " samples; retry smaller"));
  } catch (const std::exception& e) {
    completion.output = absl::InternalError(absl::StrCat("the pass failed: ", e.what()));
  } catch (...) {
    completion.output = absl::InternalError("the pass failed with an unknown exception");
  }
  completion.end = clock_->Now();
  completion.requests = std::move(pass.requests);
  if (offload && !completion_threads_.empty()) {
    absl::MutexLock lock(&completions_mu_);
    // Completion threads that fall behind (a saturated CPU) get no more:
    // this thread delivers its own, which holds back its next pass.
    if (completions_.size() < kMaxPendingCompletions) {
      completions_.push_back(std::move(completion));
      return;
    }
  }
  Deliver(std::move(completion));
}

void DynamicBatcher::CompletionLoop() {
  while (true) {
    Completion completion;
    {
      absl::MutexLock lock(&completions_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(completions_mu_) {
        return !completions_.empty() || completions_stopping_;
      };
      completions_mu_.Await(absl::Condition(&ready));
      if (completions_.empty()) return;  // stopping, and all delivered
      completion = std::move(completions_.front());
      completions_.pop_front();
    }
    Deliver(std::move(completion));
  }
}

void DynamicBatcher::Deliver(Completion completion) {
  const int64_t total = completion.total;
  absl::StatusOr<engine::ServingOutput>& output = completion.output;
  if (output.ok() && (output->shape.empty() || output->shape[0] != total ||
                      output->values.size() % static_cast<size_t>(total) != 0)) {
    output = absl::InternalError(absl::StrCat("a batch of ", total, " samples gave an output of ",
                                              output->values.size(), " values"));
  }
  const size_t per_sample = output.ok() ? output->values.size() / static_cast<size_t>(total) : 0;
  size_t offset = 0;
  bool first = true;
  for (Request& r : completion.requests) {
    BatchStats stats;
    stats.first_of_pass = first;
    first = false;
    stats.executed_batch_size = total;
    stats.queue_time = completion.start - r.enqueued;
    stats.compute_time = completion.end - completion.start;
    absl::StatusOr<engine::ServingOutput> answer = absl::UnknownError("no answer");
    if (!output.ok()) {
      answer = output.status();
    } else {
      const size_t count = per_sample * static_cast<size_t>(r.batch);
      try {
        engine::ServingOutput mine;
        mine.shape = output->shape;
        mine.shape[0] = r.batch;
        if (completion.requests.size() == 1) {
          mine.values = std::move(output->values);
        } else {
          mine.values.assign(output->values.begin() + offset, output->values.begin() + offset + count);
        }
        answer = std::move(mine);
      } catch (const std::bad_alloc&) {
        answer = absl::ResourceExhaustedError("out of memory copying this request's outputs; retry");
      }
      offset += count;
    }
    Answer(std::move(r.done), std::move(answer), stats);  // the others still get theirs
  }
}

}  // namespace quantd::worker
