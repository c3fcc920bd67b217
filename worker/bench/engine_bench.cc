// quantd-engine-bench: times quantd's engine on the ResNet8 fixture and
// prints figures as JSON (scripts/bench.sh puts them beside PyTorch's,
// measured in the same run, and prints the ratios).
//
// usage: quantd-engine-bench FIXTURES_DIR [--qconfig fbgemm] [--runs 5] [--sqnr-samples 32] [--quantize-threads 1|2] [--forward-batch N]
//
// Profiling aids (environment): QUANTD_BENCH_QUANTIZE_ONLY=1 stops after the
// quantization timings; QUANTD_BENCH_PER_INSTR=1 prints the int8 runtime's
// time per instruction at batch 256; QUANTD_BENCH_PER_NODE=1 prints the time
// per node of calibration's FP32 forward; QUANTD_BENCH_PROFILE_DIRECT=1 runs
// the int8 batch-256 loop for perf record.

#include <torch/csrc/jit/serialization/import.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "worker/engine/quantizer.h"
#include "worker/engine/quantizer_internal.h"
#include "worker/engine/runtime/fp32_blocked_executor.h"
#include "worker/engine/runtime/fp32_executor.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// batch-1 median latency (ms) and batch-256 throughput (images/s).
template <typename Fn>
nlohmann::json Time(const at::Tensor& images, Fn&& forward) {
  at::NoGradGuard no_grad;
  at::Tensor one = images.slice(0, 0, 1).contiguous();
  for (int i = 0; i < 50; ++i) forward(one);
  std::vector<double> times;
  for (int i = 0; i < 500; ++i) {
    const auto t = Clock::now();
    forward(one);
    times.push_back(Seconds(Clock::now() - t));
  }
  at::Tensor batch = images.slice(0, 0, 256).contiguous();
  for (int i = 0; i < 3; ++i) forward(batch);
  std::vector<double> rounds;  // median of 5 rounds of 10 batches, as the PyTorch side
  for (int r = 0; r < 5; ++r) {
    const auto t = Clock::now();
    for (int i = 0; i < 10; ++i) forward(batch);
    rounds.push_back(10 * 256 / Seconds(Clock::now() - t));
  }
  return {{"batch1_latency_ms", 1000 * Median(times)}, {"batch256_images_per_s", Median(rounds)}};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: quantd-engine-bench FIXTURES_DIR [--qconfig fbgemm] [--runs 5] [--sqnr-samples 32] [--quantize-threads 1|2] [--forward-batch N]\n";
    return 2;
  }
  const std::string fixtures = argv[1];
  std::string qconfig = "fbgemm";
  int runs = 5;
  int sqnr_samples = 32;
  int only_threads = 0;  // 0: time quantization on 2 and on 1 threads
  int forward_batch = 0;  // 0: the engine's default
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--qconfig") qconfig = argv[i + 1];
    if (flag == "--runs") runs = std::max(1, std::atoi(argv[i + 1]));
    if (flag == "--sqnr-samples") sqnr_samples = std::atoi(argv[i + 1]);
    if (flag == "--quantize-threads") only_threads = std::atoi(argv[i + 1]);
    if (flag == "--forward-batch") forward_batch = std::atoi(argv[i + 1]);
  }
  using namespace quantd::engine;
  InitializeRuntime(1);
  QuantizeOptions options;
  options.model_path = fixtures + "/models/resnet8_fp32.torchscript.pt";
  options.calibration.path = fixtures + "/cifar10/calib_batch.bin";
  options.qconfig.preset = qconfig;
  options.sqnr_samples = sqnr_samples;
  if (forward_batch > 0) options.forward_batch_size = forward_batch;
  options.fusion.groups = {{"conv1", "bn1", "relu1"},
                           {"layer1.conv1", "layer1.bn1", "layer1.relu1"}, {"layer1.conv2", "layer1.bn2"},
                           {"layer2.conv1", "layer2.bn1", "layer2.relu1"}, {"layer2.conv2", "layer2.bn2"},
                           {"layer3.conv1", "layer3.bn1", "layer3.relu1"}, {"layer3.conv2", "layer3.bn2"}};
  nlohmann::json out;
  out["qconfig"] = qconfig;
  // Quantization time, median of `runs`, on 1 and on 2 intra-op threads.
  std::unique_ptr<QuantizedModel> model;
  for (int threads : {2, 1}) {
    if (only_threads != 0 && threads != only_threads) continue;
    InitializeRuntime(threads);
    std::vector<double> quantize_times;
    std::vector<double> after_loading;  // PyTorch's timer starts with the model already loaded
    nlohmann::json phases;
    for (int r = 0; r < runs; ++r) {
      const auto t = Clock::now();
      auto quantized = Quantize(options);
      quantize_times.push_back(Seconds(Clock::now() - t));
      if (!quantized.ok()) {
        std::cerr << quantized.status().message() << "\n";
        return 1;
      }
      model = std::move(quantized).value();
      for (const auto& p : model->report().timings) phases[p.phase] = p.seconds;
      after_loading.push_back(quantize_times.back() - phases.value("loading", 0.0));
    }
    const std::string key = threads == 1 ? "quantize_1_thread" : "quantize_2_threads";
    out[key] = {{"median_s", Median(quantize_times)},
                {"median_after_loading_s", Median(after_loading)},
                {"phases_s_last_run", phases}};
  }
  out["kernel_engine"] = model->report().kernel_engine;
  out["kernel_choice"] = model->report().kernel_choice.reason;
  const CpuInt8Report& cpu = CpuInt8Info();
  std::vector<std::string> saturating;
  for (const auto& s : cpu.saturating_engines) saturating.push_back(s.engine);
  out["cpu"] = {{"model", cpu.model_name},
                {"features", cpu.features},
                {"onednn_isa", cpu.onednn_isa},
                {"kernel_isa", cpu.kernel_isa},
                {"saturating_engines", saturating}};
  if (std::getenv("QUANTD_BENCH_QUANTIZE_ONLY") != nullptr) {  // for perf record
    std::cout << out.dump() << std::endl;
    return 0;
  }

  DatasetSpec test;
  test.path = fixtures + "/cifar10/test_batch.bin";
  auto dataset = OpenDataset(test);
  auto batch = (*dataset)->ReadBatch(0, 256);
  const at::Tensor images = batch->images;

  auto& impl = model->impl();
  {
    // The FP32 work calibration cannot avoid: 1000 images, in the sub-batches
    // calibration runs forward in.
    DatasetSpec calib;
    calib.path = options.calibration.path;
    auto set = OpenDataset(calib);
    std::vector<at::Tensor> batches;
    for (int64_t s = 0; s < (*set)->size(); s += options.forward_batch_size) {
      batches.push_back((*set)->ReadBatch(s, options.forward_batch_size)->images);
    }
    auto executor = Fp32Executor::Create(&impl.fused);
    auto blocked = Fp32BlockedExecutor::Create(&impl.fused);
    at::NoGradGuard no_grad;
    auto t = Clock::now();
    for (const auto& b : batches) (void)executor->Run({b});
    out["fp32_pass_over_calibration_set_s"] = Seconds(Clock::now() - t);
    if (blocked.ok() && *blocked != nullptr) {  // what calibration runs
      t = Clock::now();
      for (const auto& b : batches) (void)(*blocked)->Run(b, nullptr);
      out["fp32_pass_on_onednn_blocked_s"] = Seconds(Clock::now() - t);
    }
    t = Clock::now();
    for (const auto& b : batches) impl.fp32_module.forward({b});
    out["fp32_torchscript_over_calibration_set_s"] = Seconds(Clock::now() - t);
    if (std::getenv("QUANTD_BENCH_PER_NODE") != nullptr && blocked.ok() && *blocked != nullptr) {
      std::map<int, double> spent;  // by value, over 3 passes
      for (int pass = 0; pass < 3; ++pass) {
        for (const auto& b : batches) {
          auto last = Clock::now();
          (void)(*blocked)->Run(b, [&](int value, const at::Tensor&, TapLayout) {
            spent[value] += Seconds(Clock::now() - last);
            last = Clock::now();
          });
        }
      }
      for (const Node& node : impl.fused.nodes) {
        if (!node.removed && spent.count(node.outputs[0])) {
          std::cout << node.name << " " << spent[node.outputs[0]] / 3 * 1000 << " ms\n";
        }
      }
      return 0;
    }
  }
  if (std::getenv("QUANTD_BENCH_PER_INSTR") != nullptr) {  // where int8 batch-256 time goes
    at::Tensor batch = images.slice(0, 0, 256).contiguous();
    std::map<std::string, double> spent;
    for (int i = 0; i < 30; ++i) {
      auto last = Clock::now();
      (void)impl.executor->Run({batch}, [&](const Instr& instr, const at::Tensor&) {
        const auto now = Clock::now();
        if (i >= 10) spent[std::to_string(static_cast<int>(instr.kind)) + " " + instr.name] += Seconds(now - last);
        last = Clock::now();
      });
    }
    for (const auto& [k, v] : spent) std::cout << k << " " << v / 20 * 1000 << " ms\n";
    return 0;
  }
  if (std::getenv("QUANTD_BENCH_PROFILE_DIRECT") != nullptr) {  // for perf record
    at::Tensor batch = images.slice(0, 0, 256).contiguous();
    for (int i = 0; i < 200; ++i) (void)impl.executor->Forward(batch);
    return 0;
  }
  out["int8_direct"] = Time(images, [&](const at::Tensor& x) { (void)impl.executor->Forward(x); });
  // quantd's default fusion (auto) also fuses the residual add+ReLU.
  QuantizeOptions auto_options = options;
  auto_options.fusion = FusionSpec{true, {}};
  auto auto_model = Quantize(auto_options);
  if (!auto_model.ok()) {
    std::cerr << auto_model.status().message() << "\n";
    return 1;
  }
  out["int8_direct_auto_fusion"] =
      Time(images, [&](const at::Tensor& x) { (void)(*auto_model)->impl().executor->Forward(x); });
  auto bytes = model->SerializeArtifact();
  std::istringstream stream(*bytes);
  torch::jit::Module artifact = torch::jit::load(stream);
  out["int8_torchscript_artifact"] = Time(images, [&](const at::Tensor& x) { artifact.forward({x}); });
  out["fp32_torchscript"] = Time(images, [&](const at::Tensor& x) { impl.fp32_module.forward({x}); });
  std::cout << out.dump() << std::endl;
  return 0;
}
