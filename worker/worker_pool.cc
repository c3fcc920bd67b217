#include "worker/worker_pool.h"

#include <algorithm>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/engine/base/log.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/thread_name.h"

namespace quantd::worker {

absl::StatusOr<std::unique_ptr<WorkerPool>> WorkerPool::Create(
    const Options& options, JobStore* store, ArtifactStore* artifacts, QuantizationEngine* engine,
    Clock* clock) {
  if (options.workers < 1) return absl::InvalidArgumentError("workers must be at least 1");
  if (options.queue_capacity < 1) return absl::InvalidArgumentError("queue capacity must be at least 1");
  if (options.holder.empty()) return absl::InvalidArgumentError("the lease holder name must not be empty");
  if (options.lease <= absl::ZeroDuration()) return absl::InvalidArgumentError("the job lease must be positive");
  if (options.watch_sync <= absl::ZeroDuration()) return absl::InvalidArgumentError("the watch sync period must be positive");
  if (options.artifact_sweep <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the artifact sweep period must be positive (infinite: never)");
  }
  std::unique_ptr<WorkerPool> pool(new WorkerPool(options, store, artifacts, engine, clock));
  // A store that cannot write for now (a full disk, a busy shared store)
  // must not keep the server from serving what it has: both writes below
  // wait. Any other error is the store's state, and is the caller's.
  auto for_now = [](const absl::Status& status) {
    return status.code() == absl::StatusCode::kResourceExhausted || status.code() == absl::StatusCode::kUnavailable;
  };
  absl::StatusOr<uint64_t> generation = store->NextGeneration();
  if (!generation.ok()) {
    const absl::Status unnumbered = generation.status();
    if (!for_now(unnumbered)) return unnumbered;
    // Watch streams only compare generations for equality: a random one
    // above any the store's counter reaches differs from every earlier start.
    std::random_device seed;
    generation = std::uniform_int_distribution<uint64_t>(uint64_t{1} << 31, (uint64_t{1} << 32) - 1)(seed);
    Log(LogLevel::kWarning, "quantd: cannot number this start in the job store (", unnumbered,
        "); its watch events are numbered from generation ", *generation);
  }
  pool->events_.set_generation(*generation);
  absl::StatusOr<JobStore::RecoveryCounts> recovered =
      store->RecoverInterrupted(options.max_attempts, clock->Now(), options.holder);
  if (!recovered.ok()) {
    if (!for_now(recovered.status())) return recovered.status();
    Log(LogLevel::kWarning, "quantd: cannot recover the jobs this server was running when it stopped yet (",
        recovered.status(), "); no job starts here until they are, tried again every ", options.idle_poll);
  }
  {
    absl::MutexLock lock(&pool->mu_);
    if (recovered.ok()) {
      pool->recovered_ = *recovered;
    } else {
      pool->startup_recovery_pending_ = true;
    }
  }
  // After the recovery: this holder's interrupted jobs no longer hold what
  // they pinned before the crash.
  // Housekeeping only: a store that cannot be listed now must not keep a
  // recovered server from starting.
  if (absl::StatusOr<SweptArtifacts> swept = pool->SweepArtifacts(); !swept.ok()) {
    Log(LogLevel::kWarning,
        "quantd: removing artifacts no job holds failed (left for the next sweep): ", swept.status());
  }
  return pool;
}

absl::StatusOr<SweptArtifacts> WorkerPool::SweepArtifacts() {
  QUANTD_ASSIGN_OR_RETURN(SweptArtifacts swept, RemoveUnheldArtifacts(*artifacts_, *store_));
  if (!swept.first_error.ok()) {
    Log(LogLevel::kWarning,
        "quantd: a file no job holds could not be removed (left for the next sweep): ", swept.first_error);
  }
  absl::MutexLock lock(&mu_);
  swept_.artifacts += swept.artifacts;
  swept_.manifests += swept.manifests;
  swept_.kept_unknown += swept.kept_unknown;
  // Names for the log: the removed ones bounded (their count is exact), not
  // a record of every sweep; the unknown jobs are as many as their files.
  for (const std::string& id : swept.removed_ids) {
    if (swept_.removed_ids.size() < 100) swept_.removed_ids.insert(id);
  }
  swept_.unknown_jobs.insert(swept.unknown_jobs.begin(), swept.unknown_jobs.end());
  return swept;
}

SweptArtifacts WorkerPool::swept() const {
  absl::MutexLock lock(&mu_);
  return swept_;
}

WorkerPool::WorkerPool(const Options& options, JobStore* store, ArtifactStore* artifacts,
                       QuantizationEngine* engine, Clock* clock)
    : options_(options), store_(store), artifacts_(artifacts), clock_(clock), events_(clock),
      runner_(store, artifacts, engine, &events_, clock, options.max_batch_bytes, options.finish_retry_backoff,
              options.inputs, options.interval_clock) {}

WorkerPool::~WorkerPool() { Stop(); }

void WorkerPool::Start() {
  absl::MutexLock lock(&mu_);
  if (!workers_.empty() || stopping_) return;
  for (int i = 0; i < options_.workers; ++i) {
    workers_.emplace_back([this] {
      NameThisThread("quantd-job");
      WorkerLoop();
    });
  }
  maintenance_ = std::thread([this] {
    NameThisThread("quantd-lease");
    MaintenanceLoop();
  });
  if (options_.artifact_sweep != absl::InfiniteDuration()) {
    sweeper_ = std::thread([this] {
      NameThisThread("quantd-sweep");
      SweepLoop();
    });
  }
}

void WorkerPool::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (auto& [id, running] : running_) running.stop->shutting_down.store(true);
  }
  // The workers first: until the jobs they run have stopped (a model load or
  // an artifact write is not interrupted), their leases are still renewed,
  // so no other process takes them for crashed meanwhile.
  for (std::thread& thread : workers_) thread.join();
  workers_.clear();
  {
    absl::MutexLock lock(&mu_);
    maintenance_stopping_ = true;
  }
  if (maintenance_.joinable()) maintenance_.join();
  if (sweeper_.joinable()) sweeper_.join();
}

