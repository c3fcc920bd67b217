#include "worker/engine/data/image_reader.h"

#include <ATen/ATen.h>

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"
#include "worker/engine/data/dataset.h"

namespace quantd::engine {
namespace {

class DatasetImageReader : public ImageReader {
 public:
  explicit DatasetImageReader(std::unique_ptr<Dataset> dataset) : dataset_(std::move(dataset)) {}
  int64_t size() const override { return dataset_->size(); }
  std::vector<int64_t> sample_shape() const override { return dataset_->sample_shape(); }

  // Everything, ReadBatch's tensors included, runs guarded: a failed
  // allocation is a status, never an exception on the caller's thread (an
  // evaluation's thread had no handler for one).
  absl::StatusOr<ImageBatch> Read(int64_t start, int64_t count) override {
    return GuardEntryPoint("reading a dataset batch", [&]() -> absl::StatusOr<ImageBatch> {
      QUANTD_ASSIGN_OR_RETURN(Batch batch, dataset_->ReadBatch(start, count));
      ImageBatch out;
      const at::Tensor images = batch.images.to(at::kFloat).contiguous();
      const at::Tensor labels = batch.labels.to(at::kLong).contiguous();
      out.count = images.size(0);
      out.pixels.resize(static_cast<size_t>(images.numel()));
      std::memcpy(out.pixels.data(), images.data_ptr<float>(), out.pixels.size() * sizeof(float));
      out.labels.assign(labels.data_ptr<int64_t>(), labels.data_ptr<int64_t>() + labels.numel());
      return out;
    });
  }

  std::vector<int64_t> Labels(int64_t count) const override { return dataset_->SelectedLabels(count); }

 private:
  std::unique_ptr<Dataset> dataset_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ImageReader>> ImageReader::Open(const DatasetSpec& spec) {
  DatasetSpec raw = spec;
  raw.preprocessing = Preprocessing();
  QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<Dataset> dataset, OpenDataset(raw));
  if (!dataset->has_labels()) {
    return absl::InvalidArgumentError(absl::StrCat(spec.path, ": no labels (a .npy set needs its labels file)"));
  }
  return std::make_unique<DatasetImageReader>(std::move(dataset));
}

absl::Status CheckDatasetFiles(const DatasetSpec& spec) { return OpenDataset(spec).status(); }

}  // namespace quantd::engine
