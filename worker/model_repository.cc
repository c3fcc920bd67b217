#include "worker/model_repository.h"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/base/sha256.h"
#include "worker/engine/base/thread_name.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"
#include "worker/engine/quantizer.h"

namespace quantd::worker {
namespace {

constexpr char kFp32Suffix[] = ".fp32";

const std::vector<std::string>& Cifar10Labels() {
  static const auto* labels = new std::vector<std::string>{
      "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};
  return *labels;
}

}  // namespace

absl::StatusOr<engine::ServingOutput> LoadedModel::Run(std::vector<float> pixels, int64_t batch) const {
  const std::vector<int64_t>& sample = info_.input_shape;
  if (sample.size() != 3) return absl::InternalError(absl::StrCat(info_.name, " has no [C, H, W] input shape"));
  const int64_t channels = sample[0];
  const int64_t plane = sample[1] * sample[2];
  if (static_cast<int64_t>(pixels.size()) != batch * channels * plane) {
    return absl::InvalidArgumentError(absl::StrCat("input: ", pixels.size(), " values for ", batch, " samples of ",
                                                   channels * plane, " each"));
  }
  const engine::Preprocessing& p = info_.preprocessing;
  const bool identity = p.scale == 1.0 && p.mean.empty() && p.std.empty();
  if (!identity) {
    for (int64_t n = 0; n < batch; ++n) {
      for (int64_t c = 0; c < channels; ++c) {
        const float mean = p.mean.empty() ? 0.0f : static_cast<float>(p.mean[c % p.mean.size()]);
        const float stdev = p.std.empty() ? 1.0f : static_cast<float>(p.std[c % p.std.size()]);
        const float scale = static_cast<float>(p.scale);
        float* x = pixels.data() + (n * channels + c) * plane;
        for (int64_t i = 0; i < plane; ++i) x[i] = (x[i] * scale - mean) / stdev;
      }
    }
  }
  return model_->Run(pixels, {batch, channels, sample[1], sample[2]});
}

ModelRepository::ModelRepository(JobStore* jobs, ArtifactStore* artifacts, const Options& options)
    : jobs_(jobs), artifacts_(artifacts), options_(options) {
  if (!options_.refresh_in_background) return;
  refresher_ = std::thread([this] {
    NameThisThread("quantd-resolve");
    const absl::Duration interval = std::max(options_.resolve_ttl / 2, absl::Milliseconds(1));
    while (true) {
      {
        absl::MutexLock lock(&refresher_mu_);
        auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(refresher_mu_) { return stopping_; };
        if (refresher_mu_.AwaitWithTimeout(absl::Condition(&stop), interval)) return;
      }
      RefreshResolutions();
    }
  });
}

ModelRepository::~ModelRepository() {
  {
    absl::MutexLock lock(&refresher_mu_);
    stopping_ = true;
  }
  if (refresher_.joinable()) refresher_.join();
}

absl::Status ModelRepository::ParseName(const std::string& name, const std::string& field, std::string* base,
                                        bool* fp32) {
  *fp32 = absl::EndsWith(name, kFp32Suffix);
  *base = *fp32 ? name.substr(0, name.size() - (sizeof(kFp32Suffix) - 1)) : name;
  return ValidateModelName(*base, field);
}

bool ModelRepository::IsLoaded(const std::string& base_name, int64_t version, bool fp32) const {
  absl::MutexLock lock(&mu_);
  return cached_.count(Key{base_name, version, fp32}) > 0;
}

int64_t ModelRepository::cached_bytes() const {
  absl::MutexLock lock(&mu_);
  return cached_bytes_;
}

int ModelRepository::cached_models() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(cached_.size());
}

int ModelRepository::waiting_for_load() const {
  absl::MutexLock lock(&mu_);
  return waiting_for_load_;
}

void ModelRepository::RefreshResolutions() {
  const absl::Time now = options_.clock->Now();
  std::vector<std::pair<std::string, int64_t>> due;
  uint64_t generation = 0;
  {
    absl::MutexLock lock(&mu_);
    generation = resolution_generation_;
    for (const auto& [asked, resolution] : resolved_) {
      if (now - resolution.used <= options_.resolve_ttl && now - resolution.resolved >= options_.resolve_ttl / 2) {
        due.push_back(asked);
      }
    }
  }
  for (const auto& asked : due) {
    absl::StatusOr<ModelVersion> version = jobs_->GetModelVersion(asked.first, asked.second);
    absl::MutexLock lock(&mu_);
    // Forgotten meanwhile (a publish or delete here): callers resolve afresh.
    if (generation != resolution_generation_) return;
    auto it = resolved_.find(asked);
    if (it == resolved_.end()) continue;
    if (version.ok()) {
      it->second.version = *std::move(version);
      it->second.resolved = now;  // as of before the read: never fresher than it is
    } else if (absl::IsNotFound(version.status())) {
      resolved_.erase(it);
    }
    // Any other error (a busy store): the resolution ages out as before.
  }
}

void ModelRepository::ForgetResolutions() {
  absl::MutexLock lock(&mu_);
  resolved_.clear();
  absent_.clear();
  ++resolution_generation_;
}

void ModelRepository::DropUnpublished() {
  std::vector<Key> keys;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [key, unused] : cached_) keys.push_back(key);
  }
  std::vector<Key> gone;
  for (const Key& key : keys) {
    absl::StatusOr<ModelVersion> version = jobs_->GetModelVersion(std::get<0>(key), std::get<1>(key));
    if (!version.ok() && absl::IsNotFound(version.status())) gone.push_back(key);
  }
  // Released after mu_, as in Load.
  std::vector<std::shared_ptr<const LoadedModel>> dropped;
  absl::MutexLock lock(&mu_);
  for (const Key& key : gone) {
    if (auto it = cached_.find(key); it != cached_.end()) dropped.push_back(UncacheLocked(it));
  }
}

