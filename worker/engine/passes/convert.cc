#include "worker/engine/passes/convert.h"

#include <ATen/ATen.h>

#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"
#include "worker/engine/passes/bias_correction.h"
#include "worker/engine/passes/weight_rounding.h"
#include "worker/engine/runtime/int8_kernels.h"
#include "worker/engine/runtime/prepack.h"

namespace quantd::engine {
namespace {

struct QuantizedWeight {
  at::Tensor weight;
  QParams qparams;
};

absl::StatusOr<QuantizedWeight> QuantizeWeight(const Node& node, const QConfig& qconfig, const std::string& engine) {
  const at::Tensor& w = node.inputs[1].constant.toTensor();
  QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<Observer> observer, MakeObserver(qconfig.weight));
  observer->Observe(w);
  QUANTD_ASSIGN_OR_RETURN(QParams q, observer->Compute());
  // LibTorch takes a NaN or infinite scale, and the layer outputs NaN.
  for (float scale : q.scale) {
    if (!std::isfinite(scale) || !(scale > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", node.name, "': its weights", node.fused_names.empty() ? "" : " (BatchNorm folded in)",
                       " hold NaN or infinite values, which int8 cannot represent"));
    }
  }
  for (int64_t zp : q.zero_point) {
    if (zp != 0 && engine == "onednn") {
      return absl::InvalidArgumentError(absl::StrCat("'", node.name, "': weight observer ", qconfig.weight.Describe(),
                                                     " gives non-zero weight zero points, which the onednn kernels "
                                                     "reject; use a symmetric weight observer or kernel engine qnnpack"));
    }
  }
  QuantizedWeight out;
  out.qparams = q;
  if (q.per_channel) {
    at::Tensor scales = at::tensor(q.scale, at::kFloat).to(at::kDouble);
    at::Tensor zps = at::tensor(q.zero_point, at::kLong);
    out.weight = at::quantize_per_channel(w, scales, zps, 0, at::kQInt8);
  } else {
    out.weight = at::quantize_per_tensor(w, static_cast<double>(q.scale[0]), q.zero_point[0], at::kQInt8);
  }
  return out;
}

// quantized::conv2d_prepack / linear_prepack arguments for a node.
std::vector<c10::IValue> PrepackArgs(const Node& node, const at::Tensor& qweight) {
  const c10::IValue& bias = node.inputs[2].constant;  // Tensor or None
  if (node.kind == OpKind::kConv2d) {
    return {qweight, bias, node.inputs[3].constant, node.inputs[4].constant, node.inputs[5].constant,
            node.inputs[6].constant};
  }
  return {qweight, bias};
}

// QNNPACK rounds a conv's or linear's bias to int32 at input scale x weight
// scale. A channel of zero weights (a BatchNorm channel pruned to gamma = 0)
// has the observer's smallest scale, as has an input that was zero all
// through calibration: the bias wrapped around (a channel meant to give 3.0
// gave -2.0). Such channels take the smallest scale at which the bias fits
// in half of int32 (the rest is for the products), their weights rounded
// again to it: a zero channel's codes stay zero, so oneDNN, which keeps the
// bias in float, computes what it did.
at::Tensor FitBiasInInt32(const at::Tensor& qweight, const c10::IValue& bias, double input_scale) {
  if (!bias.isTensor() || !bias.toTensor().defined() || bias.toTensor().numel() == 0) return qweight;
  const at::Tensor needed = bias.toTensor().to(at::kDouble).abs().flatten() / (input_scale * std::ldexp(1.0, 30));
  if (qweight.qscheme() == at::kPerChannelAffine || qweight.qscheme() == at::kPerChannelSymmetric) {
    const at::Tensor scales = qweight.q_per_channel_scales().to(at::kDouble);
    if (needed.numel() != scales.numel() || !at::gt(needed, scales).any().item<bool>()) return qweight;
    return at::quantize_per_channel(qweight.dequantize(), at::maximum(scales, needed * (1 + 1e-6)),
                                    qweight.q_per_channel_zero_points(), qweight.q_per_channel_axis(), at::kQInt8);
  }
  const double largest = needed.max().item<double>();
  if (largest <= qweight.q_scale()) return qweight;
  return at::quantize_per_tensor(qweight.dequantize(), largest * (1 + 1e-6), qweight.q_zero_point(), at::kQInt8);
}

