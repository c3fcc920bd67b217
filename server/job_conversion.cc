#include "server/job_conversion.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/util/time_util.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/inference_conversion.h"
#include "worker/engine/base/flag_values.h"
#include "worker/data_dir_layout.h"
#include "worker/engine/base/sha256.h"
#include "worker/engine/base/errno_status.h"
#include "worker/engine/base/log.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/data/image_reader.h"
#include "worker/engine/quantizer.h"
#include "worker/input_locator.h"
#include "worker/model_repository.h"

namespace quantd {
namespace {

namespace fs = std::filesystem;
using google::protobuf::util::TimeUtil;

constexpr int64_t kCifarRecordBytes = 1 + 3 * 32 * 32;

// Timestamp's range (0001-01-01 .. 9999-12-31): protobuf aborts the process
// on a value outside it, so every conversion clamps or validates.
constexpr int64_t kMinTimestampSeconds = -62135596800;
constexpr int64_t kMaxTimestampSeconds = 253402300799;

google::protobuf::Timestamp ToTimestamp(absl::Time t) {
  const absl::Time lo = absl::FromUnixSeconds(kMinTimestampSeconds);
  const absl::Time hi = absl::FromUnixSeconds(kMaxTimestampSeconds);
  return TimeUtil::MicrosecondsToTimestamp(absl::ToUnixMicros(std::clamp(t, lo, hi)));
}

std::string DeterministicBytes(const google::protobuf::Message& message) {
  std::string bytes;
  google::protobuf::io::StringOutputStream stream(&bytes);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  message.SerializeToCodedStream(&coded);
  coded.Trim();
  return bytes;
}

// The dataset with its files named by references (a job is stored and may
// run on another replica); `local`, when given, gets the same spec with this
// replica's files (an evaluation opens them here and now).
absl::StatusOr<engine::DatasetSpec> ResolveDataset(const v1::DatasetRef& ref, const std::string& field,
                                                   const ReferenceResolver& resolver,
                                                   engine::DatasetSpec* local = nullptr) {
  std::string local_path, local_labels_path;
  auto name = [](const ResolvedInput& input) { return input.reference; };
  engine::DatasetSpec spec;
  switch (ref.format()) {
    case v1::DATASET_FORMAT_CIFAR10_BINARY:
      spec.format = engine::DatasetFormat::kCifar10Binary;
      break;
    case v1::DATASET_FORMAT_NPY:
      spec.format = engine::DatasetFormat::kNpy;
      break;
    case v1::DATASET_FORMAT_UNSPECIFIED:
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".format: required (DATASET_FORMAT_CIFAR10_BINARY or DATASET_FORMAT_NPY)"));
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".format: unknown dataset format ", static_cast<int>(ref.format())));
  }
  switch (ref.source_case()) {
    case v1::DatasetRef::kBlobId: {
      QUANTD_ASSIGN_OR_RETURN(ResolvedInput input, resolver.ResolveBlob(ref.blob_id(), field + ".blob_id"));
      local_path = input.local_path;
      spec.path = name(input);
      break;
    }
    case v1::DatasetRef::kPath: {
      QUANTD_ASSIGN_OR_RETURN(ResolvedInput input, resolver.ResolvePath(ref.path(), field + ".path"));
      local_path = input.local_path;
      spec.path = name(input);
      break;
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat(field, ": required (blob_id or path)"));
  }
  // CIFAR-10 records carry their labels: labels beside them are ignored, as
  // the API says, not resolved (a missing file refused the job, and a labels
  // blob expiring while the job queued failed it).
  const bool labels_used = spec.format == engine::DatasetFormat::kNpy;
  if (labels_used && ref.labels_case() == v1::DatasetRef::kLabelsBlobId) {
    QUANTD_ASSIGN_OR_RETURN(ResolvedInput labels,
                            resolver.ResolveBlob(ref.labels_blob_id(), field + ".labels_blob_id"));
    spec.labels_path = name(labels);
    local_labels_path = labels.local_path;
  } else if (labels_used && ref.labels_case() == v1::DatasetRef::kLabelsPath) {
    QUANTD_ASSIGN_OR_RETURN(ResolvedInput labels, resolver.ResolvePath(ref.labels_path(), field + ".labels_path"));
    spec.labels_path = name(labels);
    local_labels_path = labels.local_path;
  }
  if (local != nullptr) {
    *local = spec;
    local->path = local_path;
    local->labels_path = local_labels_path;
  }
  if (spec.format == engine::DatasetFormat::kCifar10Binary) {
    std::error_code error;
    const auto size = static_cast<int64_t>(fs::file_size(local_path, error));
    const std::string source = absl::StrCat(field, ref.source_case() == v1::DatasetRef::kBlobId ? ".blob_id" : ".path");
    if (error) return ErrnoStatus(error.value(), absl::StrCat(source, ": cannot read the file's size"));
    if (size == 0 || size % kCifarRecordBytes != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": the file is ", size, " bytes, not a whole number of ", kCifarRecordBytes,
          "-byte CIFAR-10 records (truncated or not CIFAR-10 binary?)"));
    }
  }
  return spec;
}

// .npy images carry no labels (CIFAR-10 records do): a use that needs them
// is refused at submit, not after calibration and tuning have run.
absl::Status RequireLabels(const engine::DatasetSpec& spec, const std::string& field, const std::string& why) {
  if (spec.format != engine::DatasetFormat::kNpy || !spec.labels_path.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, ".labels_path (or .labels_blob_id): required for .npy images ", why));
}

// A .npy set's files opened as the job will open them (header, dtype, shape
// in the job's layout, labels and their count, enough samples per class), so
// that a bad file is refused at submit, not after calibration and tuning.
// `referenced` is the stored spec, `local` the same files here. CIFAR-10
// files were checked by size in ResolveDataset: their labels are in every
// record, and reading them all would slow every submit.
absl::Status CheckNpyFiles(const engine::DatasetSpec& referenced, engine::DatasetSpec local, const std::string& field) {
  if (referenced.format != engine::DatasetFormat::kNpy) return absl::OkStatus();
  const std::string path = local.path, labels_path = local.labels_path;
  local = referenced;
  local.path = path;
  local.labels_path = labels_path;
  const absl::Status status = engine::CheckDatasetFiles(local);
  if (status.ok()) return status;
  // The request's preprocessing does not fit the file's channels: that
  // field is what to change.
  if (absl::StartsWith(status.message(), "preprocessing.")) return status;
  return absl::Status(status.code(),
                      absl::StrCat(field, ": ", worker::ReferToDataset(status.message(), referenced, local)));
}

