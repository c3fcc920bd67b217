#include "worker/engine/data/dataset.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "worker/engine/base/sha256.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"
#include "worker/engine/data/dataset_bytes_check.h"

namespace quantd::engine {
namespace {

// Fixed-size records in one file: image i starts at offset(i).
class RecordFile {
 public:
  absl::Status Open(const std::string& path) {
    path_ = path;
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) return absl::NotFoundError(absl::StrCat("dataset file not found: ", path));
    size_ = static_cast<int64_t>(std::filesystem::file_size(path, ec));
    in_.open(path, std::ios::binary);
    if (!in_) return absl::NotFoundError(absl::StrCat("cannot open dataset file ", path));
    return absl::OkStatus();
  }
  absl::Status Read(int64_t offset, char* out, int64_t n) {
    in_.clear();
    in_.seekg(offset);
    in_.read(out, n);
    if (in_.gcount() != n) return absl::DataLossError(absl::StrCat("short read in ", path_, " at byte ", offset));
    return absl::OkStatus();
  }
  int64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ifstream in_;
  int64_t size_ = 0;
};

// Shared by both formats: selection, batching, preprocessing.
class FileDataset : public Dataset {
 public:
  int64_t size() const override { return static_cast<int64_t>(selection_.size()); }
  bool has_labels() const override { return !labels_.empty(); }
  std::vector<int64_t> sample_shape() const override { return {channels_, height_, width_}; }

  absl::StatusOr<Batch> ReadBatch(int64_t start, int64_t count) override {
    if (start < 0 || count <= 0 || start + count > size()) {
      return absl::OutOfRangeError(absl::StrCat("batch [", start, ", ", start + count, ") outside dataset of ", size()));
    }
    const int64_t pixels = channels_ * height_ * width_;
    std::vector<char> record(static_cast<size_t>(pixels * element_size_));
    at::Tensor images = at::empty({count, channels_, height_, width_}, at::kFloat);
    float* dst = images.data_ptr<float>();
    for (int64_t i = 0; i < count; ++i) {
      const int64_t index = selection_[static_cast<size_t>(start + i)];
      QUANTD_RETURN_IF_ERROR(images_.Read(ImageOffset(index), record.data(), pixels * element_size_));
      float* out = dst + i * pixels;
      if (element_size_ == 1 && !channels_last_) {  // CIFAR-10: uint8 planes, as stored
        const auto* bytes = reinterpret_cast<const unsigned char*>(record.data());
        for (int64_t p = 0; p < pixels; ++p) out[p] = static_cast<float>(bytes[p]);
        continue;
      }
      for (int64_t c = 0; c < channels_; ++c) {
        for (int64_t p = 0; p < height_ * width_; ++p) {
          // Source element for channel c, pixel p in the file's layout.
          const int64_t src = channels_last_ ? p * channels_ + c : c * height_ * width_ + p;
          float v;
          if (element_size_ == 1) {
            v = static_cast<float>(static_cast<unsigned char>(record[static_cast<size_t>(src)]));
          } else {
            std::memcpy(&v, record.data() + src * 4, 4);
            // A NaN or infinity would reach the observers and make a NaN
            // scale that nothing downstream reports.
            if (!std::isfinite(v)) {
              return absl::InvalidArgumentError(absl::StrCat(images_.path(), ": image ", index, " has ",
                                                             std::isnan(v) ? "a NaN" : "an infinite", " value"));
            }
          }
          out[c * height_ * width_ + p] = v;
        }
      }
    }
    QUANTD_RETURN_IF_ERROR(ApplyPreprocessing(&images));
    Batch batch;
    batch.images = images;
    if (has_labels()) {
      batch.labels = at::empty({count}, at::kLong);
      int64_t* labels = batch.labels.data_ptr<int64_t>();
      for (int64_t i = 0; i < count; ++i) {
        labels[i] = labels_[static_cast<size_t>(selection_[static_cast<size_t>(start + i)])];
      }
    }
    return batch;
  }

  std::vector<int64_t> SelectedLabels(int64_t count) const override {
    std::vector<int64_t> labels;
    if (!has_labels()) return labels;
    const auto n = static_cast<size_t>(std::clamp<int64_t>(count, 0, size()));
    labels.reserve(n);
    for (size_t i = 0; i < n; ++i) labels.push_back(labels_[static_cast<size_t>(selection_[i])]);
    return labels;
  }

