#include "worker/blob_collector.h"


#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/base/log.h"
#include "worker/engine/base/thread_name.h"

namespace quantd::worker {

absl::StatusOr<std::vector<std::string>> CollectUnusedBlobs(const BlobStore& blobs, JobStore& jobs, absl::Time now,
                                                            absl::Duration ttl) {
  absl::StatusOr<std::vector<StoredBlob>> stored = blobs.List();
  if (!stored.ok()) return stored.status();
  std::vector<std::string> removed;
  for (const StoredBlob& blob : *stored) {
    if (now - blob.last_used < ttl) continue;
    // Decided and removed with no submit between (BlobStore::Use).
    absl::Status store_error;
    absl::StatusOr<bool> gone = blobs.RemoveIf(blob.id, [&]() -> absl::StatusOr<bool> {
      absl::StatusOr<std::vector<std::string>> users = jobs.ActiveJobsUsing(blob.id);
      if (!users.ok()) {
        store_error = users.status();
        return false;
      }
      if (!users->empty()) return false;
      // Submitted with meanwhile (Touch moved its time)? Then it stays.
      absl::StatusOr<StoredBlob> again = blobs.Stat(blob.id, "blob");
      return again.ok() && now - again->last_used >= ttl;
    });
    if (!store_error.ok()) return store_error;
    if (gone.ok() && *gone) removed.push_back(blob.id);  // one that cannot be removed waits for the next sweep
  }
  return removed;
}

BlobCollector::BlobCollector(const BlobStore* blobs, JobStore* jobs, Clock* clock, absl::Duration ttl,
                             absl::Duration interval)
    : blobs_(blobs), jobs_(jobs), clock_(clock), ttl_(ttl), interval_(interval) {
  thread_ = std::thread([this] {
    NameThisThread("quantd-blob-gc");
    Loop();
  });
}

BlobCollector::~BlobCollector() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void BlobCollector::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stop), interval_)) return;
    }
    absl::StatusOr<std::vector<std::string>> removed = CollectUnusedBlobs(*blobs_, *jobs_, clock_->Now(), ttl_);
    if (!removed.ok()) {
      Log(LogLevel::kWarning, "quantd: blob collection failed: ", removed.status());
    } else if (!removed->empty()) {
      Log(LogLevel::kInfo, absl::StrCat("quantd: deleted ", removed->size(), " blob(s) unused for ",
                                        absl::FormatDuration(ttl_), ": ", absl::StrJoin(*removed, " ")));
    }
  }
}

}  // namespace quantd::worker
