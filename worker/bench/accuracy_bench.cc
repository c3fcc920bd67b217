// quantd-accuracy-bench: how accurate each qconfig's int8 model is, on the
// real fixtures, in one run (issue #12). For every qconfig and every
// calibration set: top-1 on the test images, top-1 agreement with FP32, and
// output SQNR against FP32, the int8 model run as served (its TorchScript
// artifact on this CPU's exact kernels). Fusion is automatic.
//
//   quantd-accuracy-bench --fixtures=DIR [--configs=NAME,...] [--seeds=N] [--threads=T] [--test_images=N]
//
// Calibration sets: calib_batch.bin (1000 training images), then 1000 drawn
// from val_batch.bin (100 per class) with seeds 1..N (default 5). Calibration
// and selection only ever see training images; the test set only scores.
// Prints a table, then JSON.

#include <algorithm>
#include <chrono>
#include <optional>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "worker/engine/data/image_reader.h"
#include "worker/engine/base/crash_report.h"
#include "worker/engine/predicted_class.h"
#include "worker/engine/quantizer.h"
#include "worker/engine/servable_model.h"

namespace {

using quantd::engine::QConfigChoice;

struct Config {
  std::string name;
  QConfigChoice qconfig;
  // Accuracy-aware mode on val_batch.bin: tolerance in points, against the
  // labels or against FP32's predictions.
  std::optional<double> tolerance_points;
  bool against_fp32 = false;
};

std::vector<Config> AllConfigs() {
  std::vector<Config> configs;
  for (const char* preset : {"fbgemm", "onednn", "qnnpack"}) {
    QConfigChoice q;
    q.preset = preset;
    configs.push_back({preset, q, std::nullopt, false});
  }
  {
    QConfigChoice best;
    best.preset = "best";
    configs.push_back({"best", best, std::nullopt, false});
    QConfigChoice fbgemm;
    fbgemm.preset = "fbgemm";
    configs.push_back({"aware-0.1", fbgemm, 0.1, false});
    configs.push_back({"aware-fp32-0.1", fbgemm, 0.1, true});
    configs.push_back({"aware-fp32-0.5", fbgemm, 0.5, true});
  }
  for (const char* activation : {"histogram", "mse", "percentile", "entropy"}) {
    for (const char* weight : {"per_channel_symmetric", "per_tensor_symmetric"}) {
      QConfigChoice q;
      q.preset = "";
      q.activation_observer = activation;
      q.weight_observer = weight;
      configs.push_back({absl::StrCat(activation, "/", absl::StrContains(weight, "channel") ? "pc" : "pt"), q,
                         std::nullopt, false});
    }
  }
  // Each plain qconfig again with bias correction: NAME+bc.
  const size_t plain = configs.size();
  for (size_t i = 0; i < plain; ++i) {
    if (configs[i].tolerance_points || configs[i].qconfig.preset == "best") continue;
    Config corrected = configs[i];
    corrected.name += "+bc";
    corrected.qconfig.bias_correction = true;
    configs.push_back(corrected);
  }
  // Each non-tuning config again with cross-layer equalization: NAME+cle.
  const size_t with_bc = configs.size();
  for (size_t i = 0; i < with_bc; ++i) {
    if (configs[i].tolerance_points) continue;
    Config equalized = configs[i];
    equalized.name += "+cle";
    equalized.qconfig.equalization = true;
    configs.push_back(equalized);
  }
  return configs;
}

std::string Flag(int argc, char** argv, const std::string& name, const std::string& fallback = "") {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    if (absl::StartsWith(argv[i], prefix)) return std::string(argv[i]).substr(prefix.size());
  }
  return fallback;
}

struct Scores {
  std::vector<float> values;  // [images, classes]
  int64_t classes = 0;
};

