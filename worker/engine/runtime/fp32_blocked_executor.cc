#include "worker/engine/runtime/fp32_blocked_executor.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <map>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"

#ifdef QUANTD_HAVE_ONEDNN_CALIBRATION
#include <dnnl.hpp>
#endif

namespace quantd::engine {

#ifdef QUANTD_HAVE_ONEDNN_CALIBRATION
namespace {

using dnnl::memory;
// Channels per block: oneDNN picks nChw16c on AVX-512 CPUs and nChw8c on
// AVX2 ones; the path keeps whichever the convolution chose.
constexpr int64_t kBlockWidths[] = {16, 8};

// A conv2d the oneDNN path runs: what LibTorch would hand to oneDNN.
struct ConvSpec {
  at::Tensor weight;  // OIHW, contiguous
  at::Tensor bias;    // undefined when the conv has none
  memory::dims strides, padding;
};

std::optional<std::vector<int64_t>> IntPair(const Operand& operand) {
  if (operand.kind != Operand::Kind::kConstant || !operand.constant.isIntList()) return std::nullopt;
  std::vector<int64_t> v = operand.constant.toIntVector();
  if (v.size() == 1) v.push_back(v[0]);
  if (v.size() != 2) return std::nullopt;
  return v;
}

// conv2d(input, weight, bias, stride, padding, dilation, groups) with
// constant float weights and bias, positive strides, non-negative integer
// padding, no dilation and one group; others run in LibTorch.
std::optional<ConvSpec> SpecOf(const Node& node) {
  if (node.kind != OpKind::kConv2d || node.inputs.size() != 7) return std::nullopt;
  if (node.inputs[1].kind != Operand::Kind::kConstant || node.inputs[2].kind != Operand::Kind::kConstant) {
    return std::nullopt;
  }
  const c10::IValue& w = node.inputs[1].constant;
  const c10::IValue& b = node.inputs[2].constant;
  if (!w.isTensor() || w.toTensor().dim() != 4 || w.toTensor().scalar_type() != at::kFloat) return std::nullopt;
  if (!b.isNone() && (!b.isTensor() || b.toTensor().scalar_type() != at::kFloat)) return std::nullopt;
  // LibTorch takes its channels-last (nhwc) oneDNN path for such weights, and
  // for a [O, 1, 1, 1] weight, which is channels-last as much as contiguous.
  const at::Tensor& weight = w.toTensor();
  if (weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast) return std::nullopt;
  if (weight.size(1) * weight.size(2) * weight.size(3) == 1) return std::nullopt;
  const auto stride = IntPair(node.inputs[3]);
  const auto padding = IntPair(node.inputs[4]);
  const auto dilation = IntPair(node.inputs[5]);
  const c10::IValue& groups = node.inputs[6].constant;
  if (!stride || !padding || !dilation || (*dilation)[0] != 1 || (*dilation)[1] != 1) return std::nullopt;
  if ((*stride)[0] < 1 || (*stride)[1] < 1 || (*padding)[0] < 0 || (*padding)[1] < 0) return std::nullopt;
  if (!groups.isInt() || groups.toInt() != 1) return std::nullopt;
  ConvSpec spec;
  spec.weight = w.toTensor().contiguous();
  if (b.isTensor()) spec.bias = b.toTensor().contiguous();
  spec.strides = *stride;
  spec.padding = *padding;
  return spec;
}

struct ConvPrimitive {
  dnnl::convolution_forward::primitive_desc pd;
  dnnl::convolution_forward conv;
  at::Tensor weights;  // reordered once into the layout the kernel reads
  memory::dims dst_dims;
};

memory::desc BlockedDesc(const memory::dims& dims, int64_t block) {
  return {dims, memory::data_type::f32, block == 8 ? memory::format_tag::nChw8c : memory::format_tag::nChw16c};
}
memory::desc PlainDesc(const memory::dims& dims) { return {dims, memory::data_type::f32, memory::format_tag::nchw}; }

at::Tensor EmptyBytes(size_t bytes) { return at::empty({static_cast<int64_t>(bytes)}, at::kByte); }

// Elementwise loops over blocked tensors, with at::relu's value for every
// input (NaN stays NaN; -0.0 and 0.0 compare equal, so either is the same value).
inline float Relu(float x) { return x < 0.0f ? 0.0f : x; }

// Split across the intra-op threads like LibTorch's own elementwise ops.
constexpr int64_t kGrain = 1 << 15;

at::Tensor AddBlocked(const at::Tensor& a, const at::Tensor& b, bool relu) {
  at::Tensor out = at::empty_like(a);
  const float* pa = a.data_ptr<float>();
  const float* pb = b.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, a.numel(), kGrain, [&](int64_t begin, int64_t end) {
    const float* __restrict x = pa + begin;
    const float* __restrict y = pb + begin;
    float* __restrict z = po + begin;
    const int64_t n = end - begin;
    if (relu) {
      for (int64_t i = 0; i < n; ++i) z[i] = Relu(x[i] + y[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) z[i] = x[i] + y[i];
    }
  });
  return out;
}

// out = relu(in); `out` may be `in` itself.
void ReluInto(const at::Tensor& in, const at::Tensor& out) {
  const float* px = in.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, in.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) po[i] = Relu(px[i]);
  });
}