JobStore::RecoveryCounts WorkerPool::recovered() const {
  absl::MutexLock lock(&mu_);
  return recovered_;
}

std::string WorkerPool::NewJobId() { return NewTimeOrderedId("job", clock_->Now()); }

absl::StatusOr<Job> WorkerPool::Submit(Job job) {
  job.id = NewJobId();
  job.state = JobState::kQueued;
  job.phase = JobPhase::kNone;
  job.create_time = clock_->Now();
  job.attempt_count = 0;
  job.result.reset();
  QUANTD_ASSIGN_OR_RETURN(Job stored, store_->Create(job, options_.queue_capacity));
  if (stored.id == job.id) {  // not an idempotent repeat of an earlier job
    JobEvent submitted;
    submitted.kind = JobEvent::Kind::kSubmitted;
    events_.NotifyObservers(stored, submitted);
  }
  {
    absl::MutexLock lock(&mu_);
    ++wakeups_;
  }
  return stored;
}

absl::StatusOr<Job> WorkerPool::Cancel(const std::string& id, const std::string& reason) {
  // The job may move between states while we look (claimed, or requeued by a
  // stopping server): try again from its new state a few times.
  for (int round = 0; round < 3; ++round) {
    QUANTD_ASSIGN_OR_RETURN(Job job, store_->Get(id));
    if (job.state == JobState::kQueued) {
      absl::StatusOr<Job> cancelled =
          store_->CancelQueued(id, CancelledMessage(reason),
                               clock_->Now());
      if (cancelled.status().code() == absl::StatusCode::kFailedPrecondition) continue;  // claimed meanwhile
      if (!cancelled.ok()) return cancelled.status();
      events_.PublishOutcome(*cancelled);
      return cancelled;
    }
    if (job.state != JobState::kRunning) {
      return absl::FailedPreconditionError(
          absl::StrCat("job ", id, " has already finished (", JobStateName(job.state), ")"));
    }
    // The request goes to the shared store first, whoever runs the job: that
    // runner polls it between batches, and a job interrupted before it got
    // there (a crash, a lease lost to another process that then claims it
    // again) is recovered as CANCELLED instead of running again.
    const absl::Status requested = store_->RequestCancel(id, reason);
    if (requested.code() == absl::StatusCode::kFailedPrecondition) continue;  // no longer RUNNING
    bool stopped_here = false;
    {
      // Ours: stop it now rather than at its next poll of the store.
      absl::MutexLock lock(&mu_);
      auto it = running_.find(id);
      if (it != running_.end()) {
        StopSignals* stop = it->second.stop;
        if (!stop->cancelled.load()) {
          stop->cancel_reason = reason;
          stop->cancelled.store(true);
        }
        stopped_here = true;
      }
    }
    if (!requested.ok() && !stopped_here) return requested;
    if (!requested.ok()) {
      Log(LogLevel::kWarning, "quantd: cancelling job ", id,
          " here only (the job store did not record it): ", requested);
    }
    return job;
  }
  return absl::UnavailableError(absl::StrCat("job ", id, " kept changing state; try again"));
}

