#ifndef QUANTD_SERVER_UPLOAD_SLOTS_H_
#define QUANTD_SERVER_UPLOAD_SLOTS_H_

#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace quantd {

// Caps the uploads one quantd has in progress (--max_concurrent_uploads).
// Each holds a temporary file, a quota reservation and up to one 8 MiB
// message: thousands of open streams would run the process out of file
// descriptors or memory before --max_data_bytes or the idle timeout acts.
class UploadSlots {
 public:
  // Held by one upload for its lifetime; gives its place back when destroyed.
  class Slot {
   public:
    Slot(Slot&& other) noexcept : owner_(other.owner_) { other.owner_ = nullptr; }
    Slot& operator=(Slot&&) = delete;
    Slot(const Slot&) = delete;
    ~Slot();

   private:
    friend class UploadSlots;
    explicit Slot(UploadSlots* owner) : owner_(owner) {}
    UploadSlots* owner_;
  };

  // `capacity` 0: no cap.
  explicit UploadSlots(int capacity) : capacity_(capacity) {}

  // A slot, or none when `capacity` uploads are in progress.
  std::optional<Slot> TryTake() ABSL_LOCKS_EXCLUDED(mu_);

  int capacity() const { return capacity_; }
  int in_use() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Release() ABSL_LOCKS_EXCLUDED(mu_);

  const int capacity_;
  mutable absl::Mutex mu_;
  int in_use_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace quantd

#endif  // QUANTD_SERVER_UPLOAD_SLOTS_H_