std::shared_ptr<const LoadedModel> ModelRepository::UncacheLocked(CacheIndex::iterator entry) {
  std::shared_ptr<const LoadedModel> model = std::move(entry->second->second);
  cached_bytes_ -= model->info().cost_bytes;
  lru_.erase(entry->second);
  cached_.erase(entry);
  return model;
}

absl::Status ModelRepository::KnownAbsent(const std::string& name, int64_t version) {
  const absl::Time now = options_.clock->Now();
  absl::MutexLock lock(&mu_);
  auto it = absent_.find({name, version});
  if (it == absent_.end() || now - it->second.first > options_.resolve_ttl) return absl::OkStatus();
  return it->second.second;
}

std::shared_ptr<const LoadedModel> ModelRepository::FindLoaded(const std::string& name, int64_t version) {
  std::string base;
  bool fp32 = false;
  if (!ParseName(name, "model_name", &base, &fp32).ok()) return nullptr;
  const absl::Time now = options_.clock->Now();
  absl::MutexLock lock(&mu_);
  auto resolution = resolved_.find({base, version});
  if (resolution == resolved_.end() || now - resolution->second.resolved > options_.resolve_ttl) return nullptr;
  resolution->second.used = now;
  auto it = cached_.find(Key{base, resolution->second.version.version, fp32});
  if (it == cached_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->second;
}

absl::StatusOr<std::shared_ptr<const LoadedModel>> ModelRepository::Load(const std::string& name, int64_t version,
                                                                          const Gone& gone,
                                                                          int64_t* resolved_version) {
  std::string base;
  bool fp32 = false;
  QUANTD_RETURN_IF_ERROR(ParseName(name, "model_name", &base, &fp32));
  const absl::Time now = options_.clock->Now();
  std::optional<ModelVersion> remembered;
  uint64_t generation = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = resolved_.find({base, version});
    if (it != resolved_.end() && now - it->second.resolved <= options_.resolve_ttl) {
      remembered = it->second.version;
      it->second.used = now;
    }
    generation = resolution_generation_;
  }
  ModelVersion resolved;
  if (remembered.has_value()) {
    resolved = *std::move(remembered);
  } else {
    absl::StatusOr<ModelVersion> found = jobs_->GetModelVersion(base, version);
    if (!found.ok()) {
      // The store names the published model; the request named its FP32 source.
      const absl::Status failed =
          !fp32 ? found.status()
                : absl::Status(found.status().code(),
                               absl::StrCat("model \"", name, "\" (the FP32 source of a version of \"", base,
                                            "\"): ", found.status().message()));
      if (absl::IsNotFound(failed)) {
        absl::MutexLock lock(&mu_);
        if (generation == resolution_generation_) {
          if (absent_.size() >= kMaxAbsent) absent_.clear();
          absent_[{name, version}] = {now, failed};
        }
      }
      return failed;
    }
    resolved = *std::move(found);
    absl::MutexLock lock(&mu_);
    // Not if the versions changed while the store was read: this answer may
    // predate the change, which is to be seen at once.
    if (generation == resolution_generation_) resolved_[{base, version}] = Resolution{resolved, now, now};
  }
  if (resolved_version != nullptr) *resolved_version = resolved.version;
  const Key key{base, resolved.version, fp32};
  // Released after mu_, as below.
  std::vector<std::shared_ptr<const LoadedModel>> revived_evictions;
  uint64_t attempt = 0;
  uint64_t load_generation = 0;
  {
    absl::MutexLock lock(&mu_);
    // One load per version: later callers wait for the first one's, and
    // share its outcome.
    std::optional<uint64_t> awaited;
    if (auto it = loading_.find(key); it != loading_.end()) {
      awaited = it->second;
      ++waiting_for_load_;
      std::pair<ModelRepository*, const Key*> waiting(this, &key);
      const absl::Condition loaded(
          +[](std::pair<ModelRepository*, const Key*>* arg) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return arg->first->loading_.count(*arg->second) == 0;
          },
          &waiting);
      if (gone == nullptr) {
        mu_.Await(loaded);
      } else {
        while (!mu_.AwaitWithTimeout(loaded, kGoneCheckInterval)) {
          // Asked unlocked: it may make a system call (a REST client's
          // socket), and every warm request takes this lock.
          mu_.Unlock();
          absl::Status left = gone();
          mu_.Lock();
          if (!left.ok()) {
            --waiting_for_load_;
            return left;
          }
        }
      }
      --waiting_for_load_;
    }
    if (auto it = cached_.find(key); it != cached_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      return it->second->second;
    }
    if (auto it = failed_.find(key); awaited.has_value() && it != failed_.end() && it->second.first == *awaited) {
      return it->second.second;
    }
    // Evicted but still held: back in the cache, not loaded twice (under
    // the same rule as a load's: not across a change of versions).
    if (auto it = evicted_in_use_.find(key); it != evicted_in_use_.end() && generation == resolution_generation_) {
      if (std::shared_ptr<const LoadedModel> alive = it->second.lock()) {
        CacheLocked(key, alive, &revived_evictions);
        return alive;
      }
      evicted_in_use_.erase(it);
    }
    attempt = ++attempts_;
    loading_[key] = attempt;
    // The generation the version was resolved in, not now's: a delete
    // between the resolution and here (or while this caller waited for
    // another's load) must not leave the deleted version cached.
    load_generation = generation;
  }
  // Whatever LoadUncached throws (std::bad_alloc reading a large artifact)
  // becomes this attempt's failure: the loading mark must be cleared, or every
  // later caller of this version would wait for it forever.
  absl::StatusOr<std::unique_ptr<LoadedModel>> loaded = engine::GuardEntryPoint(
      absl::StrCat("model ", name, " version ", resolved.version),
      [&]() -> absl::StatusOr<std::unique_ptr<LoadedModel>> { return LoadUncached(name, fp32, resolved); });
  // Versions changed while it loaded (any job's publish here, or a delete,
  // whose DropUnpublished could not see this load): cached only if the store
  // still publishes this version as resolved, read after the change, so
  // that a deleted version keeps no budget. Meanwhile the loading mark
  // stays: callers waiting for this load go on waiting, and share it (each
  // loaded its own copy, one after another, when a publish of any model
  // came during a cold load).
  bool verified = false;
  uint64_t verified_generation = 0;
  if (loaded.ok()) {
    {
      absl::MutexLock lock(&mu_);
      verified_generation = resolution_generation_;
    }
    if (load_generation != verified_generation) {
      absl::StatusOr<ModelVersion> still = jobs_->GetModelVersion(base, resolved.version);
      verified = still.ok() && still->job_id == resolved.job_id;
    }
  }
  // Released after mu_ (declared before the lock): a model's last reference
  // waits for its copy builder, and FindLoaded must not wait with it.
  std::vector<std::shared_ptr<const LoadedModel>> evicted;
  absl::MutexLock lock(&mu_);
  loading_.erase(key);
  if (!loaded.ok()) {
    failed_[key] = {attempt, loaded.status()};
    return loaded.status();
  }
  failed_.erase(key);
  std::shared_ptr<const LoadedModel> model(std::move(*loaded));
  // Served to this caller, not cached: the next caller resolves again.
  const bool current = load_generation == resolution_generation_ ||
                       (verified && verified_generation == resolution_generation_);
  if (!current) return model;
  CacheLocked(key, model, &evicted);
  return model;
}