  absl::Status CheckFinite() override {
    if (element_size_ == 1) return absl::OkStatus();
    // ReadBatch refuses them, naming the image; 16 MiB of images at a time.
    const int64_t image_bytes = std::max<int64_t>(1, channels_ * height_ * width_ * 4);
    const int64_t step = std::max<int64_t>(1, (int64_t{16} << 20) / image_bytes);
    for (int64_t start = 0; start < size(); start += step) {
      QUANTD_RETURN_IF_ERROR(ReadBatch(start, std::min(step, size() - start)).status());
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> Fingerprint() const override {
    Sha256 hasher;
    for (const std::string& path : files_) {
      QUANTD_ASSIGN_OR_RETURN(std::string digest, Sha256File(path));
      hasher.Update(digest);
    }
    hasher.Update(absl::StrJoin(selection_, ","));
    return hasher.HexDigest();
  }

 protected:
  absl::Status Select(const DatasetSpec& spec, int64_t total) {
    if (total == 0) return absl::InvalidArgumentError(absl::StrCat("dataset ", spec.path, " is empty"));
    if (spec.samples_per_class > 0) {
      if (labels_.empty()) {
        return absl::InvalidArgumentError("samples_per_class needs labels: the dataset has none");
      }
      QUANTD_ASSIGN_OR_RETURN(selection_, StratifiedSelection(labels_, spec.samples_per_class, spec.seed));
    } else {
      selection_.resize(static_cast<size_t>(total));
      for (int64_t i = 0; i < total; ++i) selection_[static_cast<size_t>(i)] = i;
    }
    if (spec.limit > 0 && static_cast<int64_t>(selection_.size()) > spec.limit) {
      selection_.resize(static_cast<size_t>(spec.limit));
    }
    preprocessing_ = spec.preprocessing;
    const auto channels = static_cast<size_t>(channels_);
    if (!preprocessing_.mean.empty() && preprocessing_.mean.size() != channels) {
      return absl::InvalidArgumentError(absl::StrCat("preprocessing.mean has ", preprocessing_.mean.size(),
                                                     " values, the images have ", channels_, " channels"));
    }
    if (!preprocessing_.std.empty() && preprocessing_.std.size() != channels) {
      return absl::InvalidArgumentError(absl::StrCat("preprocessing.std has ", preprocessing_.std.size(),
                                                     " values, the images have ", channels_, " channels"));
    }
    for (double s : preprocessing_.std) {
      if (s == 0.0) return absl::InvalidArgumentError("preprocessing.std has a zero");
    }
    return absl::OkStatus();
  }

  absl::Status ApplyPreprocessing(at::Tensor* images) const {
    if (preprocessing_.scale != 1.0) images->mul_(preprocessing_.scale);
    if (!preprocessing_.mean.empty()) {
      images->sub_(at::tensor(preprocessing_.mean, at::kDouble).to(at::kFloat).view({1, channels_, 1, 1}));
    }
    if (!preprocessing_.std.empty()) {
      images->div_(at::tensor(preprocessing_.std, at::kDouble).to(at::kFloat).view({1, channels_, 1, 1}));
    }
    return absl::OkStatus();
  }

  virtual int64_t ImageOffset(int64_t index) const = 0;

  RecordFile images_;
  std::vector<std::string> files_;
  std::vector<int64_t> labels_;
  std::vector<int64_t> selection_;
  Preprocessing preprocessing_;
  int64_t channels_ = 0, height_ = 0, width_ = 0;
  int64_t element_size_ = 1;
  bool channels_last_ = false;
};

class Cifar10Dataset : public FileDataset {
 public:
  static constexpr int64_t kRecord = kCifar10RecordBytes;

  absl::Status Open(const DatasetSpec& spec) {
    QUANTD_RETURN_IF_ERROR(images_.Open(spec.path));
    files_.push_back(spec.path);
    QUANTD_RETURN_IF_ERROR(CheckCifar10Size(images_.size(), absl::StrCat("CIFAR-10 file ", spec.path)));
    const int64_t total = images_.size() / kRecord;
    channels_ = 3;
    height_ = width_ = 32;
    labels_.resize(static_cast<size_t>(total));
    std::ifstream in(spec.path, std::ios::binary);
    std::vector<char> record(kRecord);
    for (int64_t i = 0; i < total; ++i) {
      in.read(record.data(), kRecord);
      const int label = static_cast<unsigned char>(record[0]);
      if (label >= kCifar10Classes) {
        return absl::InvalidArgumentError(absl::StrCat("CIFAR-10 file ", spec.path, ": record ", i, " has label ", label,
                                                       " (must be 0..9)"));
      }
      labels_[static_cast<size_t>(i)] = label;
    }
    return Select(spec, total);
  }

 protected:
  int64_t ImageOffset(int64_t index) const override { return index * kRecord + 1; }
};

// The value text after 'key': in a .npy header dict, or NotFound.
absl::StatusOr<absl::string_view> NpyField(absl::string_view header, absl::string_view key) {
  const std::string quoted = absl::StrCat("'", key, "'");
  const size_t pos = header.find(quoted);
  if (pos == absl::string_view::npos) return absl::NotFoundError(absl::StrCat("no '", key, "' key"));
  const size_t colon = header.find(':', pos + quoted.size());
  if (colon == absl::string_view::npos) return absl::InvalidArgumentError(absl::StrCat("no ':' after '", key, "'"));
  return absl::StripLeadingAsciiWhitespace(header.substr(colon + 1));
}

}  // namespace

absl::StatusOr<NpyHeader> ParseNpyHeaderDict(absl::string_view header) {
  NpyHeader h;
  auto bad = [](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(".npy header: ", what));
  };
  absl::StatusOr<absl::string_view> descr = NpyField(header, "descr");
  if (!descr.ok()) return bad(descr.status().message());
  if (descr->size() < 2 || (descr->front() != '\'' && descr->front() != '"')) return bad("descr is not a quoted string");
  const size_t descr_end = descr->find(descr->front(), 1);
  if (descr_end == absl::string_view::npos) return bad("descr string is not closed");
  h.descr = std::string(descr->substr(1, descr_end - 1));

