#ifndef QUANTD_WORKER_ENGINE_RUNTIME_INT8_PROGRAM_H_
#define QUANTD_WORKER_ENGINE_RUNTIME_INT8_PROGRAM_H_

// The converted model: a straight-line program of LibTorch quantized kernel
// calls on prepacked weights, plus quantize/dequantize around FP32 fallbacks.
// Executed directly (no TorchScript interpreter); serialization turns the
// same program into a TorchScript module.

#include <ATen/core/dispatch/Dispatcher.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "worker/engine/ir/graph.h"

namespace quantd::engine {

// kPad is a zero pad of an int8 tensor done on its integer representation
// (filled with the zero point): LibTorch's quantized constant_pad_nd goes
// through a slow elementwise requantizing copy.
// kQuantizedOp calls a quantized:: operator without prepacked weights whose
// last two arguments are the output scale and zero point (hardswish, cat).
enum class InstrKind { kQuantize, kDequantize, kConv2d, kLinear, kAdd, kPad, kQuantizedOp, kOp };

struct Instr {
  InstrKind kind = InstrKind::kOp;
  std::string name;  // the IR node (or, for quantize/dequantize, the value) it stands for
  int node_id = -1;
  std::vector<Operand> inputs;  // value ids are program slots
  std::vector<int> outputs;
  bool relu = false;           // conv2d_relu / linear_relu / add_relu; for an FP32 kOp, a ReLU fused after it
  std::optional<double> clamp_max;  // for an FP32 kOp with relu: a ReLU6-like bound fused too
  double scale = 1.0;          // output (or quantize) scale
  int64_t zero_point = 0;
  c10::ScalarType dtype = c10::ScalarType::QUInt8;
  c10::IValue packed;          // prepacked weights (conv2d / linear)
  std::vector<c10::IValue> prepack_args;  // what `packed` was made from (to pack again)
  torch::jit::Node* jit_node = nullptr;  // kOp: the original op
  std::string quantized_op;    // kQuantizedOp: "quantized::hardswish", ...
  bool on_int8 = false;        // kOp that runs on int8 tensors (relu, pooling, ...)
};

struct Program {
  std::vector<Instr> instrs;
  std::vector<int> inputs;
  std::vector<c10::TypePtr> input_types;
  std::vector<Operand> outputs;
  bool output_is_tuple = false;
  int num_slots = 0;
  std::string kernel_engine;
};

// The bounds of a clamp-like op on an int8 tensor (ClampBoundsOf), if
// `instr` is one.
std::optional<ClampBounds> Int8ClampBounds(const Instr& instr);

using SlotTap = std::function<void(const Instr& instr, const at::Tensor& output)>;

// Runs a Program. onednn packs cache their kernel primitive for the first
// input shape they see and rebuild it on every call with another one, so the
// executor keeps one set of packs per batch size (a few; the program's own
// packs serve the rest). Thread-safe.
class Int8Executor {
 public:
  static absl::StatusOr<Int8Executor> Create(const Program* program);
  Int8Executor(Int8Executor&& other) noexcept;
  Int8Executor& operator=(Int8Executor&&) = delete;
  Int8Executor() = default;
  absl::StatusOr<std::vector<c10::IValue>> Run(const std::vector<c10::IValue>& inputs, const SlotTap& tap = nullptr) const;
  // Convenience for single-input, single-output models.
  absl::StatusOr<at::Tensor> Forward(const at::Tensor& input) const;

 private:
  // A pack per conv2d / linear instruction. A pack's first call runs alone
  // (under first_calls_mu_): LibTorch 1.13's onednn pack sets itself up on
  // its first call and replaces its weights by a copy laid out for the
  // kernel it picked, inside a call_once that does not keep out another
  // thread's call reading those weights meanwhile. Two accuracy-trial
  // threads making the first call on one fresh pack crashed (SIGSEGV at 0x8
  // inside LibTorch), as plain LibTorch doing the same does. Later calls
  // only read the pack and run concurrently.
  struct PackSet {
    explicit PackSet(std::vector<c10::IValue> packs_by_instr);
    std::vector<c10::IValue> packs;               // by instruction index; None for the others
    std::unique_ptr<std::atomic<bool>[]> called;  // a call on packs[k] has returned
  };

  const Program* program_ = nullptr;
  mutable std::vector<torch::jit::Operation> ops_;  // kOp, by instruction index
  std::vector<std::optional<c10::OperatorHandle>> kernels_;  // quantized::*, by instruction index
  std::vector<char> relu_on_codes_;  // conv2d / linear whose ReLU runs on the codes (onednn_post_ops.h)
  std::vector<std::vector<int64_t>> pads_;      // kPad amounts, by instruction index
  std::vector<bool> int8_relu_;                 // kOp aten::relu on int8 (own kernel), by instruction index
  std::vector<std::optional<ClampBounds>> clamps_;  // kOp clamp-likes on int8 (own kernel), by instruction index
  // RGB inputs widened to RGBX for the convolutions that read them (see
  // WidenRgbInputs), by instruction index: the quantize's channel count (0:
  // as is), and the conv packs' arguments and default packs.
  std::vector<int64_t> quantize_channels_;
  std::vector<std::vector<c10::IValue>> prepack_args_;
  std::unique_ptr<PackSet> own_;  // the program's packs, but for widened inputs
  // An int8 add whose only reader is an int8 ReLU runs as add_relu when no tap
  // watches (the ReLU keeps the add's qparams, so the codes are the same) and
  // the ReLU passes its input on, by instruction index.
  std::optional<c10::OperatorHandle> add_relu_kernel_;
  std::vector<char> add_then_relu_;
  std::vector<char> relu_after_add_;
  std::vector<std::vector<int>> dead_after_;    // slots last read by each instruction

  // The instructions that read each value (in order, once each), and the
  // values the program returns: computed once for the passes below.
  struct Dataflow {
    std::map<int, std::vector<size_t>> readers;
    std::set<int> outputs;
  };
  void WidenRgbInputs(const Dataflow& flow);
  void FuseAddRelu(const Dataflow& flow);
  // Packs for one batch size and intra-op thread count, by instruction index
  // (empty for non-kernels). LibTorch's onednn pack keeps the kernel of the
  // first shape and thread count it runs, so a pack per pair runs without
  // ideep's per-call descriptor cache (see ideep_cache.h); accuracy trials run
  // on one thread beside passes on all. The number of pairs packed is bounded
  // by the bytes of the weight copies: 4 to 16, 64 MiB of copies.
  PackSet* PacksFor(int64_t batch_size, int threads) const;
  static constexpr size_t kMinPackedBatchSizes = 4;
  static constexpr size_t kMaxPackedBatchSizes = 16;
  static constexpr int64_t kPackedWeightBudgetBytes = int64_t{64} << 20;
  size_t max_packed_batch_sizes_ = kMinPackedBatchSizes;
  bool writes_in_place_ = false;  // some FP32 op of the program writes a tensor in place
  mutable std::mutex packs_mu_;
  mutable std::map<std::pair<int64_t, int>, std::unique_ptr<PackSet>> packs_by_batch_ ABSL_GUARDED_BY(packs_mu_);
  mutable std::mutex first_calls_mu_;
};

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_RUNTIME_INT8_PROGRAM_H_
