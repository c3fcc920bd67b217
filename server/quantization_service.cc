#include "server/quantization_service.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <limits>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include <grpcpp/alarm.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/audit_log.h"
#include "server/call_auth.h"
#include "server/status_conversion.h"
#include "worker/engine/base/sha256.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/data/dataset_bytes_check.h"

namespace quantd {
namespace {

constexpr uint32_t kDefaultPageSize = 50;
constexpr uint32_t kMaxPageSize = 1000;
// ListJobs pages end before this many bytes (under gRPC's default 4 MiB).
constexpr size_t kMaxListBytes = size_t{3} << 20;
constexpr uint32_t kDefaultChunk = 1 << 20;
// What a job's result (report, layers, trial table) may add to its record,
// checked against the data dir quota at submit.
constexpr int64_t kJobResultAllowance = 64 << 10;
// Below gRPC's default 4 MiB receive limit with room for the message's own
// framing: a chunk of exactly 4 MiB is a 4 MiB + 6 byte message, which
// default clients refuse.
constexpr uint32_t kMaxChunk = (4 << 20) - (64 << 10);
// Smaller ones are sent this big: a read token asking for 1-byte chunks made
// a 100 MB artifact 25 million store reads on the shared RPC threads.
constexpr uint32_t kMinChunk = 4 << 10;

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context,
                                      const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// Mutating calls: written to the audit log, then answered with `status`.
absl::Status Audited(grpc::CallbackServerContext* context, const Principal& caller, absl::string_view method,
                     absl::string_view target, const absl::Status& status) {
  AuditLine(caller.name, context->peer(), method, target, status);
  return status;
}

absl::Status Busy(absl::string_view method, const BlockingExecutor& executor) {
  return absl::ResourceExhaustedError(absl::StrCat(
      method, ": the server is busy (", executor.queue_capacity(),
      " calls already wait for its I/O threads, --rpc_queue_capacity); retry with backoff"));
}

absl::Status TooManyUploads(absl::string_view method, const UploadSlots& slots) {
  return absl::ResourceExhaustedError(absl::StrCat(method, ": ", slots.capacity(),
                                                   " uploads are in progress (--max_concurrent_uploads); nothing was "
                                                   "stored, retry with backoff"));
}

absl::Status RequireId(const std::string& id) {
  if (id.empty()) return absl::InvalidArgumentError("id: required");
  // Ids are short ("job-" and 20 hex digits); a long one would be echoed in
  // full by the not-found message, past gRPC's trailer limit.
  if (id.size() > 128) {
    return absl::InvalidArgumentError(absl::StrCat("id: ", id.size(), " characters; an id has at most 128"));
  }
  return absl::OkStatus();
}

int PageSize(uint32_t requested) {
  if (requested == 0) return kDefaultPageSize;
  return static_cast<int>(std::min(requested, kMaxPageSize));
}

// A client-streaming reactor that ends the call at once with `status`.
template <typename Request>
class RejectedReadReactor final : public grpc::ServerReadReactor<Request> {
 public:
  explicit RejectedReadReactor(const absl::Status& status) { this->Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

// A server-streaming reactor that ends the call at once with `status`.
template <typename Response>
class RejectedWriteReactor final : public grpc::ServerWriteReactor<Response> {
 public:
  explicit RejectedWriteReactor(const absl::Status& status) {
    this->Finish(ToGrpcStatus(status));
  }
  void OnDone() override { delete this; }
};

// UploadModel / UploadDataset: metadata first, then chunks streamed into the
// blob store (hashed on the way); the blob appears only once verified. Each
// chunk is written on the executor; the next read starts once it is stored,
// so a call has at most one task queued. A client that sends nothing for
// `idle_timeout` (alive, or gone without closing its connection) loses the
// upload: its temporary file and quota reservation would otherwise stay for
// as long as it holds the stream. So does one that, past its first
// `idle_timeout` (a minute when that is zero), averages less than
// `min_bytes_per_second`: a byte sent now and then would otherwise hold them
// as long.
struct UploadLimits {
  absl::Duration idle_timeout;       // zero: none
  int64_t min_bytes_per_second = 0;  // zero: none
  worker::Clock* clock = nullptr;    // never null
};

UploadLimits UploadLimitsOf(const QuantizationServiceImpl::Deps& deps) {
  return UploadLimits{deps.upload_idle_timeout, deps.upload_min_bytes_per_second, deps.clock};
}

template <typename Request>
class UploadReactor final : public grpc::ServerReadReactor<Request> {
 public:
  UploadReactor(grpc::CallbackServerContext* context, const worker::BlobStore* blobs, BlockingExecutor* executor,
                v1::BlobInfo* response, Principal caller, absl::string_view method, const UploadLimits& limits,
                UploadSlots::Slot slot)
      : slot_(std::move(slot)),
        context_(context),
        blobs_(blobs),
        executor_(executor),
        response_(response),
        caller_(std::move(caller)),
        method_(method),
        idle_timeout_(limits.idle_timeout),
        min_bytes_per_second_(limits.min_bytes_per_second),
        clock_(limits.clock),
        started_(limits.clock->Now()) {
    Read();
  }

  void OnReadDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      reading_ = false;
      if (finished_) return;  // ended by the idle timer; OnDone cleans up
    }
    // The first message is admission, refused when the I/O threads are
    // swamped; later chunks of an admitted upload go through regardless.
    // (Set before queueing: the handler may start the next read, and so the
    // next OnReadDone, before this one returns.)
    const bool admitted = std::exchange(admitted_, true);
    auto handle = [this, ok] { HandleRead(ok); };
    const bool queued = admitted ? executor_->ScheduleContinuation(std::move(handle))
                                 : executor_->TrySchedule(std::move(handle));
    if (!queued) {
      Fail(admitted ? absl::UnavailableError("the server is shutting down") : Busy(method_, *executor_));
    }
  }

  // Whoever is last, this, a timer callback or a Read() returning from
  // StartRead, deletes the reactor.
  void OnDone() override {
    grpc::Alarm* pending = nullptr;
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
      if (timers_pending_ > 0) {
        pending = timer_.get();
        cancelling_ = true;  // the alarm must outlive Cancel()
      }
    }
    if (pending != nullptr) pending->Cancel();  // its callback comes soon (no read restarts the timer now)
    bool last;
    {
      absl::MutexLock lock(&mu_);
      cancelling_ = false;
      last = timers_pending_ == 0 && starting_reads_ == 0;
    }
    if (last) delete this;
  }