// Every test image through `model`, in batches of 500.
absl::StatusOr<Scores> Score(const quantd::engine::ServableModel& model, const quantd::engine::ImageBatch& test) {
  Scores scores;
  const int64_t per_image = static_cast<int64_t>(test.pixels.size()) / test.count;
  for (int64_t first = 0; first < test.count; first += 500) {
    const int64_t n = std::min<int64_t>(500, test.count - first);
    absl::StatusOr<quantd::engine::ServingOutput> out = model.Run(
        absl::MakeConstSpan(test.pixels.data() + first * per_image, static_cast<size_t>(n * per_image)),
        {n, 3, 32, 32});
    if (!out.ok()) return out.status();
    scores.classes = out->shape.at(1);
    scores.values.insert(scores.values.end(), out->values.begin(), out->values.end());
  }
  return scores;
}

int64_t Argmax(const Scores& s, int64_t i) {
  return quantd::engine::PredictedClass(s.values.data() + i * s.classes, s.classes);
}

}  // namespace

int main(int argc, char** argv) {
  // CI's 48-job run once died of SIGSEGV with no trace: the stack goes to stderr.
  quantd::engine::InstallCrashReport(argv[0]);
  const std::string fixtures = Flag(argc, argv, "fixtures");
  int seeds = 5, threads = 2;
  int64_t test_images = 10000;
  if (fixtures.empty() || !absl::SimpleAtoi(Flag(argc, argv, "seeds", "5"), &seeds) ||
      !absl::SimpleAtoi(Flag(argc, argv, "threads", "2"), &threads) ||
      !absl::SimpleAtoi(Flag(argc, argv, "test_images", "10000"), &test_images)) {
    std::cerr << "usage: quantd-accuracy-bench --fixtures=DIR [--configs=NAME,...] [--seeds=N] [--threads=T] "
                 "[--test_images=N]\n";
    return 2;
  }
  quantd::engine::InitializeRuntime(threads);
  std::vector<Config> configs = AllConfigs();
  if (const std::string only = Flag(argc, argv, "configs"); !only.empty()) {
    std::vector<std::string> wanted = absl::StrSplit(only, ',');
    std::vector<Config> chosen;
    for (const std::string& name : wanted) {
      auto it = std::find_if(configs.begin(), configs.end(), [&](const Config& c) { return c.name == name; });
      if (it == configs.end()) {
        std::cerr << "--configs: unknown configuration '" << name << "'\n";
        return 2;
      }
      chosen.push_back(*it);
    }
    configs = chosen;
  }

  quantd::engine::DatasetSpec test_spec;
  test_spec.path = fixtures + "/cifar10/test_batch.bin";
  auto reader = quantd::engine::ImageReader::Open(test_spec);
  if (!reader.ok()) {
    std::cerr << "--fixtures: " << reader.status() << "\n";
    return 1;
  }
  auto test = (*reader)->Read(0, std::min<int64_t>(test_images, (*reader)->size()));
  if (!test.ok()) {
    std::cerr << test.status() << "\n";
    return 1;
  }
  const std::string model_path = fixtures + "/models/resnet8_fp32.torchscript.pt";
  auto fp32_model = quantd::engine::ServableModel::LoadFp32(model_path);
  if (!fp32_model.ok()) {
    std::cerr << fp32_model.status() << "\n";
    return 1;
  }
  auto fp32 = Score(**fp32_model, *test);
  if (!fp32.ok()) {
    std::cerr << fp32.status() << "\n";
    return 1;
  }
  int64_t fp32_correct = 0;
  for (int64_t i = 0; i < test->count; ++i) fp32_correct += Argmax(*fp32, i) == test->labels[i];

  struct CalibrationSet {
    std::string name;
    quantd::engine::DatasetSpec spec;
  };
  std::vector<CalibrationSet> sets;
  {
    CalibrationSet calib{"calib", {}};
    calib.spec.path = fixtures + "/cifar10/calib_batch.bin";
    sets.push_back(calib);
    for (int seed = 1; seed <= seeds; ++seed) {
      CalibrationSet val{absl::StrCat("val seed ", seed), {}};
      val.spec.path = fixtures + "/cifar10/val_batch.bin";
      val.spec.samples_per_class = 100;
      val.spec.seed = static_cast<uint64_t>(seed);
      sets.push_back(val);
    }
  }

  std::printf("CPU: %s; FP32 top-1 %lld/%lld; int8 run as served; calibration on training images only\n",
              quantd::engine::CpuInt8Info().model_name.c_str(), static_cast<long long>(fp32_correct),
              static_cast<long long>(test->count));
  std::printf("%-16s %-11s %-8s %8s %10s %9s %7s\n", "qconfig", "calibration", "engine", "top-1", "agreement",
              "SQNR dB", "time s");
  nlohmann::json rows = nlohmann::json::array();
  for (const Config& config : configs) {
    for (const CalibrationSet& set : sets) {
      quantd::engine::QuantizeOptions options;
      options.model_path = model_path;
      options.calibration = set.spec;
      options.qconfig = config.qconfig;
      options.fusion.automatic = true;  // Conv+BN(+ReLU) and add+ReLU
      options.quality_samples = 0;
      if (config.tolerance_points) {
        quantd::engine::AccuracyGoal goal;
        goal.tuning.path = fixtures + "/cifar10/val_batch.bin";
        goal.max_top1_drop = *config.tolerance_points / 100;
        goal.against_fp32 = config.against_fp32;
        options.accuracy_goal = goal;
      }
      const auto start = std::chrono::steady_clock::now();
      auto quantized = quantd::engine::Quantize(options);
      if (!quantized.ok()) {
        std::cerr << config.name << " on " << set.name << ": " << quantized.status() << "\n";
        return 1;
      }
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      auto bytes = (*quantized)->SerializeArtifact();
      const std::string engine = (*quantized)->report().kernel_engine;
      auto served = bytes.ok() ? quantd::engine::ServableModel::LoadInt8Artifact(*bytes, engine, config.name)
                               : absl::StatusOr<std::unique_ptr<quantd::engine::ServableModel>>(bytes.status());
      if (!served.ok()) {
        std::cerr << config.name << ": " << served.status() << "\n";
        return 1;
      }
      auto int8 = Score(**served, *test);
      if (!int8.ok()) {
        std::cerr << config.name << ": " << int8.status() << "\n";
        return 1;
      }
      int64_t correct = 0, agree = 0;
      double signal = 0, noise = 0;
      for (int64_t i = 0; i < test->count; ++i) {
        const int64_t p = Argmax(*int8, i);
        correct += p == test->labels[i];
        agree += quantd::engine::SamePrediction(p, Argmax(*fp32, i));
      }
      for (size_t k = 0; k < fp32->values.size(); ++k) {
        const double d = static_cast<double>(int8->values[k]) - fp32->values[k];
        signal += static_cast<double>(fp32->values[k]) * fp32->values[k];
        noise += d * d;
      }
      const double sqnr = noise > 0 ? 10 * std::log10(signal / noise) : INFINITY;
      const auto& tuning = (*quantized)->report().tuning;
      const size_t fp32_layers = tuning ? tuning->fp32_layers.size() : 0;
      std::printf("%-16s %-11s %-8s %8lld %9.2f%% %9.2f %7.1f %s\n", config.name.c_str(), set.name.c_str(),
                  engine.c_str(), static_cast<long long>(correct), 100.0 * agree / test->count, sqnr, seconds,
                  tuning ? absl::StrCat(tuning->trials.size(), " trials, ", fp32_layers, " FP32 layers, chose ",
                                        tuning->trials[static_cast<size_t>(tuning->best_trial)].settings)
                                 .c_str()
                         : "");
      std::fflush(stdout);
      rows.push_back({{"qconfig", config.name},
                      {"calibration", set.name},
                      {"engine", engine},
                      {"correct", correct},
                      {"agreement", static_cast<double>(agree) / test->count},
                      {"sqnr_db", sqnr},
                      {"fp32_layers", fp32_layers},
                      {"seconds", seconds}});
    }
  }
  nlohmann::json report = {{"cpu", quantd::engine::CpuInt8Info().model_name},
                           {"fp32_correct", fp32_correct},
                           {"test_images", test->count},
                           {"rows", rows}};
  std::cout << report.dump() << "\n";
  return 0;
}