// CIFAR-10 images have 3 channels: a mean or std of another length failed
// the job once it ran (.npy files are checked against their header by
// CheckNpyFiles).
absl::Status CheckCifarChannels(const engine::DatasetSpec& dataset) {
  if (dataset.format != engine::DatasetFormat::kCifar10Binary) return absl::OkStatus();
  auto check = [](const char* name, const std::vector<double>& values) {
    if (values.empty() || values.size() == 3) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("preprocessing.", name, ": ", values.size(),
                                                   " values; CIFAR-10 images have 3 channels, one value each"));
  };
  QUANTD_RETURN_IF_ERROR(check("mean", dataset.preprocessing.mean));
  return check("std", dataset.preprocessing.std);
}

absl::StatusOr<engine::Preprocessing> ToPreprocessing(const v1::Preprocessing& p, std::string* layout) {
  engine::Preprocessing out;
  if (p.has_scale()) {
    if (!std::isfinite(p.scale()) || p.scale() == 0) {
      return absl::InvalidArgumentError("preprocessing.scale: must be finite and not 0");
    }
    out.scale = p.scale();
  }
  for (int i = 0; i < p.mean_size(); ++i) {
    if (!std::isfinite(p.mean(i))) {
      return absl::InvalidArgumentError(absl::StrCat("preprocessing.mean[", i, "]: must be finite"));
    }
    out.mean.push_back(p.mean(i));
  }
  for (int i = 0; i < p.std_size(); ++i) {
    if (!std::isfinite(p.std(i)) || p.std(i) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("preprocessing.std[", i, "]: must be finite and not 0"));
    }
    out.std.push_back(p.std(i));
  }
  if (!out.mean.empty() && !out.std.empty() && out.mean.size() != out.std.size()) {
    return absl::InvalidArgumentError("preprocessing: mean and std must have one value per channel each");
  }
  switch (p.input_layout()) {
    case v1::TENSOR_LAYOUT_UNSPECIFIED:
    case v1::TENSOR_LAYOUT_NCHW:
      *layout = "NCHW";
      break;
    case v1::TENSOR_LAYOUT_NHWC:
      *layout = "NHWC";
      break;
    default:
      return absl::InvalidArgumentError("preprocessing.input_layout: unknown layout");
  }
  return out;
}

absl::Status ApplyQConfig(const v1::QConfig& q, worker::JobSpec* spec) {
  static const std::set<std::string> kEngines = {"", "onednn", "qnnpack", "fbgemm", "x86"};
  if (kEngines.count(q.kernel_engine()) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "qconfig.kernel_engine: unknown kernel engine \"", q.kernel_engine(),
        "\" (onednn, qnnpack, fbgemm, x86, or empty)"));
  }
  if (!q.kernel_engine().empty()) {
    // Refused now, not when a worker gets to the job.
    const std::vector<std::string> available = engine::AvailableKernelEngines();
    if (std::find(available.begin(), available.end(), q.kernel_engine()) == available.end()) {
      return absl::InvalidArgumentError(absl::StrCat("qconfig.kernel_engine: \"", q.kernel_engine(),
                                                     "\" is not compiled into this server's LibTorch (available: ",
                                                     absl::StrJoin(available, ", "), ")"));
    }
  }
  if (q.strict_kernels() && q.kernel_engine().empty()) {
    return absl::InvalidArgumentError(
        "qconfig.strict_kernels: only with qconfig.kernel_engine (without one an exact engine is chosen)");
  }
  spec->kernel_engine = q.kernel_engine();
  spec->strict_kernels = q.strict_kernels();
  spec->qconfig.bias_correction = q.bias_correction();
  spec->qconfig.fitted_rounding = q.fitted_rounding();
  spec->qconfig.equalization = q.cross_layer_equalization();
  // An explicit QCONFIG_PRESET_UNSPECIFIED is unset, as the API says.
  if (q.config_case() == v1::QConfig::kPreset && q.preset() != v1::QCONFIG_PRESET_UNSPECIFIED) {
    switch (q.preset()) {
      case v1::QCONFIG_PRESET_FBGEMM: spec->qconfig.preset = "fbgemm"; break;
      case v1::QCONFIG_PRESET_X86: spec->qconfig.preset = "x86"; break;
      case v1::QCONFIG_PRESET_ONEDNN: spec->qconfig.preset = "onednn"; break;
      case v1::QCONFIG_PRESET_QNNPACK: spec->qconfig.preset = "qnnpack"; break;
      case v1::QCONFIG_PRESET_BEST: spec->qconfig.preset = "best"; break;
      default:
        return absl::InvalidArgumentError(absl::StrCat(
            "qconfig.preset: unknown preset ", static_cast<int>(q.preset()),
            " (QCONFIG_PRESET_FBGEMM, _X86, _ONEDNN, _QNNPACK or _BEST)"));
    }
  } else if (q.config_case() == v1::QConfig::kCustom) {
    spec->qconfig.preset.clear();
    const v1::CustomQConfig& c = q.custom();
    switch (c.activation_observer()) {
      case v1::ACTIVATION_OBSERVER_UNSPECIFIED:
      case v1::ACTIVATION_OBSERVER_HISTOGRAM: spec->qconfig.activation_observer = "histogram"; break;
      case v1::ACTIVATION_OBSERVER_MINMAX: spec->qconfig.activation_observer = "minmax"; break;
      case v1::ACTIVATION_OBSERVER_MOVING_AVERAGE_MINMAX:
        spec->qconfig.activation_observer = "moving_average_minmax";
        break;
      case v1::ACTIVATION_OBSERVER_MSE: spec->qconfig.activation_observer = "mse"; break;
      case v1::ACTIVATION_OBSERVER_PERCENTILE: spec->qconfig.activation_observer = "percentile"; break;
      case v1::ACTIVATION_OBSERVER_ENTROPY: spec->qconfig.activation_observer = "entropy"; break;
      default:
        return absl::InvalidArgumentError("qconfig.custom.activation_observer: unknown observer");
    }
    switch (c.weight_observer()) {
      case v1::WEIGHT_OBSERVER_UNSPECIFIED:
      case v1::WEIGHT_OBSERVER_PER_CHANNEL_SYMMETRIC:
        spec->qconfig.weight_observer = "per_channel_symmetric";
        break;
      case v1::WEIGHT_OBSERVER_PER_TENSOR_SYMMETRIC:
        spec->qconfig.weight_observer = "per_tensor_symmetric";
        break;
      case v1::WEIGHT_OBSERVER_PER_TENSOR_AFFINE:
        spec->qconfig.weight_observer = "per_tensor_affine";
        break;
      default:
        return absl::InvalidArgumentError("qconfig.custom.weight_observer: unknown observer");
    }
    spec->qconfig.reduce_range = c.reduce_range();
    if (c.percentile() != 0) {
      if (!(c.percentile() > 0 && c.percentile() <= 100)) {
        return absl::InvalidArgumentError(
            absl::StrCat("qconfig.custom.percentile: ", c.percentile(), " is not in (0, 100]"));
      }
      if (c.activation_observer() != v1::ACTIVATION_OBSERVER_PERCENTILE) {
        return absl::InvalidArgumentError(
            "qconfig.custom.percentile: only for activation_observer ACTIVATION_OBSERVER_PERCENTILE");
      }
      spec->qconfig.percentile = c.percentile();
    }
    // Refused now, not at CONVERTING after a whole calibration.
    if (q.kernel_engine() == "onednn" && spec->qconfig.weight_observer == "per_tensor_affine") {
      return absl::InvalidArgumentError(
          "qconfig.custom.weight_observer: WEIGHT_OBSERVER_PER_TENSOR_AFFINE gives weight zero points, which "
          "qconfig.kernel_engine \"onednn\" rejects (use a symmetric weight observer, or kernel engine qnnpack)");
    }
  } else {
    // Unset: the preset made for the requested kernel engine (the API's
    // promise); fbgemm's, the PyTorch default, when no engine is named.
    const std::string& engine = q.kernel_engine();
    spec->qconfig.preset = (engine == "qnnpack" || engine == "onednn" || engine == "x86") ? engine : "fbgemm";
  }
  return absl::OkStatus();
}