// The value whose scale an int8 value's tensor carries: ops that pass int8
// codes through (relu, max_pool, flatten, pad, ...) keep their input's. -1
// where the program does not set it (sigmoid's and tanh's are LibTorch's).
int ScaleSource(const Graph& graph, const QuantizationPlan& plan, const std::map<int, const Node*>& producer,
                int value) {
  for (size_t hops = 0; hops <= graph.nodes.size(); ++hops) {
    if (!plan.int8_value[static_cast<size_t>(value)]) return value;  // quantized from FP32 with its own
    auto it = producer.find(value);
    if (it == producer.end()) return -1;
    const Node& node = *it->second;
    const NodeRole role = plan.roles[static_cast<size_t>(node.id)];
    if (role == NodeRole::kInt8) return value;
    if (role != NodeRole::kPassThrough || node.kind == OpKind::kFixedQParams || node.inputs.empty() ||
        node.inputs[0].kind != Operand::Kind::kValue) {
      return -1;
    }
    value = node.inputs[0].value;
  }
  return -1;
}

// QNNPACK's int8 add takes inputs whose scale is 2^-14 to 2^8 times the
// output's only (LibTorch asserts otherwise, and the job failed). Where an
// input was (nearly) zero all through calibration, its scale is the
// observer's smallest: it is raised to 2^-13 of the output's, still a
// fraction of an output code; where an input's step is 2^8 output steps or
// more, the output's scale is raised to 1/128 of it (a fraction of that
// input's own rounding error). The adds are looked at again until
// none needs it. Other kernels compute what they did wherever no add needs
// it.
std::map<int, QParams> FitAddScales(const Graph& graph, const QuantizationPlan& plan,
                                    const std::map<int, const Node*>& producer,
                                    const std::map<int, QParams>& activation_qparams) {
  std::map<int, QParams> qparams = activation_qparams;
  for (int sweep = 0; sweep < 8; ++sweep) {
    bool changed = false;
    for (const Node& node : graph.nodes) {
      if (node.removed || node.kind != OpKind::kAdd || plan.roles[static_cast<size_t>(node.id)] != NodeRole::kInt8) {
        continue;
      }
      auto out = qparams.find(node.outputs[0]);
      if (out == qparams.end() || out->second.per_channel) continue;
      for (int i = 0; i < 2; ++i) {
        if (node.inputs[static_cast<size_t>(i)].kind != Operand::Kind::kValue) continue;
        const int source = ScaleSource(graph, plan, producer, node.inputs[static_cast<size_t>(i)].value);
        auto in = source < 0 ? qparams.end() : qparams.find(source);
        if (in == qparams.end() || in->second.per_channel) continue;
        float& in_scale = in->second.scale[0];
        float& out_scale = out->second.scale[0];
        if (in_scale < out_scale * std::ldexp(1.0f, -14)) {
          in_scale = out_scale * std::ldexp(1.0f, -13);
          changed = true;
        } else if (in_scale >= out_scale * std::ldexp(1.0f, 8)) {
          out_scale = in_scale * std::ldexp(1.0f, -7);
          changed = true;
        }
      }
    }
    if (!changed) break;
  }
  return qparams;
}

std::string Int8OpName(const Node& node) {
  return absl::StrCat(OpKindName(node.kind), node.fused_relu ? "_relu" : "");
}

}  // namespace

