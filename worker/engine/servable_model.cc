#include "worker/engine/servable_model.h"

#include <ATen/Parallel.h>
#include <torch/script.h>
#include <torch/version.h>

#include <map>
#include <set>
#include <sstream>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/thread_name.h"
#include "worker/engine/base/torch_status.h"
#include "worker/engine/quantizer.h"
#include "worker/engine/runtime/onednn_post_ops.h"
#include "worker/engine/runtime/prepack.h"

namespace quantd::engine {
namespace {

// Output of `module` on `batch`, as float32.
absl::StatusOr<ServingOutput> Forward(torch::jit::Module& module, const at::Tensor& batch,
                                      const std::string& kernel_engine, const std::string& name) {
  c10::IValue result;
  auto forward = [&]() {
    torch::NoGradGuard no_grad;
    result = module.forward({batch});
  };
  if (kernel_engine != "fp32") {
    // quantized::add follows the process-global engine: hold ours.
    QUANTD_RETURN_IF_ERROR(WithKernelEngine(kernel_engine, name, forward));
  } else {
    forward();
  }
  if (result.isTuple()) result = result.toTupleRef().elements().at(0);
  if (!result.isTensor()) return absl::InternalError(absl::StrCat(name, " returned no tensor"));
  at::Tensor out = result.toTensor();
  if (out.is_quantized()) out = out.dequantize();
  out = out.to(torch::kFloat32).contiguous();
  ServingOutput output;
  output.shape = out.sizes().vec();
  output.values.assign(out.data_ptr<float>(), out.data_ptr<float>() + out.numel());
  return output;
}

// A loaded artifact's int8 kernels without fused ReLUs where that is how
// they run safely (see onednn_post_ops.h); before its first forward.
void UnfuseRelu(torch::jit::Module& module, const std::string& kernel_engine) {
  if (auto forward = module.find_method("forward")) UnfuseInt8Relu(*forward->graph(), kernel_engine);
}

// LibTorch's oneDNN int8 convolutions (1.13) keep one prepared primitive per
// packed weight, for the input shape and intra-op thread count of their first
// call, and set up a new one on every call with any other. Passes of dynamic
// batching come in many sizes, so an int8 model on onednn keeps a copy per
// batch size it has run, each first run at that size, built on a thread of
// its own while passes of that size run on the first copy. In-process on the
// AVX2 EPYC (one intra-op thread, passes of 4 to 16 images in random order)
// that made a pass 15-26% cheaper. Results are bit-identical: same packs,
// same kernels.
class BatchSizeCopies {
 public:
  BatchSizeCopies(std::string bytes, std::string kernel_engine, std::string name, int max_copies)
      : bytes_(std::move(bytes)),
        kernel_engine_(std::move(kernel_engine)),
        name_(std::move(name)),
        max_copies_(max_copies) {}
  ~BatchSizeCopies() {
    std::thread builder;
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      builder = std::move(builder_);
    }
    if (builder.joinable()) builder.join();
  }

  // The copy for `shape`'s batch size, or nullptr; asks for one to be built
  // then (run on LibTorch's `threads` intra-op threads, as the caller is).
  std::shared_ptr<torch::jit::Module> Find(const std::vector<int64_t>& shape, int threads) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto found = copies_.find(shape[0]);
    if (found != copies_.end()) return found->second;
    if (stopping_ || static_cast<int>(requested_.size()) >= max_copies_ || !requested_.emplace(shape[0]).second) {
      return nullptr;
    }
    pending_.push_back({shape, threads});
    if (!building_) {
      // A finished builder has left mu_ for good; joining it is quick.
      if (builder_.joinable()) builder_.join();
      try {
        builder_ = std::thread([this] {
          NameThisThread("quantd-copies");
          BuildPending();
        });
        building_ = true;
      } catch (const std::system_error&) {
        // No thread now (the process's limit): this size may be asked again.
        pending_.pop_back();
        requested_.erase(shape[0]);
      }
    }
    return nullptr;
  }

  int limit() const { return max_copies_; }

  int built() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(copies_.size());
  }

  void WaitUntilBuilt() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](const bool* building) { return !*building; }, &building_));
  }

 private:
  struct Wanted {
    std::vector<int64_t> shape;
    int threads = 1;
  };

  void BuildPending() {
    for (;;) {
      Wanted wanted;
      {
        absl::MutexLock lock(&mu_);
        if (stopping_ || pending_.empty()) {
          building_ = false;
          return;
        }
        wanted = std::move(pending_.front());
        pending_.erase(pending_.begin());
      }
      std::shared_ptr<torch::jit::Module> copy = Build(wanted);
      if (copy == nullptr) continue;  // that size keeps running on the first copy
      absl::MutexLock lock(&mu_);
      copies_[wanted.shape[0]] = std::move(copy);
    }
  }

  std::shared_ptr<torch::jit::Module> Build(const Wanted& wanted) {
    auto module = std::make_shared<torch::jit::Module>();
    absl::Status status = GuardEntryPoint(absl::StrCat("preparing ", name_), [&]() -> absl::Status {
      // The prepared primitive's key holds the intra-op thread count.
      SetIntraOpThreads(wanted.threads);
      std::istringstream stream(bytes_);
      QUANTD_RETURN_IF_ERROR(WithKernelEngine(kernel_engine_, name_, [&]() { *module = torch::jit::load(stream); }));
      module->eval();
      UnfuseRelu(*module, kernel_engine_);
      at::Tensor zeros = torch::zeros(wanted.shape, torch::kFloat32);
      // Two passes: the first also profiles the TorchScript graph.
      for (int i = 0; i < 2; ++i) QUANTD_RETURN_IF_ERROR(Forward(*module, zeros, kernel_engine_, name_).status());
      return absl::OkStatus();
    });
    return status.ok() ? module : nullptr;
  }

  const std::string bytes_;
  const std::string kernel_engine_;
  const std::string name_;
  const int max_copies_;
  mutable absl::Mutex mu_;
  std::map<int64_t, std::shared_ptr<torch::jit::Module>> copies_ ABSL_GUARDED_BY(mu_);
  std::set<int64_t> requested_ ABSL_GUARDED_BY(mu_);
  std::vector<Wanted> pending_ ABSL_GUARDED_BY(mu_);
  bool building_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread builder_ ABSL_GUARDED_BY(mu_);
};