 private:
  // The read starts after its idle timer is armed. A timer that fires before
  // StartRead has been called (this thread stalled) leaves the drop to this
  // thread, after StartRead: finishing first would let OnDone delete the
  // reactor under it. Until then the reactor is kept (starting_reads_).
  void Read() {
    uint64_t generation = 0;
    if (idle_timeout_ > absl::ZeroDuration()) {
      // A new alarm per read: a cancelled one may still be running its
      // callback. The old one goes outside the lock (its callback takes it).
      std::unique_ptr<grpc::Alarm> old;
      auto timer = std::make_unique<grpc::Alarm>();
      grpc::Alarm* raw = timer.get();
      {
        absl::MutexLock lock(&mu_);
        ++starting_reads_;
        ++timers_pending_;
        generation = ++read_generation_;
        reading_ = true;
        old = std::exchange(timer_, std::move(timer));
      }
      old.reset();
      raw->Set(absl::ToChronoTime(absl::Now() + idle_timeout_),
               [this, generation](bool fired) { OnIdleTimer(fired, generation); });
    } else {
      absl::MutexLock lock(&mu_);
      ++starting_reads_;
    }
    this->StartRead(&request_);
    bool drop = false;
    bool last = false;
    {
      absl::MutexLock lock(&mu_);
      --starting_reads_;
      started_generation_ = std::max(started_generation_, generation);
      drop = generation != 0 && dropped_before_start_ == generation;
      last = done_ && starting_reads_ == 0 && timers_pending_ == 0 && !cancelling_;
    }
    if (drop) return DropIdle();  // finished here: OnDone comes later
    if (last) delete this;
  }

  void OnIdleTimer(bool fired, uint64_t generation) {
    bool expired = false;
    bool last_after_done = false;
    {
      absl::MutexLock lock(&mu_);
      --timers_pending_;
      if (done_) {
        last_after_done = timers_pending_ == 0 && starting_reads_ == 0 && !cancelling_;
      } else {
        expired = fired && reading_ && generation == read_generation_ && !finished_;
        if (expired) finished_ = true;
        if (expired && started_generation_ < generation) {
          dropped_before_start_ = generation;  // Read() drops it once its StartRead returns
          expired = false;
        }
      }
    }
    if (last_after_done) {
      delete this;
      return;
    }
    if (!expired) return;
    // No read is being handled, nor will be (OnReadDone sees finished_). The
    // partial file goes on the executor (an unlink of up to
    // --max_upload_bytes is disk work), or here when it is shutting down.
    if (!executor_->ScheduleContinuation([this] { DropIdle(); })) DropIdle();
  }

  // The partial file and its quota reservation go before the client hears.
  void DropIdle() {
    upload_.reset();
    slot_.reset();
    const absl::Status status = absl::DeadlineExceededError(absl::StrCat(
        method_, ": no message for ", absl::FormatDuration(idle_timeout_),
        " (--upload_idle_timeout_seconds); the upload was dropped and nothing was stored"));
    AuditLine(caller_.name, context_->peer(), method_, "", status);
    this->Finish(ToGrpcStatus(status));
  }

  void HandleRead(bool ok) {
    if (!ok) {  // the client is done sending (or went away)
      // A client that cancelled or died mid-stream also ends the reads: its
      // bytes are not a blob, however many arrived.
      if (context_->IsCancelled()) return Fail(absl::CancelledError("upload cancelled; nothing was stored"));
      if (upload_ == nullptr) return Fail(absl::InvalidArgumentError("metadata: required as the first message"));
      if (format_check_.has_value()) {
        if (absl::Status whole = format_check_->Finish(); !whole.ok()) return Fail(FormatMismatch(whole));
      }
      absl::StatusOr<worker::BlobInfo> info = upload_->Commit();
      if (!info.ok()) return Fail(info.status());
      response_->set_blob_id(info->sha256);
      response_->set_sha256(info->sha256);
      response_->set_size_bytes(static_cast<uint64_t>(info->size_bytes));
      response_->set_already_existed(info->already_existed);
      upload_.reset();
      AuditLine(caller_.name, context_->peer(), method_, info->sha256, absl::OkStatus());
      FinishOnce(grpc::Status::OK);
      return;
    }
    if (request_.has_metadata()) {
      if (upload_ != nullptr) return Fail(absl::InvalidArgumentError("metadata: sent twice"));
      if (request_.metadata().size_bytes() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        // As int64 it would read as negative, and the error would say so.
        return Fail(absl::ResourceExhaustedError(absl::StrCat("metadata.size_bytes: ", request_.metadata().size_bytes(),
                                                              " bytes exceeds the upload limit of ",
                                                              blobs_->max_bytes())));
      }
      auto upload = blobs_->BeginUpload(request_.metadata().expected_sha256(),
                                        static_cast<int64_t>(request_.metadata().size_bytes()));
      if (!upload.ok()) return Fail(upload.status());
      upload_ = std::move(*upload);
      if constexpr (std::is_same_v<Request, v1::UploadDatasetRequest>) {
        // A dataset whose bytes contradict its format is refused now, not
        // when a job first opens it.
        declared_format_ = request_.metadata().format();
        switch (declared_format_) {
          case v1::DATASET_FORMAT_CIFAR10_BINARY:
            format_check_.emplace(engine::DatasetFormat::kCifar10Binary);
            break;
          case v1::DATASET_FORMAT_NPY:
            format_check_.emplace(engine::DatasetFormat::kNpy);
            break;
          default:
            break;
        }
      }
    } else {
      if (upload_ == nullptr) return Fail(absl::InvalidArgumentError("metadata: required as the first message"));
      if (format_check_.has_value()) {
        if (absl::Status bytes = format_check_->Add(request_.chunk_data()); !bytes.ok()) {
          return Fail(FormatMismatch(bytes));
        }
      }
      absl::Status status = upload_->Append(request_.chunk_data());
      if (!status.ok()) return Fail(status);
      received_bytes_ += static_cast<int64_t>(request_.chunk_data().size());
      if (absl::Status fast_enough = CheckRate(); !fast_enough.ok()) return Fail(fast_enough);
    }
    Read();
  }

