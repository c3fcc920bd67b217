#include "worker/engine/runtime/int8_program.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "worker/engine/base/torch_status.h"
#include "worker/engine/runtime/fp32_executor.h"
#include "worker/engine/runtime/ideep_cache.h"
#include "worker/engine/runtime/int8_kernels.h"
#include "worker/engine/runtime/onednn_post_ops.h"
#include "worker/engine/runtime/prepack.h"

namespace quantd::engine {
namespace {

// The quantized kernel an instruction calls; none for the others.
// `relu_on_codes`: a conv2d or linear with ReLU calls the plain kernel.
std::optional<c10::OperatorHandle> KernelFor(const Instr& instr, bool relu_on_codes) {
  auto& dispatcher = c10::Dispatcher::singleton();
  const bool fused_relu = instr.relu && !relu_on_codes;
  switch (instr.kind) {
    case InstrKind::kConv2d:
      return dispatcher.findSchemaOrThrow(fused_relu ? "quantized::conv2d_relu" : "quantized::conv2d", "new");
    case InstrKind::kLinear:
      return dispatcher.findSchemaOrThrow(fused_relu ? "quantized::linear_relu" : "quantized::linear", "");
    case InstrKind::kAdd:
      return dispatcher.findSchemaOrThrow(instr.relu ? "quantized::add_relu" : "quantized::add", "");
    case InstrKind::kQuantizedOp:
      return dispatcher.findSchemaOrThrow(instr.quantized_op.c_str(), "");
    default:
      return std::nullopt;
  }
}

// A copy of a 4-D quantized weight with zero-filled input channels up to `channels`.
at::Tensor WidenWeight(const at::Tensor& w, int64_t channels) {
  const at::Tensor codes = w.int_repr();
  at::Tensor wide = at::zeros({w.size(0), channels, w.size(2), w.size(3)}, codes.options());
  wide.slice(1, 0, w.size(1)).copy_(codes);
  if (w.qscheme() == at::kPerChannelAffine) {
    return at::_make_per_channel_quantized_tensor(wide, w.q_per_channel_scales(), w.q_per_channel_zero_points(),
                                                  w.q_per_channel_axis());
  }
  return at::_make_per_tensor_quantized_tensor(wide, w.q_scale(), w.q_zero_point());
}

// The values an operand list reads, each once.
std::set<int> ValuesRead(const std::vector<Operand>& operands) {
  std::vector<int> read;
  for (const Operand& in : operands) CollectValues(in, &read);
  return std::set<int>(read.begin(), read.end());
}

// `q` with the codes above `max`'s code clamped to it (a bound fused into a
// conv or linear that the output's saturation does not make; the artifact
// writes the same on int_repr).
at::Tensor ClampInt8Codes(const at::Tensor& q, double max) {
  at::Tensor out = ClampInt8(q, std::nullopt, max);
  if (out.defined()) return out;
  const int64_t code = QuantizedCode(max, q.q_scale(), q.q_zero_point(), q.scalar_type() == at::kQInt8);
  return at::_make_per_tensor_quantized_tensor(at::clamp_max(q.int_repr(), code), q.q_scale(), q.q_zero_point());
}

}  // namespace

std::optional<ClampBounds> Int8ClampBounds(const Instr& instr) {
  if (instr.kind != InstrKind::kOp || !instr.on_int8) return std::nullopt;
  return ClampBoundsOf(instr.jit_node, instr.inputs);
}

// oneDNN's int8 kernel for 3 input channels is slow; with a fourth input
// channel of zero weights it takes a faster one (1.7 -> 1.2 ms for ResNet8's
// first convolution at batch 256). Integer accumulation is exact, so the
// outputs are identical. Applies where a quint8 quantize feeds nothing but
// onednn convolutions (groups 1) with 3 input channels.
void Int8Executor::WidenRgbInputs(const Dataflow& flow) {
  if (program_->kernel_engine != "onednn") return;
  for (size_t k = 0; k < program_->instrs.size(); ++k) {
    const Instr& quantize = program_->instrs[k];
    if (quantize.kind != InstrKind::kQuantize || quantize.dtype != at::kQUInt8 || quantize.outputs.size() != 1) continue;
    const int slot = quantize.outputs[0];
    auto found = flow.readers.find(slot);
    if (flow.outputs.count(slot) != 0 || found == flow.readers.end()) continue;
    const std::vector<size_t>& readers = found->second;
    bool all_rgb_convs = true;
    for (size_t r : readers) {
      const Instr& reader = program_->instrs[r];
      all_rgb_convs = all_rgb_convs && reader.kind == InstrKind::kConv2d && reader.prepack_args.size() == 6 &&
                      reader.inputs[0].kind == Operand::Kind::kValue && reader.inputs[0].value == slot &&
                      ValuesRead({reader.inputs.begin() + 1, reader.inputs.end()}).count(slot) == 0 &&
                      reader.prepack_args[0].isTensor() && reader.prepack_args[0].toTensor().dim() == 4 &&
                      reader.prepack_args[0].toTensor().size(1) == 3 && reader.prepack_args[5].isInt() &&
                      reader.prepack_args[5].toInt() == 1;
    }
    if (!all_rgb_convs) continue;
    // All readers or none: commit only once every widened pack is made.
    std::vector<std::vector<c10::IValue>> args(readers.size());
    std::vector<c10::IValue> packs(readers.size());
    bool packed_all = true;
    for (size_t i = 0; i < readers.size() && packed_all; ++i) {
      args[i] = program_->instrs[readers[i]].prepack_args;
      args[i][0] = WidenWeight(args[i][0].toTensor(), 4);
      auto packed = PrepackConv2d(program_->kernel_engine, args[i]);
      packed_all = packed.ok();
      if (packed_all) packs[i] = *packed;
    }
    if (!packed_all) continue;  // keep this input as it is
    for (size_t i = 0; i < readers.size(); ++i) {
      prepack_args_[readers[i]] = std::move(args[i]);
      own_->packs[readers[i]] = std::move(packs[i]);
    }
    quantize_channels_[k] = 4;
  }
}

void Int8Executor::FuseAddRelu(const Dataflow& flow) {
  for (size_t k = 0; k < program_->instrs.size(); ++k) {
    const Instr& add = program_->instrs[k];
    if (add.kind != InstrKind::kAdd || add.relu || add.outputs.size() != 1) continue;
    const int slot = add.outputs[0];
    auto found = flow.readers.find(slot);
    if (flow.outputs.count(slot) != 0 || found == flow.readers.end()) continue;
    const std::vector<size_t>& readers = found->second;
    if (readers.size() != 1 || !int8_relu_[readers[0]]) continue;
    const Instr& relu = program_->instrs[readers[0]];
    if (relu.inputs.size() != 1 || relu.outputs.size() != 1) continue;
    add_then_relu_[k] = 1;
    relu_after_add_[readers[0]] = 1;
  }
}

absl::StatusOr<Int8Executor> Int8Executor::Create(const Program* program) {
  // Also links ideep_cache.cc, whose initializer bounds ideep's cache.
  static const bool warned_once = [] {
    const std::string warning = IdeepCacheWarning();
    if (!warning.empty()) std::fprintf(stderr, "quantd: warning: %s\n", warning.c_str());
    return true;
  }();
  (void)warned_once;
  Int8Executor executor;
  executor.program_ = program;
  absl::Status status = TorchTry("preparing the int8 kernels", [&]() {
    Dataflow flow;
    for (size_t k = 0; k < program->instrs.size(); ++k) {
      for (int v : ValuesRead(program->instrs[k].inputs)) flow.readers[v].push_back(k);
    }
    flow.outputs = ValuesRead(program->outputs);
    executor.dead_after_.resize(program->instrs.size());
    for (const auto& [value, readers] : flow.readers) {
      if (flow.outputs.count(value) == 0) executor.dead_after_[readers.back()].push_back(value);
    }
    std::vector<c10::IValue> own_packs;
    for (const Instr& instr : program->instrs) {
      executor.pads_.push_back(instr.kind == InstrKind::kPad ? instr.inputs[1].constant.toIntVector()
                                                             : std::vector<int64_t>());
      executor.ops_.push_back(instr.kind == InstrKind::kOp ? instr.jit_node->getOperation() : torch::jit::Operation(nullptr));
      const bool relu_on_codes = instr.relu && UnfusesInt8Relu(program->kernel_engine) &&
                                 (instr.kind == InstrKind::kConv2d || instr.kind == InstrKind::kLinear);
      executor.relu_on_codes_.push_back(relu_on_codes);
      executor.kernels_.push_back(KernelFor(instr, relu_on_codes));
      executor.int8_relu_.push_back(instr.kind == InstrKind::kOp && instr.on_int8 &&
                                    instr.jit_node->kind() == c10::Symbol::fromQualString("aten::relu"));
      executor.clamps_.push_back(Int8ClampBounds(instr));
      executor.quantize_channels_.push_back(0);
      executor.prepack_args_.push_back(instr.prepack_args);
      own_packs.push_back(instr.packed);
      if (instr.kind == InstrKind::kOp && instr.jit_node->maybeSchema() != nullptr &&
          instr.jit_node->maybeSchema()->is_mutable()) {
        executor.writes_in_place_ = true;
      }
    }
    executor.own_ = std::make_unique<PackSet>(std::move(own_packs));
    int64_t weight_bytes = 0;
    for (const auto& args : executor.prepack_args_) {
      if (!args.empty() && args[0].isTensor()) weight_bytes += static_cast<int64_t>(args[0].toTensor().nbytes());
    }
    executor.max_packed_batch_sizes_ = static_cast<size_t>(
        std::clamp<int64_t>(kPackedWeightBudgetBytes / std::max<int64_t>(weight_bytes, 1),
                            static_cast<int64_t>(kMinPackedBatchSizes), static_cast<int64_t>(kMaxPackedBatchSizes)));
    executor.add_relu_kernel_ = c10::Dispatcher::singleton().findSchemaOrThrow("quantized::add_relu", "");
    executor.add_then_relu_.assign(program->instrs.size(), 0);
    executor.relu_after_add_.assign(program->instrs.size(), 0);
    executor.WidenRgbInputs(flow);
    executor.FuseAddRelu(flow);
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return executor;
}

Int8Executor::Int8Executor(Int8Executor&& other) noexcept
    : program_(other.program_),
      ops_(std::move(other.ops_)),
      kernels_(std::move(other.kernels_)),
      relu_on_codes_(std::move(other.relu_on_codes_)),
      pads_(std::move(other.pads_)),
      int8_relu_(std::move(other.int8_relu_)),
      clamps_(std::move(other.clamps_)),
      quantize_channels_(std::move(other.quantize_channels_)),
      prepack_args_(std::move(other.prepack_args_)),
      own_(std::move(other.own_)),
      add_relu_kernel_(std::move(other.add_relu_kernel_)),
      add_then_relu_(std::move(other.add_then_relu_)),
      relu_after_add_(std::move(other.relu_after_add_)),
      dead_after_(std::move(other.dead_after_)),
      max_packed_batch_sizes_(other.max_packed_batch_sizes_),
      writes_in_place_(other.writes_in_place_) {
  std::lock_guard<std::mutex> lock(other.packs_mu_);
  packs_by_batch_ = std::move(other.packs_by_batch_);
}

Int8Executor::PackSet::PackSet(std::vector<c10::IValue> packs_by_instr)
    : packs(std::move(packs_by_instr)), called(std::make_unique<std::atomic<bool>[]>(packs.size())) {
  for (size_t k = 0; k < packs.size(); ++k) called[k].store(false, std::memory_order_relaxed);
}

Int8Executor::PackSet* Int8Executor::PacksFor(int64_t batch_size, int threads) const {
  std::lock_guard<std::mutex> lock(packs_mu_);
  auto it = packs_by_batch_.find({batch_size, threads});
  if (it != packs_by_batch_.end()) return it->second.get();
  if (packs_by_batch_.size() >= max_packed_batch_sizes_) return nullptr;
  std::vector<c10::IValue> packs(program_->instrs.size());
  for (size_t k = 0; k < program_->instrs.size(); ++k) {
    const Instr& instr = program_->instrs[k];
    if (prepack_args_[k].empty()) continue;
    auto packed = instr.kind == InstrKind::kConv2d ? PrepackConv2d(program_->kernel_engine, prepack_args_[k])
                                                   : PrepackLinear(program_->kernel_engine, prepack_args_[k]);
    if (!packed.ok()) return nullptr;  // the program's own packs still work
    packs[k] = *packed;
  }
  return packs_by_batch_.emplace(std::make_pair(batch_size, threads), std::make_unique<PackSet>(std::move(packs)))
      .first->second.get();
}

absl::StatusOr<std::vector<c10::IValue>> Int8Executor::Run(const std::vector<c10::IValue>& inputs,
                                                             const SlotTap& tap) const {
  if (inputs.size() != program_->inputs.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the model takes ", program_->inputs.size(), " inputs, got ", inputs.size()));
  }
  std::vector<c10::IValue> slots(static_cast<size_t>(program_->num_slots));
  PackSet* packs =
      !inputs.empty() && inputs[0].isTensor() && inputs[0].toTensor().dim() > 0
          ? PacksFor(inputs[0].toTensor().size(0), at::get_num_threads())
          : nullptr;
  for (size_t i = 0; i < inputs.size(); ++i) {
    // A model that writes its input in place (x.sub_(m) first thing) must
    // not write the caller's tensor: tuning and the quality check run many
    // programs on the same images.
    slots[static_cast<size_t>(program_->inputs[i])] =
        writes_in_place_ && inputs[i].isTensor() ? c10::IValue(inputs[i].toTensor().clone()) : inputs[i];
  }
  torch::jit::Stack stack;
  size_t k = 0;
  try {
    for (; k < program_->instrs.size(); ++k) {
      const Instr& instr = program_->instrs[k];
      stack.clear();
      switch (instr.kind) {
        case InstrKind::kQuantize:
          stack.push_back(instr.dtype == at::kQUInt8
                              ? QuantizeToChannelsLast(EvaluateOperand(instr.inputs[0], slots).toTensor(), instr.scale,
                                                       instr.zero_point, quantize_channels_[k])
                              : at::quantize_per_tensor(EvaluateOperand(instr.inputs[0], slots).toTensor(), instr.scale,
                                                        instr.zero_point, instr.dtype));
          break;
        case InstrKind::kDequantize:
          // FP32 from here on runs on the standard layout, whichever layout
          // the int8 kernels left (the artifact's TorchScript does the same),
          // so that FP32 kernels round identically in both.
          stack.push_back(EvaluateOperand(instr.inputs[0], slots).toTensor().dequantize().contiguous());
          break;
        case InstrKind::kConv2d:
        case InstrKind::kLinear: {
          PackSet& set = packs != nullptr && !packs->packs[k].isNone() ? *packs : *own_;
          // A pack's first call runs alone (see PackSet).
          std::unique_lock<std::mutex> first_call(first_calls_mu_, std::defer_lock);
          if (!set.called[k].load(std::memory_order_acquire)) first_call.lock();
          stack.push_back(EvaluateOperand(instr.inputs[0], slots));
          stack.push_back(set.packs[k]);
          stack.push_back(instr.scale);
          stack.push_back(instr.zero_point);
          if (program_->kernel_engine == "qnnpack") {
            // QNNPACK's kernels run on LibTorch's global thread pool, which
            // at::set_num_threads rebuilds (elsewhere, under onednn's lease):
            // without qnnpack's lease a job's pass hung in the freed pool.
            absl::Status ran =
                WithKernelEngine(program_->kernel_engine, instr.name, [&]() { kernels_[k]->callBoxed(stack); });
            if (!ran.ok()) return ran;
          } else {
            kernels_[k]->callBoxed(stack);
          }
          if (first_call.owns_lock()) {
            set.called[k].store(true, std::memory_order_release);
            first_call.unlock();
          }
          if (relu_on_codes_[k] && stack.size() == 1 && stack[0].isTensor()) {
            at::Tensor out = ReluInt8(stack[0].toTensor());
            stack[0] = out.defined() ? std::move(out) : at::relu(stack[0].toTensor());
          }
          if (instr.clamp_max && stack.size() == 1 && stack[0].isTensor()) {  // a bound the codes pass (convert.cc)
            stack[0] = ClampInt8Codes(stack[0].toTensor(), *instr.clamp_max);
          }
          break;
        }
        case InstrKind::kAdd: {
          c10::IValue a = EvaluateOperand(instr.inputs[0], slots);
          c10::IValue b = EvaluateOperand(instr.inputs[1], slots);
          const bool relu = instr.relu || (add_then_relu_[k] && !tap);
          // quantized::add's arithmetic follows the global quantized engine
          // (QNNPACK has its own fixed-point add), not a pack: it is the
          // program's kernel engine, as when Python runs the artifact.
          if (program_->kernel_engine != "qnnpack" && a.isTensor() && b.isTensor()) {
            at::Tensor sum = AddInt8(a.toTensor(), b.toTensor(), instr.scale, instr.zero_point, relu);
            if (sum.defined()) {
              stack.push_back(std::move(sum));
              break;
            }
          }
          stack.push_back(std::move(a));
          stack.push_back(std::move(b));
          stack.push_back(instr.scale);
          stack.push_back(instr.zero_point);
          const c10::OperatorHandle& add = relu && !instr.relu ? *add_relu_kernel_ : *kernels_[k];
          absl::Status added =
              WithKernelEngine(program_->kernel_engine, instr.name, [&]() { add.callBoxed(stack); });
          if (!added.ok()) return added;
          break;
        }
        case InstrKind::kPad:
          stack.push_back(ZeroPadInt8(EvaluateOperand(instr.inputs[0], slots).toTensor(), pads_[k]));
          break;
        case InstrKind::kQuantizedOp: {
          for (const Operand& in : instr.inputs) stack.push_back(EvaluateOperand(in, slots));
          stack.push_back(instr.scale);
          stack.push_back(instr.zero_point);
          // QNNPACK has its own hardswish: the program's engine decides.
          absl::Status ran =
              WithKernelEngine(program_->kernel_engine, instr.name, [&]() { kernels_[k]->callBoxed(stack); });
          if (!ran.ok()) return ran;
          break;
        }
        case InstrKind::kOp:
          for (const Operand& in : instr.inputs) stack.push_back(EvaluateOperand(in, slots));
          if (relu_after_add_[k] && !tap) break;  // the add applied it
          if (int8_relu_[k] && stack.size() == 1 && stack[0].isTensor()) {
            at::Tensor out = ReluInt8(stack[0].toTensor());
            if (out.defined()) {
              stack[0] = std::move(out);
              break;
            }
          }
          if (clamps_[k] && stack[0].isTensor()) {
            at::Tensor out = ClampInt8(stack[0].toTensor(), clamps_[k]->min, clamps_[k]->max);
            if (out.defined()) {
              stack.resize(1);
              stack[0] = std::move(out);
              break;
            }
          }
          if (instr.on_int8) {
            // Quantized pooling and friends pick their arithmetic from the
            // global quantized engine (QNNPACK rounds differently).
            absl::Status ran = WithKernelEngine(program_->kernel_engine, instr.name, [&]() { ops_[k](stack); });
            if (!ran.ok()) return ran;
          } else {
            ops_[k](stack);
            if (instr.relu) stack[0] = at::relu(stack[0].toTensor());
            if (instr.relu && instr.clamp_max) stack[0] = at::clamp_max(stack[0].toTensor(), *instr.clamp_max);
          }
          break;
      }
      if (stack.size() != instr.outputs.size()) {
        return absl::InternalError(absl::StrCat("'", instr.name, "': kernel arity mismatch"));
      }
      for (size_t i = 0; i < stack.size(); ++i) slots[static_cast<size_t>(instr.outputs[i])] = std::move(stack[i]);
      if (tap && !instr.outputs.empty() && slots[static_cast<size_t>(instr.outputs[0])].isTensor()) {
        tap(instr, slots[static_cast<size_t>(instr.outputs[0])].toTensor());
      }
      // Free what no later instruction reads, as an interpreter would.
      for (int dead : dead_after_[k]) slots[static_cast<size_t>(dead)] = c10::IValue();
    }
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("running '", program_->instrs[k].name, "': out of memory"));
  } catch (const std::exception& e) {
    return StatusFromException(absl::StrCat("running '", program_->instrs[k].name, "'"), e);
  }
  std::vector<c10::IValue> outputs;
  for (const Operand& out : program_->outputs) outputs.push_back(EvaluateOperand(out, slots));
  return outputs;
}

absl::StatusOr<at::Tensor> Int8Executor::Forward(const at::Tensor& input) const {
  auto outputs = Run({input});
  if (!outputs.ok()) return outputs.status();
  if (outputs->size() != 1 || !(*outputs)[0].isTensor()) return absl::InvalidArgumentError("model output is not one tensor");
  return (*outputs)[0].toTensor();
}

}  // namespace quantd::engine
