#include "worker/engine/base/helper_threads.h"

#include <utility>

namespace quantd::engine {

struct HelperThreads::Call {
  absl::Mutex mu;
  int running ABSL_GUARDED_BY(mu) = 0;
};

HelperThreads::~HelperThreads() {
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    threads.swap(threads_);
  }
  for (std::thread& thread : threads) thread.join();
}

HelperThreads& HelperThreads::Shared() {
  static HelperThreads* const shared = new HelperThreads();
  return *shared;
}

void HelperThreads::Run(int n, const std::function<void(int)>& fn) {
  if (n <= 0) return;
  auto call = std::make_shared<Call>();
  {
    absl::MutexLock lock(&call->mu);
    call->running = n - 1;
  }
  {
    absl::MutexLock lock(&mu_);
    for (int k = 1; k < n; ++k) queue_.push_back(Task{&fn, k, call});
    while (idle_ < queue_.size()) {
      ++idle_;
      threads_.emplace_back([this] { Loop(); });
    }
  }
  fn(0);
  absl::MutexLock lock(&call->mu);
  call->mu.Await(absl::Condition(
      +[](int* running) { return *running == 0; }, &call->running));
}

size_t HelperThreads::size() const {
  absl::MutexLock lock(&mu_);
  return threads_.size();
}

void HelperThreads::Loop() {
  for (;;) {
    Task task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &HelperThreads::HasTaskOrStopping));
      if (queue_.empty()) return;  // stopping
      task = std::move(queue_.front());
      queue_.pop_front();
      --idle_;
    }
    (*task.fn)(task.index);
    {
      absl::MutexLock lock(&mu_);
      ++idle_;
    }
    absl::MutexLock lock(&task.call->mu);
    --task.call->running;
  }
}

}  // namespace quantd::engine