  absl::Status CheckRate() const {
    if (min_bytes_per_second_ <= 0) return absl::OkStatus();
    const absl::Duration grace = idle_timeout_ > absl::ZeroDuration() ? idle_timeout_ : absl::Minutes(1);
    const absl::Duration elapsed = clock_->Now() - started_;
    if (elapsed <= grace) return absl::OkStatus();
    const double seconds = absl::ToDoubleSeconds(elapsed);
    const double rate = static_cast<double>(received_bytes_) / seconds;
    if (rate >= static_cast<double>(min_bytes_per_second_)) return absl::OkStatus();
    return absl::DeadlineExceededError(absl::StrCat(
        method_, ": ", received_bytes_, " bytes in ", static_cast<int64_t>(seconds), " s is ",
        static_cast<int64_t>(rate), " bytes/s, below --upload_min_bytes_per_second=", min_bytes_per_second_,
        "; the upload was dropped and nothing was stored"));
  }

  absl::Status FormatMismatch(const absl::Status& why) const {
    return absl::InvalidArgumentError(absl::StrCat("metadata.format: the file is not ",
                                                   v1::DatasetFormat_Name(declared_format_), ": ", why.message(),
                                                   "; nothing was stored"));
  }

  void Fail(const absl::Status& status) {
    upload_.reset();  // discards the temporary file
    AuditLine(caller_.name, context_->peer(), method_, "", status);
    FinishOnce(ToGrpcStatus(status));
  }

  void FinishOnce(const grpc::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
    }
    slot_.reset();  // only the caller that set finished_ gets here
    this->Finish(status);
  }

  // Given back as the call finishes: a client that has its answer may upload again at once.
  std::optional<UploadSlots::Slot> slot_;
  grpc::CallbackServerContext* const context_;
  const worker::BlobStore* blobs_;
  BlockingExecutor* const executor_;
  v1::BlobInfo* response_;
  const Principal caller_;
  const std::string method_;
  const absl::Duration idle_timeout_;  // zero: none
  const int64_t min_bytes_per_second_;  // zero: none
  worker::Clock* const clock_;
  const absl::Time started_;
  int64_t received_bytes_ = 0;  // chunk bytes stored (HandleRead only)
  bool admitted_ = false;  // the first message got an I/O thread (OnReadDone only)
  Request request_;
  std::unique_ptr<worker::BlobUpload> upload_;  // discarded, if still open, when we are deleted
  // UploadDataset: the declared format, checked against the bytes (HandleRead only).
  v1::DatasetFormat declared_format_ = v1::DATASET_FORMAT_UNSPECIFIED;
  std::optional<engine::DatasetBytesCheck> format_check_;

  absl::Mutex mu_;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish called
  bool done_ ABSL_GUARDED_BY(mu_) = false;      // OnDone called
  bool reading_ ABSL_GUARDED_BY(mu_) = false;   // a read is outstanding
  uint64_t read_generation_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t started_generation_ ABSL_GUARDED_BY(mu_) = 0;    // the last read whose StartRead returned
  uint64_t dropped_before_start_ ABSL_GUARDED_BY(mu_) = 0;  // a read whose timer fired before that
  int starting_reads_ ABSL_GUARDED_BY(mu_) = 0;  // Read() calls not yet past StartRead
  int timers_pending_ ABSL_GUARDED_BY(mu_) = 0;  // alarm callbacks yet to run
  bool cancelling_ ABSL_GUARDED_BY(mu_) = false;  // OnDone is in timer_->Cancel()
  std::unique_ptr<grpc::Alarm> timer_ ABSL_GUARDED_BY(mu_);
};

// WatchJob: a snapshot first, then each event, until the job's result. The
// subscription (which may read the job store) runs on the executor.
class WatchReactor final : public grpc::ServerWriteReactor<v1::JobEvent>,
                           public worker::JobWatcher {
 public:
  WatchReactor(worker::WorkerPool* pool, BlockingExecutor* executor, const v1::WatchJobRequest& request)
      : pool_(pool), job_id_(request.id()), after_sequence_(request.after_sequence()) {
    if (absl::Status id = RequireId(job_id_); !id.ok()) {
      FinishOnce(id);
      return;
    }
    absl::MutexLock lock(&mu_);
    subscribing_ = executor->TrySchedule([this] { Subscribe(); });
    if (!subscribing_) FinishLocked(ToGrpcStatus(Busy("WatchJob", *executor)));
  }

  // Called under the hub's lock: queue and return.
  void OnJobEvent(const worker::JobEvent& event) override {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    const bool last = event.kind == worker::JobEvent::Kind::kResult;
    if (pending_.size() >= kMaxPendingEvents && !last) {
      // A watcher that does not read (a stalled client) must not make the
      // server queue a job's every batch for it: the stream ends, and the
      // client resumes from the last event it read.
      pending_.resize(writing_ ? 1 : 0);
      FinishLocked(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                absl::StrCat("this watch fell ", kMaxPendingEvents,
                                             " events behind; watch again with after_sequence set to the last "
                                             "event read")));
      return;
    }
    if (worker::ResumedWatchGets(event, after_sequence_)) {
      v1::JobEvent proto;
      ToProto(event, &proto);
      pending_.push_back(std::move(proto));
    }
    if (last) ending_ = true;
    WriteNextLocked();
  }

  // Pending events are dropped: the client resumes with after_sequence.
  void OnHubClosing() override {
    absl::MutexLock lock(&mu_);
    token_ = 0;  // the hub has dropped us already
    if (writing_) {
      pending_.resize(1);  // the one being written
    } else {
      pending_.clear();
    }
    FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              "the server is shutting down; watch again once it is back"));
  }

  // Finished in another process and deleted before its result reached the
  // hub here: what is pending is written, then the stream ends NOT_FOUND.
  void OnJobGone(const std::string& job_id) override {
    absl::MutexLock lock(&mu_);
    token_ = 0;  // the hub has dropped us already
    end_status_ = grpc::Status(grpc::StatusCode::NOT_FOUND,
                               absl::StrCat("job ", job_id,
                                            " finished in another quantd and was deleted before its result reached "
                                            "this one"));
    ending_ = true;
    WriteNextLocked();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!pending_.empty()) pending_.pop_front();
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the watcher went away"));
      return;
    }
    WriteNextLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
  }

  void OnDone() override {
    uint64_t token;
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
      // Cancelled while the subscription is queued: Subscribe() ends us.
      if (subscribing_) return;
      token = token_;
    }
    if (token != 0) pool_->events().Unsubscribe(job_id_, token);
    delete this;
  }

 private:
  void Subscribe() {
    auto load = [pool = pool_, id = job_id_]() { return pool->store().Get(id); };
    absl::StatusOr<uint64_t> token = pool_->events().Subscribe(job_id_, load, this);
    {
      absl::MutexLock lock(&mu_);
      subscribing_ = false;
      if (token.ok()) token_ = *token;
      if (!done_) {
        if (!token.ok()) FinishLocked(ToGrpcStatus(token.status()));
        return;
      }
    }
    if (token.ok() && *token != 0) pool_->events().Unsubscribe(job_id_, *token);
    delete this;
  }

  void FinishOnce(const absl::Status& status) {
    absl::MutexLock lock(&mu_);
    FinishLocked(ToGrpcStatus(status));
  }

  void WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || writing_) return;
    if (!pending_.empty()) {
      writing_ = true;
      StartWrite(&pending_.front());
    } else if (ending_) {
      FinishLocked(end_status_);
    }
  }

  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  static constexpr size_t kMaxPendingEvents = 10000;

  worker::WorkerPool* const pool_;
  const std::string job_id_;
  const uint64_t after_sequence_;
  absl::Mutex mu_;
  uint64_t token_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<v1::JobEvent> pending_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool ending_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status end_status_ ABSL_GUARDED_BY(mu_);  // once ending_: OK after a result
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool subscribing_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