absl::Status WorkerPool::Delete(const std::string& id) {
  return store_->Delete(id, [this](const Job& deleted, bool last_holder) {
    const std::string& sha256 = deleted.result->artifact_sha256;
    return last_holder ? artifacts_->Remove(sha256) : artifacts_->RemoveManifest(sha256, deleted.id);
  });
}

void WorkerPool::ReleaseUnstarted(const Job& job) {
  // Claimed just as the pool stopped: back to the queue, never run. A busy
  // store gets a few more tries (the job would otherwise stay RUNNING until
  // its lease runs out, and count as an attempt that crashed), and a cancel
  // asked before the claim is answered as the runner answers it.
  absl::Duration backoff = options_.finish_retry_backoff;
  absl::Status outcome;
  for (int attempt = 0; attempt < 5; ++attempt) {
    if (attempt > 0) {
      absl::SleepFor(backoff);
      backoff = std::min(backoff * 2, absl::Seconds(1));
    }
    absl::StatusOr<std::optional<std::string>> kept = store_->Release(job.id, job.attempt_count);
    if (kept.ok() && !kept->has_value()) return;
    if (kept.ok()) {
      JobResult result;
      result.error_code = absl::StatusCode::kCancelled;
      result.error_message = CancelledMessage(**kept);
      outcome = store_->Finish(job.id, job.attempt_count, JobState::kCancelled, result, clock_->Now());
      if (outcome.ok()) {
        // Told as the runner tells a job's end: watchers here and the metrics.
        absl::StatusOr<Job> stored = store_->Get(job.id);
        if (stored.ok()) events_.PublishOutcome(*stored);
      }
    } else {
      outcome = kept.status();
    }
    if (outcome.ok() || outcome.code() == absl::StatusCode::kFailedPrecondition) return;  // done, or not ours
  }
  Log(LogLevel::kWarning, "quantd: job ", job.id,
      " was claimed as the server stopped and could not be put back (it is ",
      "recovered when its lease runs out): ", outcome);
}

absl::Status WorkerPool::FinishStartupRecovery() {
  {
    absl::MutexLock lock(&mu_);
    if (!startup_recovery_pending_) return absl::OkStatus();
  }
  // Under claim_mu_: recovering this holder's jobs must not take one this
  // process has just claimed for interrupted.
  absl::StatusOr<JobStore::RecoveryCounts> recovered =
      store_->RecoverInterrupted(options_.max_attempts, clock_->Now(), options_.holder);
  if (!recovered.ok()) {
    return absl::Status(recovered.status().code(),
                        absl::StrCat("the jobs this server was running when it stopped are not recovered yet: ",
                                     recovered.status().message()));
  }
  Log(LogLevel::kInfo, "quantd: recovered the jobs this server was running when it stopped: requeued=",
      recovered->requeued, " failed=", recovered->failed, " cancelled=", recovered->cancelled);
  absl::MutexLock lock(&mu_);
  startup_recovery_pending_ = false;
  recovered_.requeued += recovered->requeued;
  recovered_.failed += recovered->failed;
  recovered_.cancelled += recovered->cancelled;
  ++wakeups_;
  return absl::OkStatus();
}

