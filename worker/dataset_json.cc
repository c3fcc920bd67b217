#include "worker/dataset_json.h"

namespace quantd::worker {

using nlohmann::json;

json EncodeDataset(const engine::DatasetSpec& d) {
  return json{{"format", d.format == engine::DatasetFormat::kNpy ? "npy" : "cifar10"},
              {"path", d.path},
              {"labels_path", d.labels_path},
              {"layout", d.layout},
              {"scale", d.preprocessing.scale},
              {"mean", d.preprocessing.mean},
              {"std", d.preprocessing.std},
              {"samples_per_class", d.samples_per_class},
              {"seed", d.seed},
              {"limit", d.limit}};
}

engine::DatasetSpec DecodeDataset(const json& j) {
  engine::DatasetSpec d;
  d.format = j.at("format").get<std::string>() == "npy" ? engine::DatasetFormat::kNpy
                                                        : engine::DatasetFormat::kCifar10Binary;
  d.path = j.at("path").get<std::string>();
  d.labels_path = j.at("labels_path").get<std::string>();
  d.layout = j.at("layout").get<std::string>();
  d.preprocessing.scale = j.at("scale").get<double>();
  d.preprocessing.mean = j.at("mean").get<std::vector<double>>();
  d.preprocessing.std = j.at("std").get<std::vector<double>>();
  d.samples_per_class = j.at("samples_per_class").get<int64_t>();
  d.seed = j.at("seed").get<uint64_t>();
  d.limit = j.at("limit").get<int64_t>();
  return d;
}

}  // namespace quantd::worker