// DownloadArtifact: header, chunks, trailer. The artifact is looked up, then
// read and hashed a window of a few chunks at a time on the executor, so a
// large one is never held whole; the writes only slice the window. Bytes
// that do not hash to the artifact's sha256 end the stream DATA_LOSS in
// place of the trailer (a client keeps a download only with the trailer).
class DownloadReactor final : public grpc::ServerWriteReactor<v1::DownloadArtifactResponse> {
 public:
  using Lookup = absl::AnyInvocable<absl::StatusOr<v1::Artifact>() &&>;

  DownloadReactor(BlockingExecutor* executor, worker::ArtifactStore* artifacts, Lookup lookup, uint32_t chunk_size)
      : executor_(executor), artifacts_(artifacts), chunk_size_(chunk_size) {
    if (!executor_->TrySchedule([this, lookup = std::move(lookup)]() mutable { Start(std::move(lookup)()); })) {
      Finish(ToGrpcStatus(Busy("DownloadArtifact", *executor_)));
    }
  }

  void OnWriteDone(bool ok) override {
    if (!ok) return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "download interrupted"));
    if (trailer_sent_) return Finish(grpc::Status::OK);
    if (window_position_ < window_.size()) return WriteChunk();
    if (sent_ < size_) {
      // The next window of a download already admitted: past a full queue, as
      // an upload's next chunk, so a burst of other calls cannot cut it off
      // halfway (the client would start again from byte 0).
      if (!executor_->ScheduleContinuation([this] { ReadWindow(); })) {
        Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
      }
      return;
    }
    // Every byte sent: the trailer, if they were the artifact's.
    if (hash_.HexDigest() != sha256_) {
      return Finish(ToGrpcStatus(absl::DataLossError(absl::StrCat("artifact ", artifact_id_,
                                                                  " is corrupted in the store"))));
    }
    message_.Clear();
    message_.mutable_trailer()->set_sha256(sha256_);
    message_.mutable_trailer()->set_size_bytes(size_);
    trailer_sent_ = true;
    StartWrite(&message_);
  }

  void OnDone() override { delete this; }

 private:
  // Chunks per window read from the store.
  static constexpr uint64_t kChunksPerWindow = 4;

  // On the executor.
  void Start(absl::StatusOr<v1::Artifact> artifact) {
    if (!artifact.ok()) return Finish(ToGrpcStatus(artifact.status()));
    artifact_id_ = artifact->id();
    sha256_ = artifact->sha256();
    size_ = artifact->size_bytes();
    auto* header = message_.mutable_header();
    *header->mutable_artifact() = *std::move(artifact);
    header->set_sha256(sha256_);
    header->set_size_bytes(size_);
    StartWrite(&message_);
  }

  // On the executor; no write is outstanding.
  void ReadWindow() {
    absl::StatusOr<std::string> window =
        artifacts_->ReadRange(sha256_, sent_, std::min<uint64_t>(kChunksPerWindow * chunk_size_, size_ - sent_));
    if (window.ok() && window->empty()) {
      window = absl::DataLossError(absl::StrCat("artifact ", artifact_id_, " is shorter in the store (", sent_,
                                                " bytes) than recorded (", size_, ")"));
    }
    if (!window.ok()) return Finish(ToGrpcStatus(window.status()));
    window_ = *std::move(window);
    window_position_ = 0;
    hash_.Update(window_);
    WriteChunk();
  }

  void WriteChunk() {
    const size_t n = std::min<size_t>(chunk_size_, window_.size() - window_position_);
    message_.Clear();
    message_.set_chunk_data(window_.substr(window_position_, n));
    window_position_ += n;
    sent_ += n;
    StartWrite(&message_);
  }

  BlockingExecutor* const executor_;
  worker::ArtifactStore* const artifacts_;
  const uint32_t chunk_size_;
  std::string artifact_id_;
  std::string sha256_;
  uint64_t size_ = 0;
  uint64_t sent_ = 0;
  std::string window_;
  size_t window_position_ = 0;
  engine::Sha256 hash_;
  v1::DownloadArtifactResponse message_;
  bool trailer_sent_ = false;
};

absl::StatusOr<worker::Job> ArtifactJob(worker::JobStore& store, const std::string& id) {
  QUANTD_RETURN_IF_ERROR(RequireId(id));
  QUANTD_ASSIGN_OR_RETURN(std::vector<worker::Job> jobs, store.JobsWithArtifact(id));
  if (jobs.empty()) return absl::NotFoundError(absl::StrCat("artifact \"", id, "\" not found"));
  return jobs.front();
}

}  // namespace