absl::Status ApplyFusion(const v1::QuantizeJobRequest& request, worker::JobSpec* spec) {
  if (!request.has_fusion() || request.fusion().spec_case() == v1::FusionSpec::SPEC_NOT_SET) {
    spec->fusion.automatic = true;
    return absl::OkStatus();
  }
  if (request.fusion().spec_case() == v1::FusionSpec::kAuto) {
    spec->fusion.automatic = request.fusion().auto_();
    return absl::OkStatus();
  }
  std::set<std::string> seen;
  const auto& groups = request.fusion().groups().groups();
  for (int i = 0; i < groups.size(); ++i) {
    const std::string field = absl::StrCat("fusion.groups.groups[", i, "]");
    if (groups[i].modules_size() < 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": a fusion group needs at least two modules, got ",
                       groups[i].modules_size()));
    }
    std::vector<std::string> group;
    for (const std::string& module : groups[i].modules()) {
      if (module.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(field, ": empty module name"));
      }
      if (!seen.insert(module).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": module \"", module, "\" is in more than one group"));
      }
      group.push_back(module);
    }
    spec->fusion.groups.push_back(std::move(group));
  }
  spec->fusion.automatic = false;
  return absl::OkStatus();
}

v1::Phase ToProtoPhase(worker::JobPhase phase) { return static_cast<v1::Phase>(static_cast<int>(phase)); }

void AccuracyToProto(const engine::Accuracy& a, v1::Accuracy* out) {
  out->set_correct(static_cast<uint64_t>(a.correct));
  out->set_total(static_cast<uint64_t>(a.total));
  out->set_top1(a.top1());
}

}  // namespace

ReferenceResolver::ReferenceResolver(std::string data_dir, const worker::BlobStore* blobs,
                                     std::vector<std::string> read_roots, worker::Clock* clock)
    : data_dir_(std::move(data_dir)), blobs_(blobs), clock_(clock) {
  std::error_code error;
  roots_.push_back(fs::weakly_canonical(data_dir_, error));
  for (const std::string& root : read_roots) {
    fs::path canonical = fs::weakly_canonical(root, error);
    // An empty root is a prefix of every path: never one (the server refuses it too).
    if (!error && canonical.is_absolute()) roots_.push_back(canonical);
  }
}

namespace {

// Whether `text` is well-formed UTF-8 (no overlong forms, surrogates or code
// points past U+10FFFF).
bool IsUtf8(absl::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
    const unsigned char lead = byte(i);
    size_t length = 0;
    uint32_t code = 0;
    if (lead < 0x80) {
      ++i;
      continue;
    } else if ((lead & 0xE0) == 0xC0) {
      length = 2, code = lead & 0x1F;
    } else if ((lead & 0xF0) == 0xE0) {
      length = 3, code = lead & 0x0F;
    } else if ((lead & 0xF8) == 0xF0) {
      length = 4, code = lead & 0x07;
    } else {
      return false;
    }
    if (i + length > text.size()) return false;
    for (size_t k = 1; k < length; ++k) {
      if ((byte(i + k) & 0xC0) != 0x80) return false;
      code = (code << 6) | (byte(i + k) & 0x3F);
    }
    static constexpr uint32_t kSmallest[] = {0, 0, 0x80, 0x800, 0x10000};
    if (code < kSmallest[length] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
    i += length;
  }
  return true;
}

}  // namespace

