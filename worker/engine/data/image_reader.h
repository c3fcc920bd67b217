#ifndef QUANTD_WORKER_ENGINE_DATA_IMAGE_READER_H_
#define QUANTD_WORKER_ENGINE_DATA_IMAGE_READER_H_

// A labelled dataset read in batches as plain float pixels, for code that
// must not see LibTorch (evaluation in the worker). Pixels come out as the
// file holds them, NCHW, with no preprocessing: whoever runs a model applies
// its own.

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/data/dataset_spec.h"

namespace quantd::engine {

struct ImageBatch {
  int64_t count = 0;
  std::vector<float> pixels;   // count samples of sample_shape(), NCHW
  std::vector<int64_t> labels;  // count labels
};

class ImageReader {
 public:
  virtual ~ImageReader() = default;
  // `spec`'s preprocessing is ignored; the set must have labels.
  static absl::StatusOr<std::unique_ptr<ImageReader>> Open(const DatasetSpec& spec);

  virtual int64_t size() const = 0;
  virtual std::vector<int64_t> sample_shape() const = 0;  // {C, H, W}
  virtual absl::StatusOr<ImageBatch> Read(int64_t start, int64_t count) = 0;
  // The labels of the first `count` samples, read without their images.
  virtual std::vector<int64_t> Labels(int64_t count) const = 0;
};

// Opens `spec`'s files as a job will (a .npy header, dtype and shape in
// `spec.layout`, a labels file and its count) without reading images, so
// that a bad file is refused when a job is submitted, not after calibration
// and tuning have run; a preprocessing mean or std without one value per
// channel of its images is refused too. The dataset's own codes and messages.
absl::Status CheckDatasetFiles(const DatasetSpec& spec);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_DATA_IMAGE_READER_H_