// Zero pad of H and W: each output row written once.
at::Tensor PadBlocked(const at::Tensor& x, int64_t left, int64_t right, int64_t top, int64_t bottom) {
  const int64_t planes = x.size(0) * x.size(1), h = x.size(2), w = x.size(3);
  const int64_t out_h = h + top + bottom, out_w = w + left + right;
  const int64_t block = x.size(4);
  at::Tensor out = at::empty({x.size(0), x.size(1), out_h, out_w, block}, at::kFloat);
  const float* px = x.data_ptr<float>();
  float* po = out.data_ptr<float>();
  const int64_t in_row = w * block, out_row = out_w * block;
  at::parallel_for(0, planes, std::max<int64_t>(1, kGrain / (out_h * out_row)), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float* src = px + p * h * in_row;
      float* dst = po + p * out_h * out_row;
      for (int64_t r = 0; r < out_h; ++r, dst += out_row) {
        if (r < top || r >= top + h) {
          std::fill(dst, dst + out_row, 0.0f);
          continue;
        }
        std::fill(dst, dst + left * block, 0.0f);
        std::copy(src + (r - top) * in_row, src + (r - top + 1) * in_row, dst + left * block);
        std::fill(dst + left * block + in_row, dst + out_row, 0.0f);
      }
    }
  });
  return out;
}

class OneDnnExecutor : public Fp32BlockedExecutor {
 public:
  OneDnnExecutor(const Graph* graph, Fp32Executor fallback, std::vector<std::optional<ConvSpec>> convs)
      : graph_(graph), fallback_(std::move(fallback)), convs_(std::move(convs)) {}

  bool Accepts(const at::Tensor& input) const override {
    return input.defined() && input.device().is_cpu() && input.scalar_type() == at::kFloat && input.dim() == 4 &&
           input.is_contiguous() && input.size(0) >= 16 && at::globalContext().userEnabledMkldnn();
  }

  absl::Status Run(const at::Tensor& input, const LayoutTap& tap) const override {
    if (!Accepts(input)) return absl::InvalidArgumentError("batch not accepted by the oneDNN path");
    std::optional<dnnl::stream> started;
    QUANTD_RETURN_IF_ERROR(TorchTry("starting a oneDNN stream", [&]() {
      started.emplace(engine_);
      return absl::OkStatus();
    }));
    dnnl::stream& stream = *started;
    const auto n = static_cast<size_t>(graph_->num_values);
    std::vector<c10::IValue> values(n);  // NCHW (or non-tensor) values
    std::vector<at::Tensor> blocked(n);  // blocked values, [N, C/B, H, W, B]
    const int in = graph_->inputs[0];
    values[static_cast<size_t>(in)] = input;
    if (tap) tap(in, input, TapLayout::kPlain);
    for (const Node& node : graph_->nodes) {
      if (node.removed) continue;
      bool done = false;
      QUANTD_RETURN_IF_ERROR(TorchTry(absl::StrCat("running '", node.name, "' on oneDNN"), [&]() -> absl::Status {
        QUANTD_ASSIGN_OR_RETURN(done, RunBlocked(node, stream, values, blocked));
        return absl::OkStatus();
      }));
      if (!done) {
        QUANTD_RETURN_IF_ERROR(TorchTry("reordering to NCHW", [&]() {
          for (const Operand& operand : node.inputs) MaterializePlain(operand, blocked, values, stream);
          return absl::OkStatus();
        }));
        QUANTD_RETURN_IF_ERROR(fallback_.RunNode(node, &values));
      }
      if (!tap) continue;
      for (int out : node.outputs) {
        const auto v = static_cast<size_t>(out);
        if (blocked[v].defined()) {
          tap(out, blocked[v], TapLayout::kBlocked);
        } else if (values[v].isTensor()) {
          tap(out, values[v].toTensor(), TapLayout::kPlain);
        }
      }
    }
    return absl::OkStatus();
  }