absl::StatusOr<ResolvedInput> ReferenceResolver::ResolvePath(const std::string& path,
                                                             const std::string& field) const {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": empty path"));
  fs::path relative(path);
  if (!worker::StaysUnderItsRoot(relative)) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": \"", path, "\" is outside the data root (paths must be relative to --data_dir, "
        "without \"..\")"));
  }
  fs::path full = fs::path(data_dir_) / relative;
  std::error_code error;
  if (!fs::is_regular_file(full, error)) {
    if (fs::exists(full, error)) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": \"", path, "\" is not a regular file (a directory, socket or FIFO)"));
    }
    return absl::NotFoundError(
        absl::StrCat(field, ": \"", path, "\" does not exist under the data root"));
  }
  // Symlinks are resolved here, once: the file must really lie under the
  // data dir or a --read_roots folder, and the job keeps the resolved path
  // (a link changed later cannot redirect it).
  const fs::path resolved = fs::canonical(full, error);
  if (error) return absl::NotFoundError(absl::StrCat(field, ": \"", path, "\" cannot be resolved: ", error.message()));
  // The job is stored as JSON text: a name that is not UTF-8 (a link to a
  // Latin-1 folder) would be stored altered, and the job fail on a path
  // nobody gave.
  if (!IsUtf8(resolved.string())) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": \"", path, "\" leads to a file whose path is not UTF-8; give a path (or link) in UTF-8"));
  }
  // quantd's own files are not inputs, whatever name or link leads to them.
  const fs::path& data_root = roots_.front();
  auto [data_root_end, inside] = std::mismatch(data_root.begin(), data_root.end(), resolved.begin(), resolved.end());
  if (data_root_end == data_root.end() && inside != resolved.end() && worker::IsQuantdStateEntry(inside->string())) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": \"", path, "\" is quantd's own ", inside->string(),
        " in the data dir (the job store, artifacts, uploads and lock are not inputs; refer to an upload by "
        "its blob_id)"));
  }
  // A hard link has no other name to give it away: compared by inode.
  if (struct stat file; ::stat(resolved.c_str(), &file) == 0 && file.st_nlink > 1) {
    std::vector<std::string> own_files = {std::string(worker::kDataDirLockFile)};
    for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
      own_files.push_back(std::string(worker::kJobStoreFile) + suffix);
    }
    for (const std::string& own_file : own_files) {
      struct stat own;
      if (::stat((data_root / own_file).c_str(), &own) == 0 && own.st_dev == file.st_dev && own.st_ino == file.st_ino) {
        return absl::InvalidArgumentError(absl::StrCat(field, ": \"", path, "\" is a hard link to quantd's own ",
                                                       own_file, " in the data dir (the job store and lock are not "
                                                       "inputs)"));
      }
    }
  }
  if (data_root_end == data_root.end()) {
    return ResolvedInput{resolved.string(), worker::DataDirReference(resolved.lexically_relative(data_root).string())};
  }
  for (const fs::path& root : roots_) {
    auto [root_end, unused] = std::mismatch(root.begin(), root.end(), resolved.begin(), resolved.end());
    if (root_end == root.end()) return ResolvedInput{resolved.string(), resolved.string()};
  }
  // The target is the operator's to see (logged), not the caller's: the
  // error would tell any submitter where links lead on the server.
  Log(LogLevel::kWarning, field, ": \"", path, "\" was refused: it is a link to ", resolved.string(),
      ", outside the data dir and --read_roots");
  return absl::InvalidArgumentError(absl::StrCat(
      field, ": \"", path, "\" is a link to a file outside the data root and --read_roots (the server's log ",
      "names it; an operator may add its folder to quantd --read_roots)"));
}

absl::StatusOr<ResolvedInput> ReferenceResolver::ResolveBlob(const std::string& blob_id,
                                                             const std::string& field) const {
  QUANTD_ASSIGN_OR_RETURN(std::string path, blobs_->PathOf(blob_id, field));
  // A blob a job was just submitted with is in use: garbage collection
  // counts its idle time from now. First, so that another replica's
  // collector sees the use while the bytes are hashed below.
  (void)blobs_->Touch(blob_id, clock_->Now());
  // Checked now, so a damaged upload is refused at submission rather than
  // failing the job later (the job checks it again when it reads it).
  QUANTD_RETURN_IF_ERROR(blobs_->VerifiedPathOf(blob_id, field).status());
  return ResolvedInput{std::move(path), worker::BlobReference(blob_id)};
}

void ToProto(const worker::StoredBlob& blob, const std::vector<std::string>& active_job_ids, v1::BlobInfo* out) {
  out->set_blob_id(blob.id);
  out->set_sha256(blob.id);
  out->set_size_bytes(static_cast<uint64_t>(blob.size_bytes));
  *out->mutable_last_used_time() = ToTimestamp(blob.last_used);
  for (const std::string& id : active_job_ids) out->add_active_job_ids(id);
}

absl::StatusOr<ResolvedInput> ReferenceResolver::ResolveModel(const v1::ModelRef& model,
                                                            const std::string& field) const {
  switch (model.source_case()) {
    case v1::ModelRef::kBlobId: return ResolveBlob(model.blob_id(), field + ".blob_id");
    case v1::ModelRef::kPath: return ResolvePath(model.path(), field + ".path");
    default: return absl::InvalidArgumentError(absl::StrCat(field, ": required (blob_id or path)"));
  }
}