class TorchScriptServable final : public ServableModel {
 public:
  // `kernel_engine` empty: an FP32 model, run without holding any engine.
  // `copies`: per-batch-size copies, or nullptr.
  TorchScriptServable(torch::jit::Module module, std::string kernel_engine, std::string name,
                      std::unique_ptr<BatchSizeCopies> copies)
      : module_(std::move(module)),
        kernel_engine_(kernel_engine.empty() ? "fp32" : std::move(kernel_engine)),
        name_(std::move(name)),
        copies_(std::move(copies)) {}

  absl::StatusOr<ServingOutput> Run(absl::Span<const float> input, const std::vector<int64_t>& shape) const override {
    PrepareThreadForLibTorch();
    return GuardEntryPoint(absl::StrCat("running ", name_), [&]() -> absl::StatusOr<ServingOutput> {
      int64_t count = 1;
      for (int64_t d : shape) count *= d;
      if (shape.size() != 4 || count != static_cast<int64_t>(input.size())) {
        return absl::InvalidArgumentError(absl::StrCat("input: shape [", absl::StrJoin(shape, ","), "] does not hold ",
                                                       input.size(), " values as [N, C, H, W]"));
      }
      // from_blob does not copy; forward does not write its input.
      at::Tensor batch = torch::from_blob(const_cast<float*>(input.data()), shape, torch::kFloat32);
      std::shared_ptr<torch::jit::Module> copy;
      if (copies_ != nullptr) copy = copies_->Find(shape, at::get_num_threads());
      return Forward(copy != nullptr ? *copy : module_, batch, kernel_engine_, name_);
    });
  }

  const std::string& kernel_engine() const override { return kernel_engine_; }

  int batch_size_copies() const override { return copies_ == nullptr ? 0 : copies_->built(); }
  int batch_size_copy_limit() const override { return copies_ == nullptr ? 0 : copies_->limit(); }
  void WaitForBatchSizeCopies() const override {
    if (copies_ != nullptr) copies_->WaitUntilBuilt();
  }

 private:
  // TorchScript modules may run forward from several threads at once.
  mutable torch::jit::Module module_;
  const std::string kernel_engine_;
  const std::string name_;
  const std::unique_ptr<BatchSizeCopies> copies_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ServableModel>> ServableModel::LoadInt8Artifact(const std::string& bytes,
                                                                               const std::string& kernel_engine,
                                                                               const std::string& name,
                                                                               int batch_size_copies) {
  PrepareThreadForLibTorch();
  return GuardEntryPoint(absl::StrCat("loading ", name), [&]() -> absl::StatusOr<std::unique_ptr<ServableModel>> {
    torch::jit::Module module;
    std::istringstream stream(bytes);
    // Packs are re-made on load for the engine set now. An ErrorReport's
    // what() is not called (see LoadFp32From).
    bool compiles = true;
    QUANTD_RETURN_IF_ERROR(WithKernelEngine(kernel_engine, absl::StrCat("loading ", name), [&]() {
      try {
        module = torch::jit::load(stream);
      } catch (const torch::jit::ErrorReport&) {
        compiles = false;
      }
    }));
    if (!compiles) {
      return absl::FailedPreconditionError(
          absl::StrCat("loading ", name, ": its code does not compile in this LibTorch (", TORCH_VERSION, ")"));
    }
    module.eval();
    UnfuseRelu(module, kernel_engine);
    std::unique_ptr<BatchSizeCopies> copies;
    // qnnpack keeps no prepared state per shape.
    if (kernel_engine == "onednn" && batch_size_copies > 0) {
      copies = std::make_unique<BatchSizeCopies>(bytes, kernel_engine, name, batch_size_copies);
    }
    return std::unique_ptr<ServableModel>(
        new TorchScriptServable(std::move(module), kernel_engine, name, std::move(copies)));
  });
}

namespace {

// torch::jit::load from `source` (a path or a stream). A model whose code does
// not compile here throws an ErrorReport whose what() can itself throw inside
// noexcept (see import_torchscript.cc): it is not called.
template <typename Source>
absl::StatusOr<std::unique_ptr<ServableModel>> LoadFp32From(Source&& source, const std::string& name) {
  PrepareThreadForLibTorch();
  return GuardEntryPoint(absl::StrCat("loading model ", name), [&]() -> absl::StatusOr<std::unique_ptr<ServableModel>> {
    torch::jit::Module module;
    try {
      module = torch::jit::load(source);
    } catch (const torch::jit::ErrorReport&) {
      return absl::FailedPreconditionError(absl::StrCat("loading model ", name, ": its code does not compile in this LibTorch (",
                                                        TORCH_VERSION, ")"));
    }
    module.eval();
    return std::unique_ptr<ServableModel>(new TorchScriptServable(std::move(module), "", name, nullptr));
  });
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServableModel>> ServableModel::LoadFp32(const std::string& path) {
  return LoadFp32From(path, path);
}

absl::StatusOr<std::unique_ptr<ServableModel>> ServableModel::LoadFp32Bytes(const std::string& bytes,
                                                                            const std::string& name) {
  std::istringstream stream(bytes);
  return LoadFp32From(stream, name);
}

}  // namespace quantd::engine
