#ifndef QUANTD_WORKER_ENGINE_DATA_DATASET_SPEC_H_
#define QUANTD_WORKER_ENGINE_DATA_DATASET_SPEC_H_

// Where a dataset is and how to read it. Free of LibTorch headers: the
// worker and the tools fill it in.

#include <cstdint>
#include <string>
#include <vector>

namespace quantd::engine {

enum class DatasetFormat { kCifar10Binary, kNpy };

// Applied to every image after conversion to float32 NCHW:
// x = (pixel * scale - mean[c]) / std[c]. The defaults keep raw pixel values,
// which is what the MLPerf Tiny ResNet8 expects.
struct Preprocessing {
  double scale = 1.0;
  std::vector<double> mean;
  std::vector<double> std;
};

struct DatasetSpec {
  DatasetFormat format = DatasetFormat::kCifar10Binary;
  std::string path;         // CIFAR-10 .bin, or the images .npy
  std::string labels_path;  // .npy only; optional for calibration
  std::string layout = "auto";  // .npy images: "NCHW", "NHWC" or "auto"
  Preprocessing preprocessing;
  int64_t samples_per_class = 0;  // > 0: stratified selection (needs labels)
  uint64_t seed = 0;              // for the stratified selection
  int64_t limit = 0;              // > 0: first `limit` selected samples only
};

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_DATA_DATASET_SPEC_H_