absl::StatusOr<Principal> QuantizationServiceImpl::Admit(grpc::CallbackServerContext* context, Role required,
                                                         absl::string_view method, absl::string_view target) const {
  return AdmitCall(*deps_.auth, context, required, method, target);
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::Offload(
    grpc::CallbackServerContext* context, absl::string_view method, Role required,
    absl::AnyInvocable<absl::Status(Principal caller) &&> work, absl::string_view target) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  // Admitted here, before the queue (the tokens are in memory): callers
  // without a token take no place in it.
  absl::StatusOr<Principal> caller = Admit(context, required, method, target);
  if (!caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  // Calls that change state (those of submit and admin roles) audit their
  // own outcome; one that never ran, or threw, is audited here.
  const bool mutating = required >= Role::kSubmit;
  const std::string who = caller->name;
  auto audit_unrun = [mutating, context, method, who](const absl::Status& status) {
    if (mutating) AuditLine(who, context->peer(), method, "", status);
  };
  if (!deps_.executor->TrySchedule([reactor, context, method, caller = *std::move(caller), work = std::move(work),
                                    audit_unrun]() mutable {
        // A caller that went away while the call waited (cancelled, or past
        // its deadline) saw it fail: a submit or delete done now would be one
        // it believes was not, and a retry would do it twice. The deadline is
        // compared too: gRPC may mark the call cancelled only a little later.
        if (context->IsCancelled() || context->deadline() <= std::chrono::system_clock::now()) {
          const absl::Status gone = absl::CancelledError(
              absl::StrCat(method, ": the caller went away (cancelled, or past its deadline) while the call waited "
                                   "for an RPC thread; it was not run"));
          audit_unrun(gone);
          reactor->Finish(ToGrpcStatus(gone));
          return;
        }
        bool returned = false;
        const absl::Status status = StatusOfTask(method, [&caller, &work, &returned]() -> absl::Status {
          absl::Status result = std::move(work)(std::move(caller));
          returned = true;
          return result;
        });
        if (!returned) audit_unrun(status);  // it threw: its own line may be missing
        reactor->Finish(ToGrpcStatus(status));
      })) {
    const absl::Status busy = Busy(method, *deps_.executor);
    audit_unrun(busy);
    reactor->Finish(ToGrpcStatus(busy));
  }
  return reactor;
}

namespace {

// One submitter may not stop another's work (a job, an evaluation); an
// admin may stop any. Records from before owners were kept have none:
// anyone may, as then.
// `what` names it ("job job-1 was submitted by"), `owner_word` the owner
// ("its submitter").
absl::Status OnlyOwnerOrAdmin(const Principal& caller, const std::string& owner, absl::string_view method,
                              absl::string_view what, absl::string_view owner_word) {
  if (caller.role >= Role::kAdmin || owner.empty() || owner == caller.name) return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat(method, ": ", what, " \"", owner, "\"; only ", owner_word, " or an admin may cancel it"));
}

}  // namespace

