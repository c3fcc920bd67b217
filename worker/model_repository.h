#ifndef QUANTD_WORKER_MODEL_REPOSITORY_H_
#define QUANTD_WORKER_MODEL_REPOSITORY_H_

// Published model versions, loaded to serve. A name addresses the int8
// artifact of each version; "<name>.fp32" addresses the FP32 model the same
// version was quantized from (for side-by-side comparison). Version 0 means
// the newest. Loaded models are cached within a byte budget, least recently
// used out, and warmed up with one forward pass when loaded.
//
// The job store stays the source of truth: a lookup resolves the version
// there, remembering the answer for `resolve_ttl` (1 s), so a version
// published or deleted by another process is seen within that; one published
// or deleted through this process is seen at once (ForgetResolutions). The
// loaded model is cached as such (a version never changes). Resolutions in
// use are read again before they expire (RefreshResolutions), so a model in
// steady use is always found without the store.

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "worker/artifact_store.h"
#include "worker/clock.h"
#include "worker/dynamic_batcher.h"
#include "worker/engine/data/dataset_spec.h"
#include "worker/engine/servable_model.h"
#include "worker/input_locator.h"
#include "worker/job_store.h"

namespace quantd::worker {

struct ServedModelInfo {
  std::string name;       // as addressed: "resnet8" or "resnet8.fp32"
  std::string base_name;  // "resnet8"
  int64_t version = 0;
  bool fp32 = false;
  std::string job_id;
  std::string artifact_id;
  std::vector<int64_t> input_shape;   // one sample as calibrated, e.g. {3, 32, 32}
  std::vector<int64_t> output_shape;  // one sample's output, e.g. {10} (from the warm-up)
  engine::Preprocessing preprocessing;  // applied to input pixels, as in calibration
  std::vector<std::string> labels;    // class names when known (CIFAR-10), else empty
  std::string kernel_engine;          // what runs it here: "onednn", "qnnpack", "fp32"
  int64_t cost_bytes = 0;             // what it counts against the cache budget, copies included

  // Values in one input sample (the product of input_shape).
  int64_t sample_values() const {
    int64_t n = 1;
    for (int64_t d : input_shape) n *= d;
    return n;
  }
};

class LoadedModel : public BatchableModel {
 public:
  LoadedModel(ServedModelInfo info, std::unique_ptr<engine::ServableModel> model)
      : info_(std::move(info)), model_(std::move(model)) {}
  const ServedModelInfo& info() const { return info_; }
  // `pixels`: `batch` samples of info().input_shape, before preprocessing
  // (applied here, in place).
  absl::StatusOr<engine::ServingOutput> Run(std::vector<float> pixels, int64_t batch) const override;
  // int8 kernels give each sample the same integers at any batch size; FP32
  // ones do not (1e-5 apart), so an FP32 model's requests run alone.
  bool coalesces() const override { return !info_.fp32; }

 private:
  friend class ModelRepository;
  ServedModelInfo info_;
  std::unique_ptr<engine::ServableModel> model_;
};

class ModelRepository {
 public:
  struct Options {
    int64_t cache_bytes = int64_t{1} << 30;
    // An artifact whose own kernel engine is not exact on this CPU runs on
    // one that is (qnnpack) instead of being refused.
    bool allow_kernel_reroute = true;
    // Batch sizes that may get a copy of an int8 model of their own
    // (ServableModel::LoadInt8Artifact), at most an eighth of cache_bytes
    // per model. A model counts against cache_bytes with its copies (and
    // the artifact's bytes it keeps to make them).
    int batch_size_copies = engine::kDefaultBatchSizeCopies;
    // How long a version resolution (name, version or newest -> job) is reused.
    absl::Duration resolve_ttl = absl::Seconds(1);
    Clock* clock = Clock::Monotonic();  // intervals only
    // A thread ("quantd-resolve") that calls RefreshResolutions every
    // resolve_ttl / 2 (on real time). Off in tests, which call it.
    bool refresh_in_background = false;
    // Resolves a version's FP32 source (its job's model reference) to this
    // process's file; null: the job names an absolute path (tests).
    const InputLocator* inputs = nullptr;
  };
  ModelRepository(JobStore* jobs, ArtifactStore* artifacts, const Options& options);
  ~ModelRepository();
  ModelRepository(const ModelRepository&) = delete;
  ModelRepository& operator=(const ModelRepository&) = delete;

  // Splits "<name>.fp32"; INVALID_ARGUMENT naming `field` for a bad name.
  static absl::Status ParseName(const std::string& name, const std::string& field, std::string* base, bool* fp32);