absl::StatusOr<worker::Job> JobFromRequest(const v1::QuantizeJobRequest& request,
                                           const ReferenceResolver& resolver) {
  worker::Job job;
  worker::JobSpec& spec = job.spec;
  // The request is kept with the job and sent back in every GetJob, ListJobs
  // page and watch snapshot: a job description, not a payload.
  constexpr size_t kMaxRequestBytes = 64 << 10;
  if (const size_t bytes = request.ByteSizeLong(); bytes > kMaxRequestBytes) {
    return absl::InvalidArgumentError(absl::StrCat("request: ", bytes, " bytes, more than a job's ", kMaxRequestBytes,
                                                   " (labels, fusion groups, ...)"));
  }
  if (!request.has_model()) return absl::InvalidArgumentError("model: required (blob_id or path)");
  QUANTD_ASSIGN_OR_RETURN(ResolvedInput model, resolver.ResolveModel(request.model(), "model"));
  spec.model_path = model.reference;
  QUANTD_RETURN_IF_ERROR(ApplyQConfig(request.qconfig(), &spec));
  QUANTD_RETURN_IF_ERROR(ApplyFusion(request, &spec));

  std::string layout;
  QUANTD_ASSIGN_OR_RETURN(engine::Preprocessing preprocessing,
                          ToPreprocessing(request.preprocessing(), &layout));

  if (!request.has_calibration() || !request.calibration().has_dataset()) {
    return absl::InvalidArgumentError("calibration.dataset: required");
  }
  const v1::CalibrationSpec& calibration = request.calibration();
  engine::DatasetSpec local_calibration;
  QUANTD_ASSIGN_OR_RETURN(spec.calibration,
                          ResolveDataset(calibration.dataset(), "calibration.dataset", resolver, &local_calibration));
  if (calibration.batch_size() > kMaxBatchSize) {
    return absl::InvalidArgumentError(absl::StrCat("calibration.batch_size: at most ", kMaxBatchSize));
  }
  spec.batch_size = calibration.batch_size() == 0 ? 100 : calibration.batch_size();
  spec.calibration.samples_per_class = calibration.samples_per_class();
  if (spec.calibration.samples_per_class > 0) {
    QUANTD_RETURN_IF_ERROR(
        RequireLabels(spec.calibration, "calibration.dataset", "with calibration.samples_per_class (per class)"));
  }
  spec.calibration.seed = calibration.seed();
  spec.calibration.preprocessing = preprocessing;
  spec.calibration.layout = layout;
  QUANTD_RETURN_IF_ERROR(CheckCifarChannels(spec.calibration));
  QUANTD_RETURN_IF_ERROR(CheckNpyFiles(spec.calibration, local_calibration, "calibration.dataset"));

  if (request.has_evaluation()) {
    const v1::EvaluationSpec& evaluation = request.evaluation();
    if (!evaluation.has_dataset()) return absl::InvalidArgumentError("evaluation.dataset: required");
    engine::DatasetSpec local_eval;
    QUANTD_ASSIGN_OR_RETURN(engine::DatasetSpec eval,
                            ResolveDataset(evaluation.dataset(), "evaluation.dataset", resolver, &local_eval));
    if (evaluation.batch_size() > kMaxBatchSize) {
      return absl::InvalidArgumentError(absl::StrCat("evaluation.batch_size: at most ", kMaxBatchSize));
    }
    QUANTD_RETURN_IF_ERROR(RequireLabels(eval, "evaluation.dataset", "to evaluate"));
    eval.limit = evaluation.max_samples();
    eval.preprocessing = preprocessing;
    eval.layout = layout;
    QUANTD_RETURN_IF_ERROR(CheckNpyFiles(eval, local_eval, "evaluation.dataset"));
    spec.evaluation = eval;
    spec.evaluation_batch_size = evaluation.batch_size() == 0 ? 256 : evaluation.batch_size();
  }

  const v1::QualityGate& gate = request.quality_gate();
  if (gate.has_samples()) {
    if (gate.samples() > kMaxQualitySamples) {
      return absl::InvalidArgumentError(absl::StrCat("quality_gate.samples: at most ", kMaxQualitySamples));
    }
    spec.quality_samples = gate.samples();
  }
  if (gate.has_min_top1_agreement()) {
    if (!(gate.min_top1_agreement() >= 0 && gate.min_top1_agreement() <= 1)) {
      return absl::InvalidArgumentError("quality_gate.min_top1_agreement: a fraction in 0..1");
    }
    spec.min_top1_agreement = gate.min_top1_agreement();
  }
  if (gate.has_min_output_sqnr_db()) {
    if (!std::isfinite(gate.min_output_sqnr_db())) {
      return absl::InvalidArgumentError("quality_gate.min_output_sqnr_db: a finite number of dB");
    }
    spec.min_output_sqnr_db = gate.min_output_sqnr_db();
  }
  spec.allow_low_quality = gate.allow_low_quality();

  if (request.has_accuracy_goal()) {
    const v1::AccuracyGoal& g = request.accuracy_goal();
    if (!g.has_tuning()) {
      return absl::InvalidArgumentError(
          "accuracy_goal.tuning: required (a labelled dataset, or any with accuracy_goal.against_fp32)");
    }
    engine::AccuracyGoal goal;
    engine::DatasetSpec local_tuning;
    QUANTD_ASSIGN_OR_RETURN(goal.tuning, ResolveDataset(g.tuning(), "accuracy_goal.tuning", resolver, &local_tuning));
    // Judged against FP32's own predictions, the set needs no labels.
    if (!g.against_fp32()) {
      QUANTD_RETURN_IF_ERROR(RequireLabels(goal.tuning, "accuracy_goal.tuning",
                                           "to tune on (or set accuracy_goal.against_fp32, which needs none)"));
    }
    goal.tuning.preprocessing = preprocessing;
    goal.tuning.layout = layout;
    QUANTD_RETURN_IF_ERROR(CheckNpyFiles(goal.tuning, local_tuning, "accuracy_goal.tuning"));
    const double tolerance = g.has_tolerance() ? g.tolerance() : 0.1;
    if (!(tolerance >= 0 && tolerance <= 100)) {
      return absl::InvalidArgumentError(
          absl::StrCat("accuracy_goal.tolerance: ", tolerance, " is not a number of points in [0, 100]"));
    }
    goal.max_top1_drop = tolerance / 100;
    goal.relative = g.relative();
    if (g.max_trials() > 1000) return absl::InvalidArgumentError("accuracy_goal.max_trials: at most 1000");
    goal.max_trials = g.max_trials() == 0 ? 40 : g.max_trials();
    if (!(g.time_budget_seconds() >= 0 && g.time_budget_seconds() <= 86400)) {
      return absl::InvalidArgumentError("accuracy_goal.time_budget_seconds: seconds in [0, 86400] (0 = 60)");
    }
    goal.time_budget_seconds = g.time_budget_seconds() == 0 ? 60 : g.time_budget_seconds();
    if (g.int8_only() && g.max_fp32_layers() > 0) {
      return absl::InvalidArgumentError(
          "accuracy_goal.max_fp32_layers: not with accuracy_goal.int8_only (no layer stays FP32)");
    }
    goal.allow_fp32_layers = !g.int8_only();
    goal.max_fp32_layers = g.max_fp32_layers();
    goal.against_fp32 = g.against_fp32();
    spec.accuracy_goal = goal;
    const std::string& observer = spec.qconfig.activation_observer;
    if (spec.qconfig.preset.empty() && (observer == "minmax" || observer == "moving_average_minmax")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "qconfig.custom.activation_observer: accuracy_goal tries range estimators on the calibration's histograms, "
          "which the ", observer, " observer does not keep (use a preset, or histogram, mse, percentile or entropy)"));
    }
  }

  if (!request.model_name().empty()) {
    QUANTD_RETURN_IF_ERROR(worker::ValidateModelName(request.model_name(), "model_name"));
    job.spec.model_name = request.model_name();
  }
  const std::string& key = request.idempotency_key();
  if (key.size() > 128) return absl::InvalidArgumentError("idempotency_key: at most 128 characters");
  for (char c : key) {
    if (c < 0x20 || c > 0x7e) {
      return absl::InvalidArgumentError("idempotency_key: printable ASCII characters only");
    }
  }
  if (request.labels_size() > 16) return absl::InvalidArgumentError("labels: at most 16");
  for (const auto& [label, value] : request.labels()) {
    if (label.empty() || label.size() > 63) {
      return absl::InvalidArgumentError(
          absl::StrCat("labels: key \"", label.substr(0, 63), "...\" is not 1 to 63 characters"));
    }
    if (value.size() > 256) {
      return absl::InvalidArgumentError(
          absl::StrCat("labels[", label, "]: ", value.size(), " characters, at most 256"));
    }
  }
  job.idempotency_key = key;
  if (request.has_deadline()) {
    const google::protobuf::Timestamp& d = request.deadline();
    if (d.seconds() < kMinTimestampSeconds || d.seconds() > kMaxTimestampSeconds || d.nanos() < 0 ||
        d.nanos() > 999999999) {
      return absl::InvalidArgumentError("deadline: not a valid timestamp (years 1..9999, nanos 0..999999999)");
    }
    job.deadline = absl::FromUnixSeconds(d.seconds()) + absl::Nanoseconds(d.nanos());
    // Queued only to be cancelled by the first worker that looks at it. A
    // minute's slack: quantctl's deadline is the client's clock plus N
    // seconds, and clocks differ.
    constexpr absl::Duration kClockSkew = absl::Minutes(1);
    if (const absl::Time now = resolver.Now(); *job.deadline <= now - kClockSkew) {
      return absl::InvalidArgumentError(absl::StrCat("deadline: ", absl::FormatTime(*job.deadline, absl::UTCTimeZone()),
                                                     " has passed (now ", absl::FormatTime(now, absl::UTCTimeZone()),
                                                     ")"));
    }
  }
  job.request_echo = DeterministicBytes(request);
  job.request_fingerprint = RequestFingerprint(request);
  return job;
}

