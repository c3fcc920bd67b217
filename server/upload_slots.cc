#include "server/upload_slots.h"

namespace quantd {

UploadSlots::Slot::~Slot() {
  if (owner_ != nullptr) owner_->Release();
}

std::optional<UploadSlots::Slot> UploadSlots::TryTake() {
  absl::MutexLock lock(&mu_);
  if (capacity_ > 0 && in_use_ >= capacity_) return std::nullopt;
  ++in_use_;
  return Slot(this);
}

int UploadSlots::in_use() const {
  absl::MutexLock lock(&mu_);
  return in_use_;
}

void UploadSlots::Release() {
  absl::MutexLock lock(&mu_);
  --in_use_;
}

}  // namespace quantd