  absl::StatusOr<absl::string_view> fortran = NpyField(header, "fortran_order");
  if (!fortran.ok()) return bad(fortran.status().message());
  if (absl::StartsWith(*fortran, "True")) {
    h.fortran_order = true;
  } else if (!absl::StartsWith(*fortran, "False")) {
    return bad("fortran_order is neither True nor False");
  }

  absl::StatusOr<absl::string_view> shape = NpyField(header, "shape");
  if (!shape.ok()) return bad(shape.status().message());
  if (shape->empty() || shape->front() != '(') return bad("shape is not a tuple");
  const size_t close = shape->find(')');
  if (close == absl::string_view::npos) return bad("shape tuple is not closed");
  for (absl::string_view part : absl::StrSplit(shape->substr(1, close - 1), ',', absl::SkipWhitespace())) {
    int64_t dim = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &dim) || dim < 0) {
      return bad(absl::StrCat("shape has '", absl::StripAsciiWhitespace(part), "', not a dimension >= 0"));
    }
    if (h.shape.size() >= 8) return bad("shape has more than 8 dimensions");
    h.shape.push_back(dim);
  }
  return h;
}

namespace {

absl::StatusOr<NpyHeader> ReadNpyHeader(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open .npy file ", path));
  char magic[8];
  in.read(magic, 8);
  if (in.gcount() != 8 || absl::string_view(magic, kNpyMagic.size()) != kNpyMagic) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a .npy file (bad magic)"));
  }
  const int major = static_cast<unsigned char>(magic[6]);
  uint32_t header_len = 0;
  int64_t prefix = 0;
  if (major == 1) {
    unsigned char len[2];
    in.read(reinterpret_cast<char*>(len), 2);
    header_len = len[0] | (len[1] << 8);
    prefix = 10;
  } else if (major == 2 || major == 3) {
    unsigned char len[4];
    in.read(reinterpret_cast<char*>(len), 4);
    header_len = len[0] | (len[1] << 8) | (len[2] << 16) | (static_cast<uint32_t>(len[3]) << 24);
    prefix = 12;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(path, ": .npy format version ", major, " is not supported (1..3)"));
  }
  if (!in || header_len > (1u << 20)) return absl::InvalidArgumentError(absl::StrCat(path, ": bad .npy header length"));
  std::string header(header_len, '\0');
  in.read(header.data(), header_len);
  if (static_cast<uint32_t>(in.gcount()) != header_len) return absl::InvalidArgumentError(absl::StrCat(path, ": truncated .npy header"));
  absl::StatusOr<NpyHeader> h = ParseNpyHeaderDict(header);
  if (!h.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", h.status().message()));
  h->data_offset = prefix + header_len;
  return h;
}