 private:
  // [N, C/B, H, W, B] -> [N, C, H, W]: pure data movement.
  at::Tensor BlockedToPlain(const at::Tensor& blocked, dnnl::stream& stream) const {
    const memory::dims dims = {blocked.size(0), blocked.size(1) * blocked.size(4), blocked.size(2), blocked.size(3)};
    at::Tensor plain = at::empty(dims, at::kFloat);
    memory from(BlockedDesc(dims, blocked.size(4)), engine_, blocked.data_ptr());
    memory to(PlainDesc(dims), engine_, plain.data_ptr());
    dnnl::reorder(from, to).execute(stream, from, to);
    stream.wait();
    return plain;
  }

  void MaterializePlain(const Operand& operand, const std::vector<at::Tensor>& blocked,
                        std::vector<c10::IValue>& values, dnnl::stream& stream) const {
    if (operand.kind == Operand::Kind::kList) {
      for (const Operand& item : operand.items) MaterializePlain(item, blocked, values, stream);
      return;
    }
    if (operand.kind != Operand::Kind::kValue) return;
    const auto v = static_cast<size_t>(operand.value);
    if (blocked[v].defined() && values[v].isNone()) values[v] = BlockedToPlain(blocked[v], stream);
  }

  // Runs `node` on blocked tensors if it can; false leaves it to LibTorch.
  absl::StatusOr<bool> RunBlocked(const Node& node, dnnl::stream& stream, std::vector<c10::IValue>& values,
                                  std::vector<at::Tensor>& blocked) const {
    auto blocked_input = [&](size_t i) -> at::Tensor {
      if (i >= node.inputs.size() || node.inputs[i].kind != Operand::Kind::kValue) return {};
      return blocked[static_cast<size_t>(node.inputs[i].value)];
    };
    const auto out = static_cast<size_t>(node.outputs.empty() ? 0 : node.outputs[0]);
    switch (node.kind) {
      case OpKind::kConv2d:
        return RunConv(node, stream, values, blocked);
      case OpKind::kAdd: {  // alpha is 1 (see the importer)
        const at::Tensor a = blocked_input(0), b = blocked_input(1);
        if (!a.defined() || !b.defined() || !a.sizes().equals(b.sizes())) return false;
        blocked[out] = AddBlocked(a, b, node.fused_relu);
        return true;
      }
      case OpKind::kRelu: {
        const at::Tensor x = blocked_input(0);
        if (!x.defined() || node.OpName() != "aten::relu") return false;
        blocked[out] = at::empty_like(x);
        ReluInto(x, blocked[out]);
        return true;
      }
      case OpKind::kPad: {  // zero pad of W (and H): the same pad inside each channel block
        const at::Tensor x = blocked_input(0);
        if (!x.defined() || !node.inputs[1].constant.isIntList()) return false;
        std::vector<int64_t> pad = node.inputs[1].constant.toIntVector();  // W left, right, H top, bottom
        if (pad.size() == 2) pad.insert(pad.end(), {0, 0});
        if (pad.size() != 4 || *std::min_element(pad.begin(), pad.end()) < 0) return false;
        blocked[out] = PadBlocked(x, pad[0], pad[1], pad[2], pad[3]);
        return true;
      }
      default:
        return false;
    }
  }

