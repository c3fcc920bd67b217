#ifndef QUANTD_SERVER_COALESCED_REFRESH_H_
#define QUANTD_SERVER_COALESCED_REFRESH_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace quantd {

// Runs an expensive refresh (the store and data-dir figures behind a
// /metrics scrape) for concurrent callers without running it twice at once:
// two overlapping refreshes would each cost the full price, and the one that
// read older state could finish last and undo the newer one's changes.
// A caller returns once a refresh that began after its call has finished,
// so what it reads next is never older than its call; callers that queued
// behind the same refresh share the next one.
class CoalescedRefresh {
 public:
  explicit CoalescedRefresh(std::function<void()> refresh) : refresh_(std::move(refresh)) {}

  void Run() ABSL_LOCKS_EXCLUDED(mu_) {
    const int64_t started_before = started_.load();
    waiting_.fetch_add(1);
    absl::MutexLock lock(&mu_);
    waiting_.fetch_sub(1);
    // Holding mu_, every refresh that began has finished: one that began
    // after this call covers it.
    if (started_.load() > started_before) return;
    started_.fetch_add(1);
    refresh_();
  }

  // Callers waiting for the refresh under way (for tests).
  int waiting() const { return waiting_.load(); }

 private:
  const std::function<void()> refresh_;
  absl::Mutex mu_;  // held for the length of a refresh
  std::atomic<int64_t> started_{0};  // written only under mu_, read before taking it
  std::atomic<int> waiting_{0};
};

}  // namespace quantd

#endif  // QUANTD_SERVER_COALESCED_REFRESH_H_
