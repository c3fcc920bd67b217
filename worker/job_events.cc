#include "worker/job_events.h"

#include <optional>
#include <utility>

namespace quantd::worker {

bool ResumedWatchGets(const JobEvent& event, uint64_t after_sequence) {
  if (event.kind == JobEvent::Kind::kSnapshot || event.kind == JobEvent::Kind::kResult) return true;
  if ((event.sequence >> 32) != (after_sequence >> 32)) return true;
  return event.sequence > after_sequence;
}

void JobEventHub::PublishOutcome(const Job& finished) {
  JobEvent state_event;
  state_event.kind = JobEvent::Kind::kStateChanged;
  state_event.state = finished.state;
  Publish(finished, state_event);
  JobEvent result_event;
  result_event.kind = JobEvent::Kind::kResult;
  if (finished.result.has_value()) result_event.result = *finished.result;
  Publish(finished, result_event);
}

void JobEventHub::Publish(const Job& job, JobEvent event) {
  absl::MutexLock lock(&mu_);
  Followed& followed = jobs_[job.id];
  followed.job = job;
  event.job_id = job.id;
  event.time = clock_->Now();
  event.sequence = Sequence(++followed.sequence);
  for (const auto& [token, watcher] : followed.watchers) watcher->OnJobEvent(event);
  for (JobWatcher* observer : observers_) observer->OnJobEvent(event);
  if (event.kind == JobEvent::Kind::kResult) {
    jobs_.erase(job.id);
    StreamEnded(job.id);
  }
}

void JobEventHub::NotifyObservers(const Job& job, JobEvent event) {
  absl::MutexLock lock(&mu_);
  event.job_id = job.id;
  event.time = clock_->Now();
  for (JobWatcher* observer : observers_) observer->OnJobEvent(event);
}

void JobEventHub::AddObserver(JobWatcher* observer) {
  absl::MutexLock lock(&mu_);
  observers_.push_back(observer);
}

absl::StatusOr<uint64_t> JobEventHub::Subscribe(const std::string& job_id,
                                                const std::function<absl::StatusOr<Job>()>& load,
                                                JobWatcher* watcher) {
  std::optional<absl::StatusOr<Job>> loaded;
  uint64_t ended_before_load = 0;
  for (int tries = 0;; ++tries) {
    if (tries > 0) {
      loaded = load();
    }
    absl::MutexLock lock(&mu_);
    if (closed_) return absl::UnavailableError("the server is shutting down; watch again once it is back");
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) {
      // Not followed: read it from the store, outside the lock. A stream that
      // ended meanwhile (a result published here) may have been this job's,
      // and the read older than it: read again (a few times; past that, the
      // store sync corrects a stale snapshot within its period).
      if (!loaded.has_value() || (EndedSince(job_id, ended_before_load) && tries < 3)) {
        ended_before_load = streams_ended_;
        loaded.reset();
        continue;
      }
      if (!loaded->ok()) return loaded->status();
      const Job& job = **loaded;
      JobEvent snapshot;
      snapshot.kind = JobEvent::Kind::kSnapshot;
      snapshot.job_id = job_id;
      snapshot.time = clock_->Now();
      snapshot.sequence = Sequence(1);
      snapshot.snapshot = job;
      if (IsTerminal(job.state)) {
        watcher->OnJobEvent(snapshot);
        JobEvent result;
        result.kind = JobEvent::Kind::kResult;
        result.job_id = job_id;
        result.time = snapshot.time;
        result.sequence = Sequence(2);
        if (job.result.has_value()) result.result = *job.result;
        watcher->OnJobEvent(result);
        return 0;
      }
      it = jobs_.emplace(job_id, Followed{job, 0, {}}).first;
    }
    Followed& followed = it->second;
    JobEvent snapshot;
    snapshot.kind = JobEvent::Kind::kSnapshot;
    snapshot.job_id = job_id;
    snapshot.time = clock_->Now();
    snapshot.sequence = Sequence(followed.sequence);
    snapshot.snapshot = followed.job;
    watcher->OnJobEvent(snapshot);
    uint64_t token = next_token_++;
    followed.watchers[token] = watcher;
    return token;
  }
}

void JobEventHub::StreamEnded(const std::string& job_id) {
  recently_ended_.emplace_back(++streams_ended_, job_id);
  if (recently_ended_.size() > kRecentlyEnded) recently_ended_.pop_front();
}

bool JobEventHub::EndedSince(const std::string& job_id, uint64_t count) const {
  if (streams_ended_ == count) return false;
  // Some that ended since are no longer kept: one of them may be this job.
  if (recently_ended_.empty() || recently_ended_.front().first > count + 1) return true;
  for (auto it = recently_ended_.rbegin(); it != recently_ended_.rend() && it->first > count; ++it) {
    if (it->second == job_id) return true;
  }
  return false;
}

void JobEventHub::Unsubscribe(const std::string& job_id, uint64_t token) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it != jobs_.end()) it->second.watchers.erase(token);
}

void JobEventHub::CloseAll() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
  for (auto& [id, followed] : jobs_) {
    for (const auto& [token, watcher] : followed.watchers) watcher->OnHubClosing();
    followed.watchers.clear();
  }
}

std::vector<std::string> JobEventHub::FollowedJobs() {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> ids;
  ids.reserve(jobs_.size());
  for (const auto& [id, followed] : jobs_) ids.push_back(id);
  return ids;
}

void JobEventHub::PublishStoredChange(const Job& stored) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(stored.id);
  // Gone: this process published its result meanwhile.
  if (it == jobs_.end()) return;
  Followed& followed = it->second;
  const Job before = followed.job;
  followed.job = stored;
  auto tell_watchers = [&](JobEvent event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    event.job_id = stored.id;
    event.time = clock_->Now();
    event.sequence = Sequence(++followed.sequence);
    for (const auto& [token, watcher] : followed.watchers) watcher->OnJobEvent(event);
  };
  if (stored.state != before.state) {
    JobEvent event;
    event.kind = JobEvent::Kind::kStateChanged;
    event.state = stored.state;
    tell_watchers(event);
  }
  if (stored.state == JobState::kRunning && stored.phase != JobPhase::kNone &&
      (stored.phase != before.phase || stored.attempt_count != before.attempt_count)) {
    JobEvent event;
    event.kind = JobEvent::Kind::kPhaseStarted;
    event.phase.phase = stored.phase;
    tell_watchers(event);
  }
  if (IsTerminal(stored.state)) {
    JobEvent event;
    event.kind = JobEvent::Kind::kResult;
    if (stored.result.has_value()) event.result = *stored.result;
    tell_watchers(event);
    StreamEnded(it->first);
    jobs_.erase(it);
  }
}

void JobEventHub::PublishStoredGone(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return;
  for (const auto& [token, watcher] : it->second.watchers) watcher->OnJobGone(job_id);
  jobs_.erase(it);
  StreamEnded(job_id);
}

int JobEventHub::WatcherCount(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  return it == jobs_.end() ? 0 : static_cast<int>(it->second.watchers.size());
}

}  // namespace quantd::worker