grpc::ServerUnaryReactor* QuantizationServiceImpl::QuantizeJob(
    grpc::CallbackServerContext* context, const v1::QuantizeJobRequest* request,
    v1::Job* response) {
  return Offload(
      context, "QuantizeJob", Role::kSubmit, [this, context, request, response](Principal caller) -> absl::Status {
        // A retry gets its job back before anything is resolved: what the first
        // request named may be gone by now.
        absl::StatusOr<std::optional<worker::Job>> retried = JobOfRetry(*request, caller.name, deps_.pool->store());
        if (!retried.ok()) return Audited(context, caller, "QuantizeJob", "", retried.status());
        if (retried->has_value()) {
          ToProto(**retried, response);
          return Audited(context, caller, "QuantizeJob", (*retried)->id, absl::OkStatus());
        }
        // No blob this job names may be deleted before the job is recorded.
        const worker::BlobStore::Use blobs_in_use(*deps_.blobs);
        absl::StatusOr<worker::Job> job = JobFromRequest(*request, resolver_);
        if (!job.ok()) return Audited(context, caller, "QuantizeJob", "", job.status());
        job->owner = caller.name;
        // A job's record (its request, later its result and trial table)
        // goes into the job store under the data dir: it must fit the quota
        // as an upload must. Twice the request, and room for its result.
        if (deps_.quota != nullptr) {
          const absl::Status room = deps_.quota->Check(
              2 * static_cast<int64_t>(request->ByteSizeLong()) + kJobResultAllowance, "QuantizeJob's job record");
          if (!room.ok()) return Audited(context, caller, "QuantizeJob", "", room);
        }
        absl::StatusOr<worker::Job> submitted = deps_.pool->Submit(std::move(*job));
        if (!submitted.ok()) return Audited(context, caller, "QuantizeJob", "", submitted.status());
        ToProto(*submitted, response);
        return Audited(context, caller, "QuantizeJob", submitted->id, absl::OkStatus());
      });
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::GetJob(
    grpc::CallbackServerContext* context, const v1::GetJobRequest* request, v1::Job* response) {
  return Offload(context, "GetJob", Role::kRead, [this, request, response](const Principal&) -> absl::Status {
    QUANTD_RETURN_IF_ERROR(RequireId(request->id()));
    QUANTD_ASSIGN_OR_RETURN(worker::Job job, deps_.pool->store().Get(request->id()));
    ToProto(job, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::ListJobs(
    grpc::CallbackServerContext* context, const v1::ListJobsRequest* request,
    v1::ListJobsResponse* response) {
  return Offload(context, "ListJobs", Role::kRead, [this, request, response](const Principal&) -> absl::Status {
    std::vector<worker::JobState> states;
    for (int state : request->states()) {
      QUANTD_ASSIGN_OR_RETURN(worker::JobState s, FromProto(static_cast<v1::JobState>(state)));
      states.push_back(s);
    }
    QUANTD_ASSIGN_OR_RETURN(worker::JobPage page, deps_.pool->store().List(states, PageSize(request->page_size()),
                                                                           request->page_token()));
    // A job echoes its request (up to 64 KiB) and its result (every tuning
    // trial): a full page could pass gRPC's default 4 MiB receive limit.
    // Cut it at the last job that fits, asking the store again for a page of
    // that many so that its token continues from there.
    size_t bytes = 0;
    int fit = 0;
    for (; fit < static_cast<int>(page.jobs.size()); ++fit) {
      v1::Job* proto = response->add_jobs();
      ToProto(page.jobs[static_cast<size_t>(fit)], proto);
      bytes += proto->ByteSizeLong() + 8;  // and its field's tag and length
      if (fit > 0 && bytes > kMaxListBytes) break;
    }
    if (fit < static_cast<int>(page.jobs.size())) {
      response->clear_jobs();
      QUANTD_ASSIGN_OR_RETURN(page, deps_.pool->store().List(states, fit, request->page_token()));
      for (const worker::Job& job : page.jobs) ToProto(job, response->add_jobs());
    }
    response->set_next_page_token(page.next_page_token);
    return absl::OkStatus();
  });
}

grpc::ServerWriteReactor<v1::JobEvent>* QuantizationServiceImpl::WatchJob(
    grpc::CallbackServerContext* context, const v1::WatchJobRequest* request) {
  if (absl::StatusOr<Principal> caller = Admit(context, Role::kRead, "WatchJob"); !caller.ok()) {
    return new RejectedWriteReactor<v1::JobEvent>(caller.status());
  }
  return new WatchReactor(deps_.pool, deps_.executor, *request);
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::CancelJob(
    grpc::CallbackServerContext* context, const v1::CancelJobRequest* request, v1::Job* response) {
  return Offload(
      context, "CancelJob", Role::kSubmit, [this, context, request, response](Principal caller) -> absl::Status {
        if (absl::Status status = RequireId(request->id()); !status.ok()) {
          return Audited(context, caller, "CancelJob", "", status);
        }
        if (caller.role < Role::kAdmin) {
          absl::StatusOr<worker::Job> stored = deps_.pool->store().Get(request->id());
          if (!stored.ok()) return Audited(context, caller, "CancelJob", request->id(), stored.status());
          const absl::Status allowed = OnlyOwnerOrAdmin(
              caller, stored->owner, "CancelJob", absl::StrCat("job ", request->id(), " was submitted by"),
              "its submitter");
          if (!allowed.ok()) return Audited(context, caller, "CancelJob", request->id(), allowed);
        }
        if (request->reason().size() > 1024) {
          return Audited(
              context, caller, "CancelJob", request->id(),
              absl::InvalidArgumentError(absl::StrCat("reason: ", request->reason().size(), " bytes, at most 1024")));
        }
        absl::StatusOr<worker::Job> job = deps_.pool->Cancel(request->id(), request->reason());
        if (job.ok()) ToProto(*job, response);
        return Audited(context, caller, "CancelJob", request->id(), job.status());
      }, request->id());
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::DeleteJob(
    grpc::CallbackServerContext* context, const v1::DeleteJobRequest* request,
    v1::DeleteJobResponse* response) {
  return Offload(context, "DeleteJob", Role::kAdmin, [this, context, request, response](Principal caller) -> absl::Status {
    if (absl::Status status = RequireId(request->id()); !status.ok()) {
      return Audited(context, caller, "DeleteJob", "", status);
    }
    // The version it published goes with it: said in the response, so that
    // pruning old jobs does not take served versions offline unsaid.
    absl::StatusOr<worker::Job> job = deps_.pool->store().Get(request->id());
    absl::Status deleted = deps_.pool->Delete(request->id());
    AuditEffects effects;
    if (deleted.ok()) {  // its model version is served no more, at once
      deps_.models->ForgetResolutions();
      deps_.models->DropUnpublished();
      if (job.ok() && job->result.has_value() && !job->result->model_name.empty() &&
          job->result->model_version > 0 && !job->result->model_version_deleted) {
        response->set_unpublished_model_name(job->result->model_name);
        response->set_unpublished_model_version(job->result->model_version);
        effects.emplace_back("unpublished",
                             absl::StrCat(job->result->model_name, "/", job->result->model_version));
      }
    }
    AuditLine(caller.name, context->peer(), "DeleteJob", request->id(), deleted, effects);
    return deleted;
  }, request->id());
}

namespace {

// An upload for an admitted caller, or RESOURCE_EXHAUSTED when
// --max_concurrent_uploads are in progress.
template <typename Request>
grpc::ServerReadReactor<Request>* StartUpload(const QuantizationServiceImpl::Deps& deps,
                                              grpc::CallbackServerContext* context, v1::BlobInfo* response,
                                              const Principal& caller, absl::string_view method) {
  std::optional<UploadSlots::Slot> slot = deps.upload_slots->TryTake();
  if (!slot.has_value()) {
    return new RejectedReadReactor<Request>(
        Audited(context, caller, method, "", TooManyUploads(method, *deps.upload_slots)));
  }
  return new UploadReactor<Request>(context, deps.blobs, deps.executor, response, caller, method,
                                    UploadLimitsOf(deps), std::move(*slot));
}

}  // namespace

grpc::ServerReadReactor<v1::UploadModelRequest>* QuantizationServiceImpl::UploadModel(
    grpc::CallbackServerContext* context, v1::BlobInfo* response) {
  absl::StatusOr<Principal> caller = Admit(context, Role::kSubmit, "UploadModel");
  if (!caller.ok()) return new RejectedReadReactor<v1::UploadModelRequest>(caller.status());
  return StartUpload<v1::UploadModelRequest>(deps_, context, response, *caller, "UploadModel");
}

grpc::ServerReadReactor<v1::UploadDatasetRequest>* QuantizationServiceImpl::UploadDataset(
    grpc::CallbackServerContext* context, v1::BlobInfo* response) {
  absl::StatusOr<Principal> caller = Admit(context, Role::kSubmit, "UploadDataset");
  if (!caller.ok()) return new RejectedReadReactor<v1::UploadDatasetRequest>(caller.status());
  return StartUpload<v1::UploadDatasetRequest>(deps_, context, response, *caller, "UploadDataset");
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::ListBlobs(grpc::CallbackServerContext* context,
                                                             const v1::ListBlobsRequest* request,
                                                             v1::ListBlobsResponse* response) {
  return Offload(context, "ListBlobs", Role::kRead, [this, request, response](const Principal&) -> absl::Status {
    // A token is a blob id (64 hex digits), as ListJobs's is a number: any
    // other one was not issued here and once listed nothing, with OK.
    const std::string& token = request->page_token();
    if (!token.empty() && !engine::IsSha256Hex(token)) {
      return absl::InvalidArgumentError(
          absl::StrCat("page_token: \"", token.substr(0, 80), token.size() > 80 ? "...\"" : "\"",
                       " is not a token this server issued"));
    }
    QUANTD_ASSIGN_OR_RETURN(std::vector<worker::StoredBlob> blobs, deps_.blobs->List());
    const size_t page_size =
        request->page_size() == 0 ? 100 : std::min<size_t>(request->page_size(), kMaxPageSize);
    // Blobs are listed by id: the token is the last id of the previous page.
    auto it = std::upper_bound(blobs.begin(), blobs.end(), request->page_token(),
                               [](const std::string& token, const worker::StoredBlob& b) { return token < b.id; });
    for (; it != blobs.end() && static_cast<size_t>(response->blobs_size()) < page_size; ++it) {
      QUANTD_ASSIGN_OR_RETURN(std::vector<std::string> users, deps_.pool->store().ActiveJobsUsing(it->id));
      ToProto(*it, users, response->add_blobs());
    }
    if (it != blobs.end() && response->blobs_size() > 0) {
      response->set_next_page_token(response->blobs(response->blobs_size() - 1).blob_id());
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::GetBlob(grpc::CallbackServerContext* context,
                                                           const v1::GetBlobRequest* request, v1::BlobInfo* response) {
  return Offload(context, "GetBlob", Role::kRead, [this, request, response](const Principal&) -> absl::Status {
    QUANTD_ASSIGN_OR_RETURN(worker::StoredBlob blob, deps_.blobs->Stat(request->id(), "id"));
    QUANTD_ASSIGN_OR_RETURN(std::vector<std::string> users, deps_.pool->store().ActiveJobsUsing(blob.id));
    ToProto(blob, users, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::DeleteBlob(grpc::CallbackServerContext* context,
                                                              const v1::DeleteBlobRequest* request,
                                                              v1::DeleteBlobResponse*) {
  return Offload(context, "DeleteBlob", Role::kAdmin, [this, context, request](Principal caller) -> absl::Status {
    auto audited = [&](const absl::Status& status) {
      return Audited(context, caller, "DeleteBlob", request->id(), status);
    };
    absl::StatusOr<worker::StoredBlob> blob = deps_.blobs->Stat(request->id(), "id");
    if (!blob.ok()) return audited(blob.status());
    // Checked and removed with no submit between (BlobStore::Use).
    std::vector<std::string> users;
    absl::StatusOr<bool> removed = deps_.blobs->RemoveIf(blob->id, [&]() -> absl::StatusOr<bool> {
      QUANTD_ASSIGN_OR_RETURN(users, deps_.pool->store().ActiveJobsUsing(blob->id));
      return users.empty();
    });
    if (!removed.ok()) return audited(removed.status());
    if (!*removed) {
      return audited(absl::FailedPreconditionError(absl::StrCat("blob ", blob->id, " is used by ",
                                                                absl::StrJoin(users, ", "),
                                                                "; wait for (or cancel) those queued or running, and "
                                                                "unpublish the model versions of those that "
                                                                "published it as their source model")));
    }
    return audited(absl::OkStatus());
  }, request->id());
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::GetArtifact(
    grpc::CallbackServerContext* context, const v1::GetArtifactRequest* request,
    v1::Artifact* response) {
  return Offload(context, "GetArtifact", Role::kRead, [this, request, response](const Principal&) -> absl::Status {
    QUANTD_ASSIGN_OR_RETURN(worker::Job job, ArtifactJob(deps_.pool->store(), request->id()));
    ArtifactToProto(job, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::ListArtifacts(
    grpc::CallbackServerContext* context, const v1::ListArtifactsRequest* request,
    v1::ListArtifactsResponse* response) {
  return Offload(context, "ListArtifacts", Role::kRead, [this, request, response](const Principal&) -> absl::Status {
    // A job that does not exist is NOT_FOUND, not a job without artifacts.
    std::optional<worker::Job> asked;
    if (!request->job_id().empty()) {
      QUANTD_ASSIGN_OR_RETURN(asked, deps_.pool->store().Get(request->job_id()));
    }
    QUANTD_ASSIGN_OR_RETURN(worker::JobPage page,
                            deps_.pool->store().ListArtifactJobs(request->job_id(), PageSize(request->page_size()),
                                                                 request->page_token()));
    for (const worker::Job& job : page.jobs) {
      // Jobs that made the same bytes share one artifact, listed by the
      // first of them; asked for by another job, it is that job's (its id,
      // time and accuracy), not the first's.
      const bool as_asked = asked.has_value() && asked->result.has_value() && job.result.has_value() &&
                            asked->result->artifact_id == job.result->artifact_id;
      ArtifactToProto(as_asked ? *asked : job, response->add_artifacts());
    }
    response->set_next_page_token(page.next_page_token);
    return absl::OkStatus();
  });
}

grpc::ServerWriteReactor<v1::DownloadArtifactResponse>*
QuantizationServiceImpl::DownloadArtifact(grpc::CallbackServerContext* context,
                                          const v1::DownloadArtifactRequest* request) {
  if (absl::StatusOr<Principal> caller = Admit(context, Role::kRead, "DownloadArtifact"); !caller.ok()) {
    return new RejectedWriteReactor<v1::DownloadArtifactResponse>(caller.status());
  }
  auto lookup = [this, id = request->id()]() -> absl::StatusOr<v1::Artifact> {
    QUANTD_ASSIGN_OR_RETURN(worker::Job job, ArtifactJob(deps_.pool->store(), id));
    v1::Artifact artifact;
    ArtifactToProto(job, &artifact);
    if (!deps_.artifacts->Contains(artifact.sha256())) {
      // The artifact exists (it is listed): NOT_FOUND would say it does not.
      // The same code and words as serving its version.
      return absl::FailedPreconditionError(absl::StrCat("artifact ", artifact.id(), " is gone from the artifact store (",
                                                        artifact.sha256(), "); rerunning its job stores it again"));
    }
    return artifact;
  };
  const uint32_t chunk =
      request->chunk_size() == 0 ? kDefaultChunk : std::clamp(request->chunk_size(), kMinChunk, kMaxChunk);
  return new DownloadReactor(deps_.executor, deps_.artifacts, std::move(lookup), chunk);
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::ListModels(grpc::CallbackServerContext* context,
                                                              const v1::ListModelsRequest* request,
                                                              v1::ListModelsResponse* response) {
  return Offload(context, "ListModels", Role::kRead, [this, request, response](const Principal&) -> absl::Status {
    if (!request->name().empty()) QUANTD_RETURN_IF_ERROR(worker::ValidateModelName(request->name(), "name"));
    QUANTD_ASSIGN_OR_RETURN(std::vector<worker::ModelVersion> versions,
                            deps_.pool->store().ListModelVersions(request->name()));
    const auto evaluated = worker::NewestSucceededEvaluations(deps_.pool->store());
    for (const worker::ModelVersion& v : versions) {
      absl::StatusOr<worker::Job> job = deps_.pool->store().Get(v.job_id);
      const auto evaluation = evaluated.find({v.name, v.version});
      ToProto(v, job.ok() ? &*job : nullptr, deps_.models->IsLoaded(v.name, v.version, false),
              evaluation != evaluated.end() ? &evaluation->second : nullptr, response->add_versions());
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::DeleteModelVersion(grpc::CallbackServerContext* context,
                                                                      const v1::DeleteModelVersionRequest* request,
                                                                      v1::DeleteModelVersionResponse*) {
  return Offload(
      context, "DeleteModelVersion", Role::kAdmin, [this, context, request](Principal caller) -> absl::Status {
        const std::string target = absl::StrCat(request->name(), "/", request->version());
        if (absl::Status status = worker::ValidateModelName(request->name(), "name"); !status.ok()) {
          return Audited(context, caller, "DeleteModelVersion", target, status);
        }
        if (request->version() == 0 || request->version() > static_cast<uint64_t>(INT64_MAX)) {
          return Audited(context, caller, "DeleteModelVersion", target,
                         absl::InvalidArgumentError(
                             absl::StrCat("version: a version number (1, 2, ...), not ", request->version())));
        }
        const absl::Status deleted =
            deps_.pool->store().DeleteModelVersion(request->name(), static_cast<int64_t>(request->version()));
        if (deleted.ok()) {  // served no more, at once
          deps_.models->ForgetResolutions();
          deps_.models->DropUnpublished();
        }
        return Audited(context, caller, "DeleteModelVersion", target, deleted);
      },
      absl::StrCat(request->name(), "/", request->version()));
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::Evaluate(grpc::CallbackServerContext* context,
                                                            const v1::EvaluateRequest* request,
                                                            v1::Evaluation* response) {
  return Offload(context, "Evaluate", Role::kSubmit,
                 [this, context, request, response](Principal caller) -> absl::Status {
                   // It takes compute like a job does: the submit role.
                   // The dataset blob may not go before the evaluation has opened it.
                   const worker::BlobStore::Use blobs_in_use(*deps_.blobs);
                   absl::StatusOr<worker::EvaluationSpec> spec = EvaluationSpecFromRequest(*request, resolver_);
                   if (!spec.ok()) return Audited(context, caller, "Evaluate", request->model_name(), spec.status());
                   spec->owner = caller.name;
                   absl::StatusOr<worker::Evaluation> started = deps_.evaluator->Start(*std::move(spec));
                   if (!started.ok())
                     return Audited(context, caller, "Evaluate", request->model_name(), started.status());
                   ToProto(*started, response);
                   return Audited(context, caller, "Evaluate", started->id, absl::OkStatus());
                 },
                 request->model_name());
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::GetEvaluation(grpc::CallbackServerContext* context,
                                                                 const v1::GetEvaluationRequest* request,
                                                                 v1::Evaluation* response) {
  return Offload(context, "GetEvaluation", Role::kRead, [this, request, response](const Principal&) -> absl::Status {
    QUANTD_RETURN_IF_ERROR(RequireId(request->id()));
    QUANTD_ASSIGN_OR_RETURN(worker::Evaluation evaluation, deps_.evaluator->Get(request->id()));
    ToProto(evaluation, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::CancelEvaluation(grpc::CallbackServerContext* context,
                                                                    const v1::CancelEvaluationRequest* request,
                                                                    v1::Evaluation* response) {
  return Offload(
      context, "CancelEvaluation", Role::kSubmit,
      [this, context, request, response](Principal caller) -> absl::Status {
        auto audited = [&](const absl::Status& status) {
          return Audited(context, caller, "CancelEvaluation", request->id(), status);
        };
        if (absl::Status status = RequireId(request->id()); !status.ok()) return audited(status);
        if (request->reason().size() > 1024) {
          return audited(absl::InvalidArgumentError(absl::StrCat("reason: ", request->reason().size(),
                                                                 " bytes, at most 1024")));
        }
        if (caller.role < Role::kAdmin) {
          absl::StatusOr<worker::Evaluation> stored = deps_.evaluator->Get(request->id());
          if (!stored.ok()) return audited(stored.status());
          const absl::Status allowed =
              OnlyOwnerOrAdmin(caller, stored->spec.owner, "CancelEvaluation",
                               absl::StrCat("evaluation ", request->id(), " was started by"), "who started it");
          if (!allowed.ok()) return audited(allowed);
        }
        absl::StatusOr<worker::Evaluation> evaluation = deps_.evaluator->Cancel(request->id(), request->reason());
        if (evaluation.ok()) ToProto(*evaluation, response);
        return audited(evaluation.status());
      }, request->id());
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::GetServerInfo(grpc::CallbackServerContext* context,
                                                                 const v1::GetServerInfoRequest*,
                                                                 v1::ServerInfo* response) {
  if (absl::StatusOr<Principal> caller = Admit(context, Role::kRead, "GetServerInfo"); !caller.ok()) {
    return FinishUnary(context, caller.status());
  }
  *response = deps_.server_info;
  return FinishUnary(context, absl::OkStatus());
}

}  // namespace quantd
