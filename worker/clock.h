#ifndef QUANTD_WORKER_CLOCK_H_
#define QUANTD_WORKER_CLOCK_H_

// Injected time, so tests can move it without sleeping.

#include <chrono>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace quantd::worker {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
  // The process-wide real clock: dates (what is stored, shown or compared
  // across processes).
  static Clock* Real();
  // A clock for intervals within this process only (batching delays, request
  // timeouts, cache TTLs): it never jumps when the system's time is set (a
  // step back would hold a batch for as long), and its Now() is no date.
  static Clock* Monotonic();
};

// A clock that moves only when told to.
class FakeClock : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1700000000)) : now_(start) {}
  absl::Time Now() override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

 private:
  absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

inline Clock* Clock::Real() {
  class RealClock : public Clock {
   public:
    absl::Time Now() override { return absl::Now(); }
  };
  static RealClock* clock = new RealClock();
  return clock;
}

inline Clock* Clock::Monotonic() {
  class MonotonicClock : public Clock {
   public:
    absl::Time Now() override {
      return absl::UnixEpoch() + absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
    }
  };
  static MonotonicClock* clock = new MonotonicClock();
  return clock;
}

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_CLOCK_H_
