#ifndef QUANTD_WORKER_JOB_EVENTS_H_
#define QUANTD_WORKER_JOB_EVENTS_H_

// Fan-out of job events to any number of watchers. A watcher that subscribes
// gets a snapshot of the job's current state first, then every later event,
// with no gap and no reordering between the two (both happen under one lock).

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "worker/clock.h"
#include "worker/job.h"

namespace quantd::worker {

struct JobEvent {
  // kSubmitted (a new job was created here) goes to observers only.
  enum class Kind {
    kSnapshot, kStateChanged, kPhaseStarted, kPhaseFinished, kCalibrationProgress, kResult, kSubmitted, kTrialFinished
  };
  Kind kind = Kind::kSnapshot;
  std::string job_id;
  absl::Time time;
  uint64_t sequence = 0;  // per job: generation << 32 | n, n from 1
  Job snapshot;           // kSnapshot
  JobState state = JobState::kQueued;  // kStateChanged
  PhaseTiming phase;      // kPhaseStarted (phase), kPhaseFinished (phase, seconds)
  int64_t batches_done = 0, batches_total = 0, samples_done = 0;  // kCalibrationProgress
  engine::Trial trial;    // kTrialFinished (batches_total: the trial budget)
  JobResult result;       // kResult: the stream's last event
};

// Whether a watch resumed with `after_sequence` (the last sequence its client
// read) should get `event`. The snapshot always goes: it brings the client up
// to date. So does the result, which ends the stream: a finished job that the
// hub no longer follows replays it with a low number. Numbers of another
// process (another generation: a restart, or another replica sharing the job
// store, which may have started later) are not comparable with this one's:
// everything after the snapshot goes.
bool ResumedWatchGets(const JobEvent& event, uint64_t after_sequence);

// Receives events. Called with the hub's lock held: must not block and must
// not call back into the hub.
class JobWatcher {
 public:
  virtual ~JobWatcher() = default;
  virtual void OnJobEvent(const JobEvent& event) = 0;
  // The hub is closing (the server stops): no more events will come, and the
  // watcher is already unsubscribed. Same rules as OnJobEvent.
  virtual void OnHubClosing() {}
  // The job, which another process ran, has left the job store (deleted once
  // finished) before this process read its result: no more events will come,
  // and the watcher is already unsubscribed. Same rules as OnJobEvent.
  virtual void OnJobGone(const std::string& job_id) {}
};

// Event sequence numbers are (generation << 32) + n, n counting a job's
// events from 1 in this process. The generation numbers server starts
// (JobStore::NextGeneration), so a client resuming with the last sequence it
// saw before a restart still gets everything after it.
class JobEventHub {
 public:
  explicit JobEventHub(Clock* clock, uint64_t generation = 1) : clock_(clock), generation_(generation) {}
  void set_generation(uint64_t generation) {
    absl::MutexLock lock(&mu_);
    generation_ = generation;
  }

  // Publishes `event` about `job` (its state after the event). A kResult
  // event ends the job's stream: its watchers are dropped afterwards.
  void Publish(const Job& job, JobEvent event);
  // A finished job's two last events: its final state, then its result.
  void PublishOutcome(const Job& finished);

  // Subscribes `watcher` to `job_id` and delivers the snapshot at once. If
  // the hub does not follow the job yet, `load` reads it (e.g. from the job
  // store), without the hub's lock: a store slow to answer holds up neither
  // publishing nor Unsubscribe (which gRPC threads call). A finished job's snapshot is followed by its result and no
  // subscription is kept (returns 0). Otherwise returns a token for
  // Unsubscribe.
  absl::StatusOr<uint64_t> Subscribe(const std::string& job_id,
                                     const std::function<absl::StatusOr<Job>()>& load,
                                     JobWatcher* watcher);
  // After it returns, `watcher` gets no more calls.
  void Unsubscribe(const std::string& job_id, uint64_t token);

  int WatcherCount(const std::string& job_id);

  // Ids of the jobs the hub follows (watched, or run here), for
  // PublishStoredChange.
  std::vector<std::string> FollowedJobs();
  // For a followed job that this process does not run (another process
  // sharing the job store does, or nobody yet): tells its watchers here what
  // `stored`, read from the store, says changed since the hub's copy: its
  // state, its phase, and at the end its result (which ends their streams).
  // Observers are not told: the process that runs the job counts it.
  void PublishStoredChange(const Job& stored);
  // For such a job that the store no longer has (it finished elsewhere and
  // was deleted before PublishStoredChange saw its result): its watchers here
  // are told (OnJobGone) and dropped.
  void PublishStoredGone(const std::string& job_id);

  // `observer` gets every event of every job from now on (for metrics),
  // under the same rules as a watcher's. It must outlive the hub.
  void AddObserver(JobWatcher* observer);
  // Tells only the observers (nobody watches a job that did not exist).
  void NotifyObservers(const Job& job, JobEvent event);

  // Tells every watcher the hub is closing and drops them; later Subscribe
  // calls are UNAVAILABLE. A stopping server calls this first, so open watch
  // streams end at once instead of holding the shutdown for its grace period.
  void CloseAll();

 private:
  struct Followed {
    Job job;
    uint64_t sequence = 0;
    std::map<uint64_t, JobWatcher*> watchers;
  };

  uint64_t Sequence(uint64_t n) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return (generation_ << 32) + n; }

  Clock* const clock_;
  absl::Mutex mu_;
  uint64_t generation_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Followed> jobs_ ABSL_GUARDED_BY(mu_);
  uint64_t next_token_ ABSL_GUARDED_BY(mu_) = 1;
  std::vector<JobWatcher*> observers_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  // The streams ended (results published, jobs gone), numbered, the last
  // kRecentlyEnded kept: a Subscribe that read a job from the store without
  // mu_ reads again if that job's ended meanwhile (or may have: the ones
  // since its read were no longer all kept).
  static constexpr size_t kRecentlyEnded = 1024;
  void StreamEnded(const std::string& job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool EndedSince(const std::string& job_id, uint64_t count) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t streams_ended_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<std::pair<uint64_t, std::string>> recently_ended_ ABSL_GUARDED_BY(mu_);
};

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_JOB_EVENTS_H_