void WorkerPool::ReportClaimErrorLocked(const absl::Status& error) {
  // Queued jobs wait (a full disk: until space is freed); say so once per
  // distinct error and at most once a minute, not once per poll.
  const absl::Time now = clock_->Now();
  if (error.ToString() == last_claim_error_ && now - last_claim_error_time_ < absl::Minutes(1)) return;
  last_claim_error_ = error.ToString();
  last_claim_error_time_ = now;
  Log(LogLevel::kWarning, "quantd: cannot claim the next queued job (queued jobs wait): ", error);
}

void WorkerPool::WorkerLoop() {
  uint64_t seen_wakeups = 0;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      seen_wakeups = wakeups_;
    }
    StopSignals stop;
    absl::StatusOr<std::optional<Job>> claimed;
    std::optional<Job> claimed_while_stopping;
    {
      absl::MutexLock claiming(&claim_mu_);
      const absl::Status recovered = FinishStartupRecovery();
      claimed = recovered.ok() ? store_->ClaimNext(clock_->Now(), options_.holder, options_.lease)
                               : absl::StatusOr<std::optional<Job>>(recovered);
      if (claimed.ok() && claimed->has_value()) {
        absl::MutexLock lock(&mu_);
        if (stopping_) {
          claimed_while_stopping = **claimed;  // released below, outside the locks
        } else {
          auto [it, added] = running_.try_emplace((*claimed)->id, RunningJob{(*claimed)->attempt_count, &stop});
          if (!added) {
            // An earlier attempt still runs here: this process froze past
            // its lease, and the job was recovered and queued again. That
            // runner stops at its next batch and records nothing.
            it->second.stop->lease_lost.store(true);
            it->second = RunningJob{(*claimed)->attempt_count, &stop};
          }
        }
      }
    }
    if (claimed_while_stopping.has_value()) {
      ReleaseUnstarted(*claimed_while_stopping);
      return;
    }
    if (!claimed.ok() || !claimed->has_value()) {
      absl::MutexLock lock(&mu_);
      if (!claimed.ok()) ReportClaimErrorLocked(claimed.status());
      auto woken = [this, seen_wakeups]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || wakeups_ != seen_wakeups;
      };
      mu_.AwaitWithTimeout(absl::Condition(&woken), options_.idle_poll);
      continue;
    }
    Job job = std::move(**claimed);
    // The job's own deadline is a date; the server-wide limit a duration
    // from this start, measured on the runner's interval clock.
    const absl::Time deadline = job.deadline.value_or(absl::InfiniteFuture());
    runner_.Run(std::move(job), deadline, &stop, options_.job_deadline);
    absl::MutexLock lock(&mu_);
    for (auto it = running_.begin(); it != running_.end(); ++it) {
      if (it->second.stop == &stop) {
        running_.erase(it);
        break;
      }
    }
  }
}