class NpyDataset : public FileDataset {
 public:
  absl::Status Open(const DatasetSpec& spec) {
    QUANTD_ASSIGN_OR_RETURN(NpyHeader h, ReadNpyHeader(spec.path));
    if (h.fortran_order) return absl::InvalidArgumentError(absl::StrCat(spec.path, ": Fortran-order arrays are not supported"));
    if (h.descr == "|u1" || h.descr == "<u1") {
      element_size_ = 1;
    } else if (h.descr == "<f4") {
      element_size_ = 4;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(spec.path, ": image dtype ", h.descr, " is not supported (uint8 or float32)"));
    }
    if (h.shape.size() != 4) return absl::InvalidArgumentError(absl::StrCat(spec.path, ": images must be 4-D (N,C,H,W or N,H,W,C)"));
    std::string layout = spec.layout;
    // Channel counts are 1 or 3: a trailing 1/3 after a non-1/3 dim means NHWC.
    auto is_channels = [](int64_t d) { return d == 1 || d == 3; };
    if (layout == "auto" || layout.empty()) layout = (is_channels(h.shape[3]) && !is_channels(h.shape[1])) ? "NHWC" : "NCHW";
    if (layout == "NHWC") {
      channels_last_ = true;
      height_ = h.shape[1];
      width_ = h.shape[2];
      channels_ = h.shape[3];
    } else if (layout == "NCHW") {
      channels_ = h.shape[1];
      height_ = h.shape[2];
      width_ = h.shape[3];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("layout must be NCHW, NHWC or auto, not '", spec.layout, "'"));
    }
    if (channels_ < 1 || height_ < 1 || width_ < 1) {
      return absl::InvalidArgumentError(absl::StrCat(spec.path, ": images have an empty dimension (C=", channels_,
                                                     ", H=", height_, ", W=", width_, ")"));
    }
    // One image must fit a sane buffer; the count must fit the file. Both
    // checked by division so that no product of header numbers overflows.
    constexpr int64_t kMaxImageBytes = int64_t{1} << 28;
    if (channels_ > kMaxImageBytes / height_ / width_ / element_size_) {
      return absl::InvalidArgumentError(absl::StrCat(spec.path, ": one image of ", channels_, "x", height_, "x", width_,
                                                     " is over the ", kMaxImageBytes >> 20, " MiB limit"));
    }
    const int64_t image_bytes = channels_ * height_ * width_ * element_size_;
    data_offset_ = h.data_offset;
    QUANTD_RETURN_IF_ERROR(images_.Open(spec.path));
    files_.push_back(spec.path);
    const int64_t total = h.shape[0];
    const int64_t available = images_.size() - data_offset_;
    if (available < 0 || total > available / image_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(".npy file ", spec.path, " is truncated: ", images_.size(),
                                                     " bytes, the header promises ", total, " images of ", image_bytes,
                                                     " bytes after ", data_offset_));
    }
    if (!spec.labels_path.empty()) QUANTD_RETURN_IF_ERROR(ReadLabels(spec.labels_path, total));
    return Select(spec, total);
  }

 protected:
  int64_t ImageOffset(int64_t index) const override {
    return data_offset_ + index * channels_ * height_ * width_ * element_size_;
  }

 private:
  absl::Status ReadLabels(const std::string& path, int64_t total) {
    QUANTD_ASSIGN_OR_RETURN(NpyHeader h, ReadNpyHeader(path));
    if (h.shape.size() != 1 || h.shape[0] != total) {
      return absl::InvalidArgumentError(absl::StrCat("labels ", path, " must be 1-D with ", total, " entries"));
    }
    // Any integer dtype: byte order ('<', '>', '|', '=' native little-endian
    // here), kind ('i' or 'u') and width.
    const std::string& d = h.descr;
    int width = 0;
    if (d.size() == 3 && (d[0] == '<' || d[0] == '>' || d[0] == '|' || d[0] == '=') && (d[1] == 'i' || d[1] == 'u')) {
      width = d[2] - '0';
    }
    if (width != 1 && width != 2 && width != 4 && width != 8) {
      return absl::InvalidArgumentError(absl::StrCat("labels ", path, ": dtype ", d,
                                                     " is not supported (an integer dtype: int8..int64, "
                                                     "uint8..uint64)"));
    }
    const bool is_signed = d[1] == 'i';
    const bool big_endian = d[0] == '>' && width > 1;
    RecordFile file;
    QUANTD_RETURN_IF_ERROR(file.Open(path));
    if (file.size() - h.data_offset < total * width) {  // total is already bounded by the image file
      return absl::InvalidArgumentError(absl::StrCat("labels ", path, " is truncated: ", file.size(),
                                                     " bytes for ", total, " labels of ", width, " bytes"));
    }
    std::vector<char> raw(static_cast<size_t>(total * width));
    QUANTD_RETURN_IF_ERROR(file.Read(h.data_offset, raw.data(), total * width));
    labels_.resize(static_cast<size_t>(total));
    for (int64_t i = 0; i < total; ++i) {
      uint64_t bits = 0;  // the value's bytes, least significant first
      for (int b = 0; b < width; ++b) {
        const size_t at = static_cast<size_t>(i * width + (big_endian ? width - 1 - b : b));
        bits |= static_cast<uint64_t>(static_cast<unsigned char>(raw[at])) << (8 * b);
      }
      const bool negative = is_signed && (bits >> (8 * width - 1)) != 0;
      if (negative) return absl::InvalidArgumentError(absl::StrCat("labels ", path, ": negative label at ", i));
      if (bits > static_cast<uint64_t>(INT64_MAX)) {
        return absl::InvalidArgumentError(absl::StrCat("labels ", path, ": label ", bits, " at ", i, " is too large"));
      }
      labels_[static_cast<size_t>(i)] = static_cast<int64_t>(bits);
    }
    files_.push_back(path);
    return absl::OkStatus();
  }

  int64_t data_offset_ = 0;
};

}  // namespace