  absl::StatusOr<bool> RunConv(const Node& node, dnnl::stream& stream, std::vector<c10::IValue>& values,
                               std::vector<at::Tensor>& blocked) const {
    const std::optional<ConvSpec>& spec = convs_[static_cast<size_t>(node.id)];
    if (!spec || node.inputs[0].kind != Operand::Kind::kValue) return false;
    const auto in = static_cast<size_t>(node.inputs[0].value);
    memory::dims src_dims;
    memory src;
    if (blocked[in].defined()) {
      const at::Tensor& x = blocked[in];
      src_dims = {x.size(0), x.size(1) * x.size(4), x.size(2), x.size(3)};
      src = memory(BlockedDesc(src_dims, x.size(4)), engine_, x.data_ptr());
    } else if (values[in].isTensor()) {
      const at::Tensor& x = values[in].toTensor();
      if (!Accepts(x) || x.size(1) != spec->weight.size(1)) return false;
      src_dims = {x.size(0), x.size(1), x.size(2), x.size(3)};
      src = memory(PlainDesc(src_dims), engine_, x.data_ptr());
    } else {
      return false;
    }
    QUANTD_ASSIGN_OR_RETURN(const ConvPrimitive* p, Primitive(node, *spec, src_dims, stream));
    at::Tensor reordered_src;
    if (src.get_desc() != p->pd.src_desc()) {
      reordered_src = EmptyBytes(p->pd.src_desc().get_size());
      memory to(p->pd.src_desc(), engine_, reordered_src.data_ptr());
      dnnl::reorder(src, to).execute(stream, src, to);
      src = to;
    }
    at::Tensor dst = EmptyBytes(p->pd.dst_desc().get_size());
    memory dst_memory(p->pd.dst_desc(), engine_, dst.data_ptr());
    at::Tensor scratchpad = EmptyBytes(p->pd.scratchpad_desc().get_size());
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, src},
        {DNNL_ARG_WEIGHTS, memory(p->pd.weights_desc(), engine_, p->weights.data_ptr())},
        {DNNL_ARG_DST, dst_memory},
        {DNNL_ARG_SCRATCHPAD, memory(p->pd.scratchpad_desc(), engine_, scratchpad.data_ptr())}};
    if (spec->bias.defined()) args[DNNL_ARG_BIAS] = memory(p->pd.bias_desc(), engine_, spec->bias.data_ptr());
    p->conv.execute(stream, args);
    stream.wait();
    const memory::dims& d = p->dst_dims;
    const auto out = static_cast<size_t>(node.outputs[0]);
    int64_t block = 0;
    for (int64_t width : kBlockWidths) {
      if (d[1] % width == 0 && p->pd.dst_desc() == BlockedDesc(d, width)) block = width;
    }
    if (block != 0) {
      blocked[out] = dst.view(at::kFloat).view({d[0], d[1] / block, d[2], d[3], block});
    } else {  // a layout this path does not keep: hand LibTorch NCHW
      at::Tensor plain = at::empty({d[0], d[1], d[2], d[3]}, at::kFloat);
      memory to(PlainDesc(d), engine_, plain.data_ptr());
      dnnl::reorder(dst_memory, to).execute(stream, dst_memory, to);
      stream.wait();
      blocked[out] = at::Tensor();
      values[out] = plain;
    }
    if (node.fused_relu) {
      const at::Tensor& result = blocked[out].defined() ? blocked[out] : values[out].toTensor();
      ReluInto(result, result);
      if (node.fused_clamp_max) result.clamp_max_(*node.fused_clamp_max);
    }
    return true;
  }

  // The primitive LibTorch's mkldnn_convolution creates for these shapes:
  // layouts left to oneDNN ("any"), scratchpad supplied by the caller.
  absl::StatusOr<const ConvPrimitive*> Primitive(const Node& node, const ConvSpec& spec, const memory::dims& src_dims,
                                                 dnnl::stream& stream) const {
    // oneDNN fixes a primitive's work split for the thread count it was made under.
    const std::array<int64_t, 5> key = {node.id, src_dims[0], src_dims[2], src_dims[3], at::get_num_threads()};
    absl::MutexLock lock(&mu_);
    auto it = primitives_.find(key);
    if (it != primitives_.end()) return it->second.get();
    const at::Tensor& w = spec.weight;
    const memory::dims w_dims = {w.size(0), w.size(1), w.size(2), w.size(3)};
    memory::dims dst_dims = {src_dims[0], w.size(0), 0, 0};
    for (int i = 0; i < 2; ++i) {
      const int64_t extent = src_dims[2 + i] + 2 * spec.padding[i] - w.size(2 + i);
      if (extent < 0) return absl::InvalidArgumentError("convolution input smaller than its kernel");
      dst_dims[2 + i] = extent / spec.strides[i] + 1;
    }
    auto any = [](const memory::dims& dims) {
      return memory::desc(dims, memory::data_type::f32, memory::format_tag::any);
    };
    const memory::dims no_dilation = {0, 0};
    auto desc = spec.bias.defined()
                    ? dnnl::convolution_forward::desc(
                          dnnl::prop_kind::forward, dnnl::algorithm::convolution_direct, any(src_dims), any(w_dims),
                          memory::desc({w.size(0)}, memory::data_type::f32, memory::format_tag::x), any(dst_dims),
                          spec.strides, no_dilation, spec.padding, spec.padding)
                    : dnnl::convolution_forward::desc(dnnl::prop_kind::forward, dnnl::algorithm::convolution_direct,
                                                      any(src_dims), any(w_dims), any(dst_dims), spec.strides,
                                                      no_dilation, spec.padding, spec.padding);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    auto primitive = std::make_unique<ConvPrimitive>();
    primitive->pd = dnnl::convolution_forward::primitive_desc(desc, attr, engine_);
    primitive->conv = dnnl::convolution_forward(primitive->pd);
    primitive->dst_dims = dst_dims;
    primitive->weights = EmptyBytes(primitive->pd.weights_desc().get_size());
    memory user_weights({w_dims, memory::data_type::f32, memory::format_tag::oihw}, engine_, w.data_ptr());
    memory weights(primitive->pd.weights_desc(), engine_, primitive->weights.data_ptr());
    dnnl::reorder(user_weights, weights).execute(stream, user_weights, weights);
    stream.wait();
    const ConvPrimitive* result = primitive.get();
    primitives_[key] = std::move(primitive);
    return result;
  }

  const Graph* graph_;
  Fp32Executor fallback_;                        // every op this path leaves to LibTorch
  std::vector<std::optional<ConvSpec>> convs_;  // by node id
  dnnl::engine engine_{dnnl::engine::kind::cpu, 0};
  mutable absl::Mutex mu_;
  mutable std::map<std::array<int64_t, 5>, std::unique_ptr<ConvPrimitive>> primitives_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<Fp32BlockedExecutor>> Fp32BlockedExecutor::Create(const Graph* graph) {
  QUANTD_ASSIGN_OR_RETURN(Fp32Executor fallback, Fp32Executor::Create(graph));
  if (fallback.MutatesValues() || graph->inputs.size() != 1 || !at::hasMKLDNN()) return nullptr;
  std::vector<std::optional<ConvSpec>> convs(graph->nodes.size());
  bool any_conv = false;
  absl::Status status = TorchTry("preparing the oneDNN convolutions", [&]() {
    for (const Node& node : graph->nodes) {
      if (node.removed) continue;
      convs[static_cast<size_t>(node.id)] = SpecOf(node);
      any_conv = any_conv || convs[static_cast<size_t>(node.id)].has_value();
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  if (!any_conv) return nullptr;
  std::unique_ptr<Fp32BlockedExecutor> executor;
  QUANTD_RETURN_IF_ERROR(TorchTry("starting oneDNN", [&]() {  // the engine's constructor may throw dnnl::error
    executor = std::make_unique<OneDnnExecutor>(graph, std::move(fallback), std::move(convs));
    return absl::OkStatus();
  }));
  return executor;
}

#else  // no oneDNN shared with LibTorch in this build

absl::StatusOr<std::unique_ptr<Fp32BlockedExecutor>> Fp32BlockedExecutor::Create(const Graph*) { return nullptr; }

#endif

}  // namespace quantd::engine