  // The addressed version, loaded (and cached). NOT_FOUND for an unknown
  // name or version; FAILED_PRECONDITION when it cannot run here. A caller
  // that waits for another's load of the same version asks `gone` (if set)
  // every kGoneCheckInterval and stops waiting with its error (the caller
  // cancelled, its deadline passed): a slow load does not keep the threads
  // of callers that have left. `resolved_version` (optional) gets the
  // version number once the address resolves, so a load that fails after
  // that can be counted against the published version.
  using Gone = std::function<absl::Status()>;
  static constexpr absl::Duration kGoneCheckInterval = absl::Milliseconds(50);
  absl::StatusOr<std::shared_ptr<const LoadedModel>> Load(const std::string& name, int64_t version,
                                                          const Gone& gone = nullptr,
                                                          int64_t* resolved_version = nullptr);
  // The addressed version if it is loaded and its resolution is fresh, with
  // no store or disk access (so callers may use it on threads that must not
  // block); nullptr otherwise.
  std::shared_ptr<const LoadedModel> FindLoaded(const std::string& name, int64_t version);
  // NOT_FOUND, as Load answered it, when Load found no such name or version
  // within the last resolve_ttl (no store access, as FindLoaded): a request
  // for it is refused at once instead of queueing for a load thread, where,
  // under load, it was told RESOURCE_EXHAUSTED ("retry") for a typo. OK
  // when not known to be absent.
  absl::Status KnownAbsent(const std::string& name, int64_t version);
  // Whether that version is loaded now (no loading, no store access).
  bool IsLoaded(const std::string& base_name, int64_t version, bool fp32) const;
  // Drops remembered resolutions: a version was published or deleted here.
  void ForgetResolutions();
  // Reads again from the store each resolution used within the last
  // resolve_ttl and resolved at least half of it ago (a version deleted
  // meanwhile loses its resolution; a newest one moves on). Without it a
  // model in steady use dropped out of FindLoaded once per resolve_ttl, and
  // its requests then went to the load threads just to read the store,
  // where they could queue behind another model's long load. Reads the store
  // outside the lock.
  void RefreshResolutions();
  // Drops loaded models whose version is no longer published (deleted here or
  // by another replica), freeing their share of the byte budget. Reads the
  // job store; never under a lock a request path holds. The server calls it
  // after its own deletes and before each /metrics scrape.
  void DropUnpublished();

  int64_t cached_bytes() const;
  int cached_models() const;
  // Callers waiting for another caller's load of the same version.
  int waiting_for_load() const;

 private:
  using Key = std::tuple<std::string, int64_t, bool>;  // base name, version, fp32
  absl::StatusOr<std::unique_ptr<LoadedModel>> LoadUncached(const std::string& name, bool fp32,
                                                           const ModelVersion& version);

  JobStore* const jobs_;
  ArtifactStore* const artifacts_;
  const Options options_;
  mutable absl::Mutex mu_;
  // Most recently used first.
  std::list<std::pair<Key, std::shared_ptr<const LoadedModel>>> lru_ ABSL_GUARDED_BY(mu_);
  using CacheIndex = std::map<Key, decltype(lru_)::iterator>;
  CacheIndex cached_ ABSL_GUARDED_BY(mu_);
  // Takes a loaded model out of the cache and its bytes out of the budget;
  // returned so that its last reference drops after mu_ is released.
  std::shared_ptr<const LoadedModel> UncacheLocked(CacheIndex::iterator entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Loads in progress, by attempt number; the last failed attempt per key.
  // Callers that waited for an attempt get its failure instead of trying
  // again one after another (a corrupt artifact fails once for them all).
  std::map<Key, uint64_t> loading_ ABSL_GUARDED_BY(mu_);
  std::map<Key, std::pair<uint64_t, absl::Status>> failed_ ABSL_GUARDED_BY(mu_);
  uint64_t attempts_ ABSL_GUARDED_BY(mu_) = 0;
  // Counts ForgetResolutions calls: a store answer read across one is not kept.
  uint64_t resolution_generation_ ABSL_GUARDED_BY(mu_) = 0;
  int waiting_for_load_ ABSL_GUARDED_BY(mu_) = 0;
  struct Resolution {
    ModelVersion version;
    absl::Time resolved;  // when read from the store
    absl::Time used;      // when a caller last asked for it
  };
  // (base name, version as asked, 0 = newest) -> its resolution.
  std::map<std::pair<std::string, int64_t>, Resolution> resolved_ ABSL_GUARDED_BY(mu_);
  // (name as asked, version as asked) -> when the store said it has none,
  // and what Load answered. Bounded: cleared when full.
  static constexpr size_t kMaxAbsent = 1024;
  std::map<std::pair<std::string, int64_t>, std::pair<absl::Time, absl::Status>> absent_ ABSL_GUARDED_BY(mu_);
  int64_t cached_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Models the budget evicted that someone still holds (an evaluation's
  // int8 model, evicted by its FP32 twin's load): a Load puts such a model
  // back in the cache instead of loading a second copy beside it.
  std::map<Key, std::weak_ptr<const LoadedModel>> evicted_in_use_ ABSL_GUARDED_BY(mu_);
  // Caches `model` under `key`, evicting the least recently used beyond the
  // budget into `evicted` (released by the caller after mu_).
  void CacheLocked(const Key& key, std::shared_ptr<const LoadedModel> model,
                   std::vector<std::shared_ptr<const LoadedModel>>* evicted) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex refresher_mu_;
  bool stopping_ ABSL_GUARDED_BY(refresher_mu_) = false;
  std::thread refresher_;
};

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_MODEL_REPOSITORY_H_