namespace {
absl::StatusOr<std::unique_ptr<Dataset>> OpenDatasetUnguarded(const DatasetSpec& spec);
}  // namespace

absl::StatusOr<std::vector<int64_t>> StratifiedSelection(const std::vector<int64_t>& labels, int64_t per_class,
                                                         uint64_t seed) {
  std::map<int64_t, std::vector<int64_t>> by_class;
  for (size_t i = 0; i < labels.size(); ++i) by_class[labels[i]].push_back(static_cast<int64_t>(i));
  std::vector<int64_t> chosen;
  std::mt19937_64 rng(seed);
  for (auto& [label, indices] : by_class) {
    if (per_class > 0 && static_cast<int64_t>(indices.size()) < per_class) {
      return absl::InvalidArgumentError(absl::StrCat("samples_per_class=", per_class, " but class ", label, " has only ",
                                                     indices.size(), " samples"));
    }
    // Fisher-Yates with our own draws: std::shuffle's output is not portable.
    for (size_t i = indices.size(); i > 1; --i) {
      const size_t j = static_cast<size_t>(rng() % i);
      std::swap(indices[i - 1], indices[j]);
    }
    const size_t take = per_class > 0 ? static_cast<size_t>(per_class) : indices.size();
    chosen.insert(chosen.end(), indices.begin(), indices.begin() + static_cast<std::ptrdiff_t>(take));
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

absl::Status CheckLabelsInRange(const at::Tensor& labels, int64_t classes, absl::string_view field,
                                int64_t first_sample) {
  if (labels.numel() == 0) return absl::OkStatus();
  const at::Tensor outside = labels.lt(0).logical_or(labels.ge(classes));
  if (!outside.any().item<bool>()) return absl::OkStatus();
  const int64_t at = outside.nonzero()[0][0].item<int64_t>();
  return absl::InvalidArgumentError(absl::StrCat(field, ": sample ", first_sample + at, "'s label is ",
                                                 labels[at].item<int64_t>(), ", outside the model's ", classes,
                                                 " classes (labels are 0..", classes - 1, ")"));
}

absl::Status CheckBatchBytes(const Dataset& dataset, int64_t batch_size, int64_t max_bytes, absl::string_view field) {
  // No batch holds more than the set: a default batch size larger than a
  // small set of large images is not a request for more memory.
  return CheckBatchBytes(dataset.sample_shape(), std::min(batch_size, dataset.size()), max_bytes, field);
}

absl::StatusOr<std::unique_ptr<Dataset>> OpenDataset(const DatasetSpec& spec) {
  return GuardEntryPoint(absl::StrCat("opening dataset ", spec.path), [&] { return OpenDatasetUnguarded(spec); });
}

namespace {

absl::StatusOr<std::unique_ptr<Dataset>> OpenDatasetUnguarded(const DatasetSpec& spec) {
  if (spec.path.empty()) return absl::InvalidArgumentError("dataset path is empty");
  if (spec.format == DatasetFormat::kCifar10Binary) {
    auto dataset = std::make_unique<Cifar10Dataset>();
    QUANTD_RETURN_IF_ERROR(dataset->Open(spec));
    return std::unique_ptr<Dataset>(std::move(dataset));
  }
  auto dataset = std::make_unique<NpyDataset>();
  QUANTD_RETURN_IF_ERROR(dataset->Open(spec));
  return std::unique_ptr<Dataset>(std::move(dataset));
}

}  // namespace

}  // namespace quantd::engine