std::string RequestFingerprint(const v1::QuantizeJobRequest& request) {
  // A retry computes its deadline anew (quantctl's --deadline_seconds is "now
  // + N"), so the deadline is not part of "the same request"; the job keeps
  // the first one's.
  if (!request.has_deadline()) return engine::Sha256Hex(DeterministicBytes(request));
  v1::QuantizeJobRequest without_deadline = request;
  without_deadline.clear_deadline();
  return engine::Sha256Hex(DeterministicBytes(without_deadline));
}

absl::StatusOr<std::optional<worker::Job>> JobOfRetry(const v1::QuantizeJobRequest& request, const std::string& owner,
                                                      worker::JobStore& store) {
  if (request.idempotency_key().empty()) return std::nullopt;
  QUANTD_ASSIGN_OR_RETURN(std::optional<worker::Job> existing,
                          store.FindByIdempotencyKey(owner, request.idempotency_key()));
  if (existing.has_value() && existing->request_fingerprint != RequestFingerprint(request)) {
    return absl::AlreadyExistsError(absl::StrCat("idempotency_key \"", request.idempotency_key(),
                                                 "\" was already used by job ", existing->id,
                                                 " with a different request"));
  }
  return existing;
}

void ToProto(const worker::JobResult& r, v1::JobResult* out) {
  out->set_artifact_id(r.artifact_id);
  out->set_artifact_sha256(r.artifact_sha256);
  out->set_artifact_size_bytes(static_cast<uint64_t>(r.artifact_size_bytes));
  out->set_kernel_engine(r.report.kernel_engine);
  out->set_qconfig_description(r.report.qconfig_description);
  for (const auto& group : r.report.fused_groups) {
    auto* g = out->add_fused_groups();
    for (const std::string& m : group) g->add_modules(m);
  }
  for (const auto& f : r.report.fallbacks) {
    auto* fb = out->add_fallbacks();
    fb->set_node(f.node);
    fb->set_op(f.op);
    fb->set_reason(f.reason);
  }
  for (const auto& l : r.report.layers) {
    auto* layer = out->add_layers();
    layer->set_name(l.name);
    layer->set_op(l.op);
    layer->set_output_scale(l.output_scale);
    layer->set_output_zero_point(l.output_zero_point);
    for (double s : l.weight_scales) layer->add_weight_scales(s);
    if (l.sqnr_db.has_value()) layer->set_sqnr_db(*l.sqnr_db);
  }
  if (r.report.fp32_accuracy.has_value()) AccuracyToProto(*r.report.fp32_accuracy, out->mutable_fp32_accuracy());
  if (r.report.int8_accuracy.has_value()) AccuracyToProto(*r.report.int8_accuracy, out->mutable_int8_accuracy());
  for (const auto& t : r.phase_timings) {
    auto* timing = out->add_phase_timings();
    timing->set_phase(ToProtoPhase(t.phase));
    timing->set_seconds(t.seconds);
  }
  out->set_calibration_samples(static_cast<uint64_t>(r.report.calibration_samples));
  out->set_model_name(r.model_name);
  out->set_model_version(static_cast<uint64_t>(r.model_version));
  out->set_model_version_deleted(r.model_version_deleted);
  for (int64_t d : r.report.input_shape) out->add_input_shape(d);
  out->set_error_message(r.error_message);
  out->set_error_code(static_cast<int32_t>(r.error_code));
  const engine::KernelChoice& choice = r.report.kernel_choice;
  if (!choice.engine.empty()) {
    out->mutable_kernel_choice()->set_engine(choice.engine);
    out->mutable_kernel_choice()->set_reason(choice.reason);
    for (const engine::KernelCandidate& c : choice.candidates) {
      v1::KernelCandidate* candidate = out->mutable_kernel_choice()->add_candidates();
      candidate->set_engine(c.engine);
      candidate->set_exact(c.exact);
      candidate->set_why(c.why);
      if (c.ms_per_image) candidate->set_ms_per_image(*c.ms_per_image);
    }
    ToProto(r.report.cpu, out->mutable_cpu());
    ToProto(r.report.requirements, out->mutable_requirements());
    const engine::QualityReport& q = r.report.quality;
    v1::QualityReport* quality = out->mutable_quality();
    quality->set_samples(static_cast<uint64_t>(q.samples));
    if (q.top1_agreement) quality->set_top1_agreement(*q.top1_agreement);
    if (q.output_sqnr_db) quality->set_output_sqnr_db(*q.output_sqnr_db);
    for (const std::string& layer : q.worst_layers) quality->add_worst_layers(layer);
    quality->set_min_top1_agreement(q.min_top1_agreement);
    quality->set_min_output_sqnr_db(q.min_output_sqnr_db);
    quality->set_passed(q.passed);
    quality->set_message(q.message);
  }
  for (const std::string& warning : r.report.warnings) out->add_warnings(warning);
  for (const std::string& advice : r.report.advice) out->add_advice(advice);
  if (r.report.tuning) {
    const engine::TuningReport& t = *r.report.tuning;
    v1::TuningReport* tuning = out->mutable_tuning();
    tuning->set_judged_on(t.judged_on);
    tuning->set_samples(static_cast<uint64_t>(t.samples));
    if (t.fp32_top1) tuning->set_fp32_top1(*t.fp32_top1);
    if (t.target_top1) tuning->set_target_top1(*t.target_top1);
    tuning->set_met(t.met);
    tuning->set_stopped_because(t.stopped_because);
    tuning->set_best_trial(static_cast<uint32_t>(std::max(0, t.best_trial)));
    for (const engine::Trial& trial : t.trials) ToProto(trial, tuning->add_trials());
    for (const engine::LayerSensitivity& s : t.sensitivity) {
      v1::LayerSensitivity* layer = tuning->add_sensitivity();
      layer->set_layer(s.layer);
      layer->set_agreement_gain(s.gain);
      if (s.sqnr_db) layer->set_sqnr_db(*s.sqnr_db);
    }
    for (const std::string& layer : t.fp32_layers) tuning->add_fp32_layers(layer);
    tuning->set_seconds(t.seconds);
  }
}