absl::StatusOr<Program> Convert(const Graph& graph, const QuantizationPlan& plan,
                                const std::map<int, QParams>& calibrated_qparams, const QConfig& qconfig,
                                const std::string& kernel_engine, std::vector<LayerReport>* layers,
                                const std::map<int, at::Tensor>& input_means,
                                const std::map<int, at::Tensor>& input_second_moments,
                                FittedWeights* fitted_weights) {
  std::map<int, const Node*> producer_node;
  for (const Node& node : graph.nodes) {
    if (node.removed) continue;
    for (int v : node.outputs) producer_node[v] = &node;
  }
  const std::map<int, QParams> activation_qparams = FitAddScales(graph, plan, producer_node, calibrated_qparams);
  Program program;
  program.inputs = graph.inputs;
  program.input_types = graph.input_types;
  program.output_is_tuple = graph.output_is_tuple;
  program.num_slots = graph.num_values;
  program.kernel_engine = kernel_engine;

  std::map<int, std::string> producer;  // value -> name, for instruction names
  for (size_t i = 0; i < graph.inputs.size(); ++i) producer[graph.inputs[i]] = graph.input_names[i];
  for (const Node& node : graph.nodes) {
    if (!node.removed) {
      for (int v : node.outputs) producer[v] = node.name;
    }
  }
  auto qparams_of = [&](int value) -> absl::StatusOr<const QParams*> {
    auto it = activation_qparams.find(value);
    if (it == activation_qparams.end()) {
      return absl::InternalError(absl::StrCat("no observer for the output of '", producer[value], "'"));
    }
    return &it->second;
  };

  std::map<int, int> quantized_slot, dequantized_slot;
  auto int8_input = [&](int value) -> absl::StatusOr<int> {
    if (plan.int8_value[static_cast<size_t>(value)]) return value;
    auto it = quantized_slot.find(value);
    if (it != quantized_slot.end()) return it->second;
    QUANTD_ASSIGN_OR_RETURN(const QParams* q, qparams_of(value));
    Instr instr;
    instr.kind = InstrKind::kQuantize;
    instr.name = absl::StrCat("quantize:", producer[value]);
    instr.inputs = {Operand::Value(value)};
    instr.scale = static_cast<double>(q->scale[0]);
    instr.zero_point = q->zero_point[0];
    instr.outputs = {program.num_slots++};
    quantized_slot[value] = instr.outputs[0];
    layers->push_back({instr.name, "quantize", instr.scale, instr.zero_point, {}, std::nullopt});
    program.instrs.push_back(std::move(instr));
    return quantized_slot[value];
  };
  std::function<void(Operand*)> to_fp32 = [&](Operand* operand) {
    if (operand->kind == Operand::Kind::kValue && plan.int8_value[static_cast<size_t>(operand->value)]) {
      auto it = dequantized_slot.find(operand->value);
      if (it == dequantized_slot.end()) {
        Instr instr;
        instr.kind = InstrKind::kDequantize;
        instr.name = absl::StrCat("dequantize:", producer[operand->value]);
        instr.inputs = {Operand::Value(operand->value)};
        instr.outputs = {program.num_slots++};
        it = dequantized_slot.emplace(operand->value, instr.outputs[0]).first;
        program.instrs.push_back(std::move(instr));
      }
      operand->value = it->second;
    }
    for (Operand& item : operand->items) to_fp32(&item);
  };

  for (const Node& node : graph.nodes) {
    if (node.removed) continue;
    const NodeRole role = plan.roles[static_cast<size_t>(node.id)];
    Instr instr;
    instr.name = node.name;
    instr.node_id = node.id;
    instr.outputs = node.outputs;
    instr.jit_node = node.jit_node;
    if (role == NodeRole::kInt8) {
      QUANTD_ASSIGN_OR_RETURN(const QParams* out_q, qparams_of(node.outputs[0]));
      instr.scale = static_cast<double>(out_q->scale[0]);
      instr.zero_point = out_q->zero_point[0];
      instr.relu = node.fused_relu;
      LayerReport layer{node.name, Int8OpName(node), instr.scale, instr.zero_point, {}, std::nullopt};
      if (node.kind == OpKind::kAdd) {
        instr.kind = InstrKind::kAdd;
        QUANTD_ASSIGN_OR_RETURN(int a, int8_input(node.inputs[0].value));
        QUANTD_ASSIGN_OR_RETURN(int b, int8_input(node.inputs[1].value));
        instr.inputs = {Operand::Value(a), Operand::Value(b)};
      } else if (node.kind == OpKind::kHardswish) {
        instr.kind = InstrKind::kQuantizedOp;
        instr.quantized_op = "quantized::hardswish";
        QUANTD_ASSIGN_OR_RETURN(int x, int8_input(node.inputs[0].value));
        instr.inputs = {Operand::Value(x)};
      } else if (node.kind == OpKind::kCat) {
        instr.kind = InstrKind::kQuantizedOp;
        instr.quantized_op = "quantized::cat";
        Operand list = node.inputs[0];
        for (Operand& item : list.items) {
          QUANTD_ASSIGN_OR_RETURN(int x, int8_input(item.value));
          item = Operand::Value(x);
        }
        instr.inputs = {list, node.inputs[1]};
      } else {
        instr.kind = node.kind == OpKind::kConv2d ? InstrKind::kConv2d : InstrKind::kLinear;
        QUANTD_ASSIGN_OR_RETURN(int x, int8_input(node.inputs[0].value));
        instr.inputs = {Operand::Value(x)};
        QUANTD_ASSIGN_OR_RETURN(QuantizedWeight qw, QuantizeWeight(node, qconfig, kernel_engine));
        if (qconfig.fitted_rounding) {
          if (auto moments = input_second_moments.find(node.id); moments != input_second_moments.end()) {
            QUANTD_ASSIGN_OR_RETURN(qw.weight, fitted_weights != nullptr
                                                   ? fitted_weights->RoundToInputs(node, qw.weight, moments->second)
                                                   : RoundToInputs(node, qw.weight, moments->second));
          }
        }
        instr.prepack_args = PrepackArgs(node, qw.weight);
        if (qconfig.bias_correction) {
          auto mean = input_means.find(node.inputs[0].value);
          if (mean == input_means.end()) {
            return absl::InternalError(
                absl::StrCat("bias correction: no calibration mean of the input of '", node.name, "'"));
          }
          QUANTD_ASSIGN_OR_RETURN(at::Tensor bias, CorrectedBias(node, qw.weight, mean->second));
          instr.prepack_args[1] = bias;
        }
        if (const int source = ScaleSource(graph, plan, producer_node, node.inputs[0].value); source >= 0) {
          QUANTD_ASSIGN_OR_RETURN(const QParams* in_q, qparams_of(source));
          QUANTD_RETURN_IF_ERROR(TorchTry(absl::StrCat("fitting the bias of '", node.name, "' in int32"), [&]() {
            instr.prepack_args[0] = FitBiasInInt32(instr.prepack_args[0].toTensor(), instr.prepack_args[1],
                                                   static_cast<double>(in_q->scale[0]));
            return absl::OkStatus();
          }));
        }
        auto packed = node.kind == OpKind::kConv2d ? PrepackConv2d(kernel_engine, instr.prepack_args)
                                                   : PrepackLinear(kernel_engine, instr.prepack_args);
        if (!packed.ok()) {
          return absl::Status(packed.status().code(),
                              absl::StrCat("prepacking the weights of '", node.name, "': ", packed.status().message()));
        }
        instr.packed = *packed;
        layer.weight_scales.assign(qw.qparams.scale.begin(), qw.qparams.scale.end());
        if (const at::Tensor& fitted = instr.prepack_args[0].toTensor(); !fitted.is_same(qw.weight)) {
          // Raised for the int32 bias (FitBiasInInt32): double scales, kept
          // as they are (the manifest once rounded them to float).
          const at::Tensor scales = qw.qparams.per_channel ? fitted.q_per_channel_scales().to(at::kDouble).contiguous()
                                                           : at::full({1}, fitted.q_scale(), at::kDouble);
          layer.weight_scales.assign(scales.data_ptr<double>(), scales.data_ptr<double>() + scales.numel());
        }
        // A ReLU6-like bound fused into the conv is left to the output's
        // saturation only when its code is the largest: calibration saw at
        // most the bound, but with reduce_range's 7 bits its code is ~127
        // and the kernel's quint8 output goes on to 255 (twice the bound).
        if (node.fused_relu && node.fused_clamp_max.has_value() &&
            QuantizedCode(*node.fused_clamp_max, instr.scale, instr.zero_point, /*is_signed=*/false) < 255) {
          instr.clamp_max = node.fused_clamp_max;
        }
      }
      layers->push_back(std::move(layer));
    } else {
      instr.kind = InstrKind::kOp;
      instr.inputs = node.inputs;
      if (role == NodeRole::kPassThrough) {
        instr.on_int8 = true;
        if (node.kind == OpKind::kPad) {
          instr.kind = InstrKind::kPad;
          instr.inputs = {node.inputs[0], node.inputs[1]};
        }
      } else {
        for (Operand& in : instr.inputs) to_fp32(&in);
        instr.relu = node.fused_relu;  // e.g. batch_norm+relu without a conv to fold into
        instr.clamp_max = node.fused_clamp_max;
      }
    }
    program.instrs.push_back(std::move(instr));
  }
  program.outputs = graph.outputs;
  for (Operand& out : program.outputs) to_fp32(&out);
  return program;
}

}  // namespace quantd::engine