JobStore::RecoveryCounts WorkerPool::MaintainLeases() {
  std::vector<std::pair<std::string, uint32_t>> running;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, job] : running_) running.emplace_back(id, job.attempt);
  }
  // One reading of the clock for the round: the recovery below must not take
  // a lease this round has just renewed for expired (a clock that jumps, or a
  // thread stalled between the two, would otherwise requeue our own job).
  const absl::Time now = clock_->Now();
  const absl::Time expires = now + options_.lease;
  for (const auto& [id, attempt] : running) {
    const absl::Status renewed = store_->RenewLease(id, attempt, expires);
    if (renewed.code() != absl::StatusCode::kFailedPrecondition) {
      // Any other error (a locked or full store) is retried at the next round,
      // well before the lease runs out.
      if (!renewed.ok()) Log(LogLevel::kWarning, "quantd: cannot renew the lease of job ", id, ": ", renewed);
      continue;
    }
    // Not running this attempt any more: either its runner has just recorded
    // the outcome (it reads lease_lost no more), or the job was recovered,
    // queued again or failed, and may run elsewhere: its runner stops.
    absl::StatusOr<Job> stored = store_->Get(id);
    const bool finished = stored.ok() && stored->attempt_count == attempt && IsTerminal(stored->state);
    absl::MutexLock lock(&mu_);
    auto it = running_.find(id);
    if (it != running_.end() && it->second.attempt == attempt) {
      if (!finished) {  // quiet for the usual case, an outcome just recorded
        Log(LogLevel::kWarning, "quantd: job ", id, " attempt ", attempt,
            " lost its lease (recovered after it ran out); stopping it");
      }
      it->second.stop->lease_lost.store(true);
    }
  }
  absl::StatusOr<JobStore::RecoveryCounts> recovered =
      store_->RecoverInterrupted(options_.max_attempts, now, /*restarted_holder=*/"");
  if (!recovered.ok()) {
    Log(LogLevel::kWarning, "quantd: cannot recover jobs whose lease ran out: ", recovered.status());
    return {};
  }
  if (recovered->requeued > 0 || recovered->failed > 0 || recovered->cancelled > 0) {
    Log(LogLevel::kWarning, "quantd: recovered jobs whose lease ran out: requeued=", recovered->requeued,
        " failed=", recovered->failed, " cancelled=", recovered->cancelled);
    absl::MutexLock lock(&mu_);
    recovered_.requeued += recovered->requeued;
    recovered_.failed += recovered->failed;
    recovered_.cancelled += recovered->cancelled;
    ++wakeups_;
  }
  return *recovered;
}

void WorkerPool::SyncFollowedJobs() {
  for (const std::string& id : events_.FollowedJobs()) {
    // Per job, not for the whole round: a slow store read holds up claims
    // for one job's read at most.
    absl::MutexLock claiming(&claim_mu_);
    {
      absl::MutexLock lock(&mu_);
      if (running_.contains(id)) continue;  // its runner tells its watchers
    }
    absl::StatusOr<Job> stored = store_->Get(id);
    if (stored.ok()) {
      events_.PublishStoredChange(*stored);
    } else if (absl::IsNotFound(stored.status())) {
      events_.PublishStoredGone(id);  // finished and deleted elsewhere within one sync period
    }
  }
}

void WorkerPool::MaintenanceLoop() {
  // Real elapsed time: renewals are due in wall-clock terms whatever clock
  // the leases are measured on, and a step back of the system's time must
  // not hold them off (another replica would take the job meanwhile).
  Clock* const elapsed = Clock::Monotonic();
  absl::Time last_renewal = elapsed->Now();
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&maintenance_stopping_), std::min(options_.watch_sync, options_.lease / 3));
      if (maintenance_stopping_) return;
    }
    SyncFollowedJobs();
    if (elapsed->Now() - last_renewal >= options_.lease / 3) {
      last_renewal = elapsed->Now();
      MaintainLeases();
    }
  }
}

void WorkerPool::SweepLoop() {
  // Its own thread: a slow sweep (many files, a busy store) must not hold
  // up the lease renewals of the maintenance thread.
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&maintenance_stopping_), options_.artifact_sweep);
      if (maintenance_stopping_) return;
    }
    absl::StatusOr<SweptArtifacts> swept = SweepArtifacts();
    if (!swept.ok()) {
      Log(LogLevel::kWarning,
          "quantd: removing artifacts no job holds failed (left for the next sweep): ", swept.status());
    } else if (swept->artifacts > 0 || swept->manifests > 0) {
      Log(LogLevel::kInfo, "quantd: removed files no job holds: artifacts=", swept->artifacts,
          swept->removed_ids.empty()
              ? ""
              : absl::StrCat(" (", FirstNames(swept->removed_ids, static_cast<size_t>(swept->artifacts)), ")"),
          " manifests=", swept->manifests);
    }
  }
}

}  // namespace quantd::worker