void ToProto(const engine::Trial& trial, v1::TuningTrial* out) {
  out->set_index(static_cast<uint32_t>(trial.index));
  out->set_stage(trial.stage);
  out->set_activation_observer(trial.settings);
  for (const std::string& layer : trial.fp32_layers) out->add_fp32_layers(layer);
  if (trial.score.top1) out->set_top1(*trial.score.top1);
  out->set_top1_agreement(trial.score.agreement);
  out->set_output_sqnr_db(trial.score.output_sqnr_db);
  out->set_seconds(trial.seconds);
  out->set_meets_goal(trial.meets_goal);
  out->set_error(trial.error);
}

void ToProto(const engine::CpuInt8Report& cpu, v1::CpuInfo* out) {
  out->set_model(cpu.model_name);
  for (const std::string& f : cpu.features) out->add_features(f);
  out->set_onednn_isa(cpu.onednn_isa);
  out->set_kernel_isa(cpu.kernel_isa);
  for (const auto& s : cpu.saturating_engines) {
    v1::SaturatingEngine* engine = out->add_saturating_engines();
    engine->set_engine(s.engine);
    for (const std::string& op : s.ops) engine->add_ops(op);
  }
}

void ToProto(const worker::Job& job, v1::Job* out) {
  out->set_id(job.id);
  out->set_state(static_cast<v1::JobState>(static_cast<int>(job.state)));
  out->set_phase(ToProtoPhase(job.phase));
  *out->mutable_create_time() = ToTimestamp(job.create_time);
  if (job.start_time.has_value()) *out->mutable_start_time() = ToTimestamp(*job.start_time);
  if (job.finish_time.has_value()) *out->mutable_finish_time() = ToTimestamp(*job.finish_time);
  out->mutable_request()->ParseFromString(job.request_echo);
  if (job.result.has_value()) ToProto(*job.result, out->mutable_result());
  out->set_attempt_count(job.attempt_count);
  out->set_submitted_by(job.owner);
}

void ToProto(const worker::JobEvent& event, v1::JobEvent* out) {
  using Kind = worker::JobEvent::Kind;
  out->set_job_id(event.job_id);
  *out->mutable_event_time() = ToTimestamp(event.time);
  out->set_sequence(event.sequence);
  switch (event.kind) {
    case Kind::kSnapshot: ToProto(event.snapshot, out->mutable_snapshot()); break;
    case Kind::kStateChanged:
      out->set_state_changed(static_cast<v1::JobState>(static_cast<int>(event.state)));
      break;
    case Kind::kPhaseStarted: out->set_phase_started(ToProtoPhase(event.phase.phase)); break;
    case Kind::kPhaseFinished:
      out->mutable_phase_finished()->set_phase(ToProtoPhase(event.phase.phase));
      out->mutable_phase_finished()->set_seconds(event.phase.seconds);
      break;
    case Kind::kCalibrationProgress: {
      auto* p = out->mutable_calibration_progress();
      p->set_batches_done(static_cast<uint32_t>(event.batches_done));
      p->set_batches_total(static_cast<uint32_t>(event.batches_total));
      p->set_samples_done(static_cast<uint64_t>(event.samples_done));
      break;
    }
    case Kind::kResult: ToProto(event.result, out->mutable_result()); break;
    case Kind::kTrialFinished: {
      v1::TuningProgress* p = out->mutable_tuning_progress();
      ToProto(event.trial, p->mutable_trial());
      p->set_trials_done(static_cast<uint32_t>(event.batches_done));
      p->set_trial_budget(static_cast<uint32_t>(event.batches_total));
      break;
    }
    case Kind::kSubmitted: break;  // observers only, never streamed
  }
}

void ToProto(const engine::ArtifactRequirements& r, v1::ArtifactRequirements* out) {
  out->set_kernel_engine(r.kernel_engine);
  out->set_activation_quant_max(r.activation_quant_max);
  out->set_needs_non_saturating_u8s8(r.needs_non_saturating_u8s8);
}

void ToProto(const worker::ModelVersion& version, const worker::Job* job, bool loaded,
             const worker::Evaluation* last_evaluation, v1::ModelVersionInfo* out) {
  out->set_name(version.name);
  out->set_version(static_cast<uint64_t>(version.version));
  out->set_job_id(version.job_id);
  *out->mutable_create_time() = ToTimestamp(version.create_time);
  out->set_loaded(loaded);
  if (last_evaluation != nullptr && last_evaluation->report.has_value()) {
    const worker::EvaluationReport& report = *last_evaluation->report;
    v1::EvaluationSummary* summary = out->mutable_last_evaluation();
    summary->set_evaluation_id(last_evaluation->id);
    *summary->mutable_finish_time() = ToTimestamp(last_evaluation->finish_time.value_or(last_evaluation->update_time));
    AccuracyToProto(engine::Accuracy{report.int8.top1_correct, report.samples}, summary->mutable_int8_accuracy());
    if (report.fp32.has_value()) {
      AccuracyToProto(engine::Accuracy{report.fp32->top1_correct, report.samples}, summary->mutable_fp32_accuracy());
    }
  }
  if (job == nullptr || !job->result.has_value()) return;
  out->set_artifact_id(job->result->artifact_id);
  if (job->result->report.int8_accuracy) AccuracyToProto(*job->result->report.int8_accuracy, out->mutable_int8_accuracy());
  if (job->result->report.fp32_accuracy) AccuracyToProto(*job->result->report.fp32_accuracy, out->mutable_fp32_accuracy());
}

