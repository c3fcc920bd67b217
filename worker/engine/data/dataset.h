#ifndef QUANTD_WORKER_ENGINE_DATA_DATASET_H_
#define QUANTD_WORKER_ENGINE_DATA_DATASET_H_

// Labeled image datasets read in batches from disk, so memory does not grow
// with the size of the set: CIFAR-10 binary and NumPy .npy.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/engine/data/batch_limits.h"
#include "worker/engine/data/dataset_spec.h"

namespace quantd::engine {

struct Batch {
  at::Tensor images;  // float32 [N, C, H, W]
  at::Tensor labels;  // int64 [N], or undefined when the set has no labels
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;  // number of selected samples
  virtual bool has_labels() const = 0;
  virtual std::vector<int64_t> sample_shape() const = 0;  // {C, H, W}
  // Selected samples [start, start + count), in selection order.
  virtual absl::StatusOr<Batch> ReadBatch(int64_t start, int64_t count) = 0;
  // The labels of the first `count` selected samples, without reading their
  // images (both formats hold labels in memory); empty without labels.
  virtual std::vector<int64_t> SelectedLabels(int64_t count) const = 0;
  // sha256 of the underlying file(s) and of the selection.
  virtual absl::StatusOr<std::string> Fingerprint() const = 0;
  // INVALID_ARGUMENT naming the first selected image that holds a NaN or an
  // infinity, read now rather than when its batch comes (after calibration,
  // for an evaluation set). Only float files are read: uint8 cannot hold one.
  virtual absl::Status CheckFinite() = 0;
};

// Opens and validates a dataset file before anything is allocated from its
// numbers (dims, counts and byte sizes are checked against the file size).
absl::StatusOr<std::unique_ptr<Dataset>> OpenDataset(const DatasetSpec& spec);

// Labels must each name one of the model's `classes` outputs: one outside
// (1-based labels, a 10-class file for a 5-class model) would silently count
// as wrong. INVALID_ARGUMENT naming `field` and the label.
absl::Status CheckLabelsInRange(const at::Tensor& labels, int64_t classes, absl::string_view field,
                                int64_t first_sample = 0);

// Whether a model's output can be scored for top-1: [N, classes], two classes or more.
inline bool IsClassifierOutput(const at::Tensor& t) { return t.dim() == 2 && t.size(1) > 1; }

// CheckBatchBytes (batch_limits.h) for this dataset's images, in batches of
// `batch_size` or, where the dataset is smaller, the whole dataset.
absl::Status CheckBatchBytes(const Dataset& dataset, int64_t batch_size, int64_t max_bytes, absl::string_view field);

// The parsed dict of a .npy header ("{'descr': '<f4', 'fortran_order': False,
// 'shape': (N, C, H, W), }"); data_offset is set by the file reader.
struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  std::vector<int64_t> shape;
  int64_t data_offset = 0;
};
absl::StatusOr<NpyHeader> ParseNpyHeaderDict(absl::string_view header);

// Indices of a stratified sample: `per_class` of each label (all when 0),
// chosen with a fixed-seed shuffle, returned in increasing order.
absl::StatusOr<std::vector<int64_t>> StratifiedSelection(const std::vector<int64_t>& labels, int64_t per_class,
                                                         uint64_t seed);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_DATA_DATASET_H_
