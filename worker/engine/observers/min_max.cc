// MinMaxObserver, MovingAverageMinMaxObserver and PerChannelMinMaxObserver:
// running extrema (or their exponential moving average) of what they see.

#include <ATen/ATen.h>

#include <limits>
#include <utility>

#include "worker/engine/observers/observer.h"

namespace quantd::engine {
namespace {

class MinMaxObserver : public Observer {
 public:
  MinMaxObserver(const ObserverSpec& spec, bool moving_average)
      : spec_(spec),
        moving_average_(moving_average),
        min_val_(at::scalar_tensor(std::numeric_limits<float>::infinity(), at::kFloat)),
        max_val_(at::scalar_tensor(-std::numeric_limits<float>::infinity(), at::kFloat)) {}

  void ObserveChunk(const at::Tensor& chunk) override {
    if (chunk.numel() == 0) return;
    auto [mn, mx] = at::aminmax(chunk.detach().to(at::kFloat));
    cur_min_ = cur_min_.defined() ? at::min(cur_min_, mn) : mn;
    cur_max_ = cur_max_.defined() ? at::max(cur_max_, mx) : mx;
  }

  void EndBatch() override {
    if (!cur_min_.defined()) return;
    const at::Tensor cur_min = std::exchange(cur_min_, at::Tensor());
    const at::Tensor cur_max = std::exchange(cur_max_, at::Tensor());
    if (!moving_average_) {
      min_val_ = at::min(cur_min, min_val_);
      max_val_ = at::max(cur_max, max_val_);
    } else if (!seen_) {
      min_val_ = cur_min;
      max_val_ = cur_max;
    } else {
      min_val_ = min_val_ + spec_.averaging_constant * (cur_min - min_val_);
      max_val_ = max_val_ + spec_.averaging_constant * (cur_max - max_val_);
    }
    seen_ = true;
  }

  absl::StatusOr<QParams> Compute() const override {
    if (!seen_) return absl::FailedPreconditionError("observer saw no data");
    return CalculateQParams(spec_, min_val_, max_val_);
  }

  std::pair<float, float> ObservedRange() const override {
    return {min_val_.item<float>(), max_val_.item<float>()};
  }

 private:
  ObserverSpec spec_;
  bool moving_average_;
  bool seen_ = false;
  at::Tensor min_val_, max_val_;
  at::Tensor cur_min_, cur_max_;  // the open batch's extrema
};

// Per output channel (axis 0), as used for weights.
class PerChannelMinMaxObserver : public Observer {
 public:
  explicit PerChannelMinMaxObserver(const ObserverSpec& spec) : spec_(spec) {}

  void ObserveChunk(const at::Tensor& chunk) override { chunks_.push_back(chunk); }

  void EndBatch() override {
    if (chunks_.empty()) return;
    const std::vector<at::Tensor> chunks = std::exchange(chunks_, {});
    at::Tensor x_in = chunks.size() == 1 ? chunks[0] : at::cat(chunks, 0);
    if (x_in.numel() == 0) return;
    at::Tensor y = at::flatten(x_in.detach().to(at::kFloat), 1);
    auto [cur_min, cur_max] = at::aminmax(y, 1);
    if (!min_val_.defined()) {
      min_val_ = cur_min;
      max_val_ = cur_max;
    } else {
      min_val_ = at::min(cur_min, min_val_);
      max_val_ = at::max(cur_max, max_val_);
    }
  }

  absl::StatusOr<QParams> Compute() const override {
    if (!min_val_.defined()) return absl::FailedPreconditionError("observer saw no data");
    return CalculateQParams(spec_, min_val_, max_val_);
  }

  std::pair<float, float> ObservedRange() const override {
    return {min_val_.min().item<float>(), max_val_.max().item<float>()};
  }

 private:
  ObserverSpec spec_;
  at::Tensor min_val_, max_val_;
  std::vector<at::Tensor> chunks_;  // the open batch
};

}  // namespace

std::unique_ptr<Observer> NewMinMaxObserver(const ObserverSpec& spec) {
  return std::make_unique<MinMaxObserver>(spec, /*moving_average=*/false);
}

std::unique_ptr<Observer> NewMovingAverageMinMaxObserver(const ObserverSpec& spec) {
  return std::make_unique<MinMaxObserver>(spec, /*moving_average=*/true);
}

std::unique_ptr<Observer> NewPerChannelMinMaxObserver(const ObserverSpec& spec) {
  return std::make_unique<PerChannelMinMaxObserver>(spec);
}

}  // namespace quantd::engine