void ModelRepository::CacheLocked(const Key& key, std::shared_ptr<const LoadedModel> model,
                                  std::vector<std::shared_ptr<const LoadedModel>>* evicted) {
  evicted_in_use_.erase(key);
  cached_bytes_ += model->info().cost_bytes;
  lru_.emplace_front(key, std::move(model));
  cached_[key] = lru_.begin();
  // Least recently used out, never the one just cached; requests still
  // running on an evicted model keep it alive until they finish.
  while (cached_bytes_ > options_.cache_bytes && lru_.size() > 1) {
    const Key out = lru_.back().first;
    evicted->push_back(UncacheLocked(cached_.find(out)));
    evicted_in_use_[out] = evicted->back();
  }
  for (auto it = evicted_in_use_.begin(); it != evicted_in_use_.end();) {
    it = it->second.expired() ? evicted_in_use_.erase(it) : std::next(it);
  }
}

absl::StatusOr<std::unique_ptr<LoadedModel>> ModelRepository::LoadUncached(const std::string& name, bool fp32,
                                                                          const ModelVersion& version) {
  QUANTD_ASSIGN_OR_RETURN(Job job, jobs_->Get(version.job_id));
  if (!job.result.has_value() || job.result->artifact_sha256.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("model ", version.name, " version ", version.version,
                                                      ": job ", job.id, " holds no artifact"));
  }
  const JobResult& result = *job.result;
  ServedModelInfo info;
  info.name = name;
  info.base_name = version.name;
  info.version = version.version;
  info.fp32 = fp32;
  info.job_id = job.id;
  info.artifact_id = result.artifact_id;
  info.input_shape = result.report.input_shape;
  info.preprocessing = job.spec.calibration.preprocessing;
  if (job.spec.calibration.format == engine::DatasetFormat::kCifar10Binary) info.labels = Cifar10Labels();
  if (info.input_shape.size() != 3) {
    return absl::FailedPreconditionError(absl::StrCat("model ", version.name, " version ", version.version,
                                                      " was published before input shapes were recorded; "
                                                      "run its job again to serve it"));
  }
  const std::string what = absl::StrCat("model ", name, " version ", version.version);
  std::unique_ptr<engine::ServableModel> servable;
  if (fp32) {
    // The job's reference (input_locator.h), resolved on this replica.
    const std::string& source = job.spec.model_path;
    absl::StatusOr<std::string> local =
        options_.inputs != nullptr ? options_.inputs->LocalPath(source, "model") : absl::StatusOr<std::string>(source);
    if (!local.ok()) {
      // Damage in the blob store stays DATA_LOSS; anything else is a source
      // that is no longer servable here.
      const absl::StatusCode code = local.status().code() == absl::StatusCode::kDataLoss
                                        ? absl::StatusCode::kDataLoss
                                        : absl::StatusCode::kFailedPrecondition;
      return absl::Status(code, absl::StrCat(what, ": its FP32 source: ", local.status().message()));
    }
    std::ifstream in(*local, std::ios::binary);
    if (!in) {
      return absl::FailedPreconditionError(absl::StrCat(what, ": its FP32 source ", source, " is gone"));
    }
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    // Loaded in this process, unlike a job's model (vetted in a child): only
    // the bytes the job loaded, checked, so a file replaced since cannot
    // bring a model LibTorch's loader crashes on.
    if (!result.report.model_sha256.empty() && engine::Sha256Hex(bytes) != result.report.model_sha256) {
      if (absl::StartsWith(source, BlobReference(""))) {
        // An upload is named by its sha256: other bytes under that name are
        // damage in the store, not a newer file.
        return absl::DataLossError(absl::StrCat(what, ": its FP32 source ", source,
                                                " is corrupted in the blob store (its bytes no longer match their "
                                                "sha256); upload the original file again"));
      }
      return absl::FailedPreconditionError(absl::StrCat(what, ": its FP32 source ", source,
                                                        " changed since the job quantized it (sha256 differs); "
                                                        "publish a new version from the new file"));
    }
    info.cost_bytes = static_cast<int64_t>(bytes.size());
    QUANTD_ASSIGN_OR_RETURN(servable, engine::ServableModel::LoadFp32Bytes(bytes, source));
  } else {
    absl::StatusOr<std::string> read = artifacts_->Read(result.artifact_sha256);
    if (!read.ok() && absl::IsNotFound(read.status())) {
      // The version exists: NOT_FOUND would say it does not.
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": its artifact ", result.artifact_id, " is gone from the artifact store"));
    }
    QUANTD_ASSIGN_OR_RETURN(std::string bytes, std::move(read));
    if (engine::Sha256Hex(bytes) != result.artifact_sha256) {
      return absl::DataLossError(absl::StrCat(what, ": artifact ", result.artifact_id, " is corrupted in the store"));
    }
    absl::StatusOr<std::string> kernel_engine =
        engine::KernelEngineForArtifact(result.report.requirements, options_.allow_kernel_reroute);
    if (!kernel_engine.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(what, ": ", kernel_engine.status().message()));
    }
    const int64_t size = std::max<int64_t>(1, static_cast<int64_t>(bytes.size()));
    const int copies = static_cast<int>(
        std::clamp<int64_t>(options_.cache_bytes / 8 / size, 0, std::max(0, options_.batch_size_copies)));
    QUANTD_ASSIGN_OR_RETURN(servable, engine::ServableModel::LoadInt8Artifact(bytes, *kernel_engine, what, copies));
    // A model that keeps copies also keeps the artifact's bytes to make them.
    const int limit = servable->batch_size_copy_limit();
    info.cost_bytes = size * (1 + limit + (limit > 0 ? 1 : 0));
  }
  info.kernel_engine = servable->kernel_engine();
  auto model = std::make_unique<LoadedModel>(std::move(info), std::move(servable));
  // Warm-up: the first request is not the one that pays for lazy
  // initialization; it also tells the output shape.
  const std::vector<int64_t>& s = model->info().input_shape;
  QUANTD_ASSIGN_OR_RETURN(engine::ServingOutput warm,
                          model->model_->Run(std::vector<float>(s[0] * s[1] * s[2], 0.0f), {1, s[0], s[1], s[2]}));
  // Outputs are per sample: [N, ...] with N the batch, and values per sample
  // in at least one more dimension (what the protocol's encoders and
  // Evaluate read: a [N] output would load, then fail every request).
  if (warm.shape.size() < 2 || warm.shape[0] != 1) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": its output for a batch of one has shape [", absl::StrJoin(warm.shape, ", "),
                     "]; only [N, ...] outputs (N samples, each with at least one dimension of values) "
                     "can be served"));
  }
  model->info_.output_shape.assign(warm.shape.begin() + 1, warm.shape.end());
  return model;
}

}  // namespace quantd::worker