void ArtifactToProto(const worker::Job& job, v1::Artifact* out) {
  v1::QuantizeJobRequest request;
  request.ParseFromString(job.request_echo);
  const worker::JobResult& r = *job.result;
  out->set_id(r.artifact_id);
  out->set_sha256(r.artifact_sha256);
  out->set_size_bytes(static_cast<uint64_t>(r.artifact_size_bytes));
  out->set_job_id(job.id);
  if (job.finish_time.has_value()) *out->mutable_create_time() = ToTimestamp(*job.finish_time);
  out->set_kernel_engine(r.report.kernel_engine);
  out->set_qconfig_description(r.report.qconfig_description);
  *out->mutable_source_model() = request.model();
  *out->mutable_preprocessing() = request.preprocessing();
  if (r.report.fp32_accuracy.has_value()) AccuracyToProto(*r.report.fp32_accuracy, out->mutable_fp32_accuracy());
  if (r.report.int8_accuracy.has_value()) AccuracyToProto(*r.report.int8_accuracy, out->mutable_int8_accuracy());
  engine::ArtifactRequirements requirements = r.report.requirements;
  if (requirements.kernel_engine.empty()) {  // made before quantd recorded requirements: assume the worst
    requirements.kernel_engine = r.report.kernel_engine;
    requirements.needs_non_saturating_u8s8 = requirements.kernel_engine != "qnnpack";
  }
  ToProto(requirements, out->mutable_requirements());
  absl::StatusOr<std::string> runtime = engine::KernelEngineForArtifact(requirements, /*allow_reroute=*/true);
  if (runtime.ok()) {
    out->set_runtime_kernel_engine(*runtime);
  } else {
    out->set_runtime_problem(std::string(runtime.status().message()));
  }
}

absl::StatusOr<worker::JobState> FromProto(v1::JobState state) {
  if (state >= v1::JOB_STATE_QUEUED && state <= v1::JOB_STATE_CANCELLED) {
    return static_cast<worker::JobState>(static_cast<int>(state));
  }
  return absl::InvalidArgumentError(absl::StrCat("states: unknown job state ", static_cast<int>(state)));
}

absl::StatusOr<worker::EvaluationSpec> EvaluationSpecFromRequest(const v1::EvaluateRequest& request,
                                                                 const ReferenceResolver& resolver) {
  worker::EvaluationSpec spec;
  if (request.model_name().empty()) return absl::InvalidArgumentError("model_name: required");
  std::string base;
  bool fp32 = false;
  QUANTD_RETURN_IF_ERROR(worker::ModelRepository::ParseName(request.model_name(), "model_name", &base, &fp32));
  if (fp32) {
    // Served under that name, so not a bad name: the wrong one here.
    return absl::InvalidArgumentError(absl::StrCat(
        "model_name: \"", request.model_name(), "\" is a version's FP32 source; evaluate the published name \"",
        base, "\", which measures its int8 model and this FP32 source side by side"));
  }
  spec.model_name = request.model_name();
  QUANTD_ASSIGN_OR_RETURN(spec.model_version, ParseModelVersion(request.model_version(), "model_version"));
  if (!request.has_dataset()) return absl::InvalidArgumentError("dataset: required");
  QUANTD_ASSIGN_OR_RETURN(spec.dataset_reference, ResolveDataset(request.dataset(), "dataset", resolver, &spec.dataset));
  QUANTD_RETURN_IF_ERROR(RequireLabels(spec.dataset, "dataset", "to evaluate"));
  spec.max_samples = request.max_samples();
  spec.batch_size = request.batch_size() == 0 ? 256 : request.batch_size();
  if (spec.batch_size > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("batch_size: ", spec.batch_size, " is above 4096"));
  }
  spec.skip_fp32 = request.skip_fp32();
  return spec;
}

namespace {

void ToProto(const worker::PrecisionResult& p, uint64_t samples, v1::PrecisionEvaluation* out) {
  out->set_top1_correct(static_cast<uint64_t>(p.top1_correct));
  out->set_top5_correct(static_cast<uint64_t>(p.top5_correct));
  out->set_top1(samples == 0 ? 0.0 : static_cast<double>(p.top1_correct) / static_cast<double>(samples));
  out->set_top5(samples == 0 ? 0.0 : static_cast<double>(p.top5_correct) / static_cast<double>(samples));
  out->set_seconds(p.seconds);
  out->set_images_per_second(p.seconds > 0 ? static_cast<double>(samples) / p.seconds : 0.0);
  for (int64_t v : p.per_class_correct) out->add_per_class_correct(static_cast<uint64_t>(v));
  for (int64_t v : p.confusion) out->add_confusion(static_cast<uint64_t>(v));
}

}  // namespace

void ToProto(const worker::Evaluation& e, v1::Evaluation* out) {
  out->set_id(e.id);
  switch (e.state) {
    case worker::EvaluationState::kRunning: out->set_state(v1::EVALUATION_STATE_RUNNING); break;
    case worker::EvaluationState::kSucceeded: out->set_state(v1::EVALUATION_STATE_SUCCEEDED); break;
    case worker::EvaluationState::kFailed: out->set_state(v1::EVALUATION_STATE_FAILED); break;
    case worker::EvaluationState::kCancelled: out->set_state(v1::EVALUATION_STATE_CANCELLED); break;
  }
  out->set_model_name(e.spec.model_name);
  out->set_model_version(e.spec.model_version);
  *out->mutable_create_time() = ToTimestamp(e.create_time);
  if (e.finish_time.has_value()) *out->mutable_finish_time() = ToTimestamp(*e.finish_time);
  out->set_samples_done(static_cast<uint64_t>(e.samples_done));
  out->set_samples_total(static_cast<uint64_t>(e.samples_total));
  if (e.state == worker::EvaluationState::kFailed || e.state == worker::EvaluationState::kCancelled) {
    out->set_error_code(absl::StatusCodeToString(e.error_code));
    out->set_error(e.error_message);
  }
  if (!e.report.has_value()) return;
  const worker::EvaluationReport& r = *e.report;
  v1::EvaluationReport* report = out->mutable_report();
  const uint64_t samples = static_cast<uint64_t>(r.samples);
  report->set_samples(samples);
  report->set_classes(static_cast<uint32_t>(r.classes));
  for (const std::string& name : r.class_names) report->add_class_names(name);
  for (int64_t v : r.per_class_total) report->add_per_class_total(static_cast<uint64_t>(v));
  report->set_kernel_engine(r.kernel_engine);
  ToProto(r.int8, samples, report->mutable_int8());
  if (r.fp32.has_value()) {
    ToProto(*r.fp32, samples, report->mutable_fp32());
    report->set_agreement(static_cast<uint64_t>(r.agreement));
    for (int64_t v : r.per_class_agreement) report->add_per_class_agreement(static_cast<uint64_t>(v));
    // Unset only for identical scores (+inf); -inf and NaN say what went wrong.
    if (!(std::isinf(r.output_sqnr_db) && r.output_sqnr_db > 0)) report->set_output_sqnr_db(r.output_sqnr_db);
    for (int64_t v : r.first_disagreements) report->add_first_disagreements(static_cast<uint64_t>(v));
  }
}

}  // namespace quantd
