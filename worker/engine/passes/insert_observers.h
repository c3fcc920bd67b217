#ifndef QUANTD_WORKER_ENGINE_PASSES_INSERT_OBSERVERS_H_
#define QUANTD_WORKER_ENGINE_PASSES_INSERT_OBSERVERS_H_

// Decides, for the fused graph, which ops run on int8 kernels, which values
// are int8 and which FP32 values need an activation observer: the output of
// every int8 op, and every FP32 value an int8 op reads (the model input
// plays the part of eager mode's QuantStub, a fallback's output re-enters).

#include <map>
#include <set>
#include <string>
#include <vector>

#include "worker/engine/ir/graph.h"
#include "worker/engine/report.h"

namespace quantd::engine {

enum class NodeRole {
  kInt8,         // conv2d / linear / add / hardswish / cat on int8 kernels with own output qparams
  kPassThrough,  // runs on the int8 tensor: keeps its qparams (relu, clamp, pad, pooling, flatten)
                 // or gets LibTorch's fixed ones (sigmoid, hardsigmoid, tanh)
  kFp32,         // runs in FP32
};

using Fallback = FallbackReport;  // node, op, reason

struct QuantizationPlan {
  std::vector<NodeRole> roles;      // by node id
  std::vector<bool> int8_value;     // by value id: int8 in the converted model
  std::vector<int> observed_values; // FP32 values that get an activation observer, in graph order
  std::vector<Fallback> fallbacks;  // every tensor op left in FP32
};

// `keep_fp32`: names of nodes that would run on int8 kernels but stay FP32
// (accuracy-aware tuning's fallback); their inputs are dequantized and their
// outputs quantized again where int8 ops read them.
QuantizationPlan PlanQuantization(const Graph& graph, const std::set<std::string>& keep_fp32 = {});

// Whether codes of LibTorch's fixed int8 qparams (sigmoid, hardsigmoid, tanh
// on int8: the whole 0..255 range, whatever the qconfig's activation range)
// reach a conv or linear on int8 kernels through ops that keep their codes.
// Such a model needs exact u8 x s8 kernels even with reduce_range.
bool FixedQParamsCodesReachWeightedOps(const Graph& graph, const QuantizationPlan& plan);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_PASSES_INSERT_OBSERVERS_H_
