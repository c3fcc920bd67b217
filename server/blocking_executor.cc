#include "server/blocking_executor.h"

#include <algorithm>
#include <exception>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "worker/engine/base/log.h"
#include "worker/engine/base/thread_name.h"

namespace quantd {

BlockingExecutor::BlockingExecutor(int threads, int queue_capacity, std::string thread_name)
    : queue_capacity_(std::max(queue_capacity, 0)) {
  threads = std::max(threads, 1);
  threads_.reserve(threads);
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([this, thread_name] {
      NameThisThread(thread_name);
      Loop();
    });
  }
}

BlockingExecutor::~BlockingExecutor() { Shutdown(); }

bool BlockingExecutor::TrySchedule(absl::AnyInvocable<void() &&> task) {
  absl::MutexLock lock(&mu_);
  if (stopping_ || static_cast<int>(queue_.size()) >= queue_capacity_) return false;
  queue_.push_back(std::move(task));
  return true;
}

bool BlockingExecutor::ScheduleContinuation(absl::AnyInvocable<void() &&> task) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return false;
  queue_.push_back(std::move(task));
  return true;
}

int BlockingExecutor::queued() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(queue_.size());
}

void BlockingExecutor::Shutdown() {
  absl::MutexLock join_lock(&join_mu_);
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
}

void BlockingExecutor::Loop() {
  while (true) {
    absl::AnyInvocable<void() &&> task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](BlockingExecutor* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
            return self->stopping_ || !self->queue_.empty();
          },
          this));
      if (queue_.empty()) return;  // stopping, and nothing left to run
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    // A task that must answer its call catches for itself (StatusOfTask):
    // one that throws past that would leave its call hanging, unanswered,
    // so the process ends, as it would anyway, but saying why.
    try {
      std::move(task)();
    } catch (const std::exception& e) {
      LogLine(LogLevel::kError, absl::StrCat("a task on ", ThisThreadName(), " threw: ", e.what(), "; ending"));
      std::terminate();
    } catch (...) {
      LogLine(LogLevel::kError, absl::StrCat("a task on ", ThisThreadName(), " threw; ending"));
      std::terminate();
    }
  }
}

absl::Status StatusOfTask(absl::string_view method, absl::AnyInvocable<absl::Status() &&> work) {
  try {
    return std::move(work)();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(method, ": the server ran out of memory; retry later"));
  } catch (const std::exception& e) {
    LogLine(LogLevel::kError, absl::StrCat(method, " threw: ", e.what()));
    return absl::InternalError(absl::StrCat(method, " failed on the server: ", e.what()));
  } catch (...) {
    LogLine(LogLevel::kError, absl::StrCat(method, " threw a non-standard exception"));
    return absl::InternalError(absl::StrCat(method, " failed on the server"));
  }
}

}  // namespace quantd
