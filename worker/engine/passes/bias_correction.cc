#include "worker/engine/passes/bias_correction.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/base/torch_status.h"

namespace quantd::engine {

std::vector<int> BiasCorrectionInputs(const Graph& graph) {
  std::vector<int> values;
  for (const Node& node : graph.nodes) {
    if (node.removed || (node.kind != OpKind::kConv2d && node.kind != OpKind::kLinear)) continue;
    if (node.inputs.empty() || node.inputs[0].kind != Operand::Kind::kValue) continue;
    values.push_back(node.inputs[0].value);
  }
  return values;
}

absl::StatusOr<at::Tensor> CorrectedBias(const Node& node, const at::Tensor& quantized_weight,
                                         const at::Tensor& mean_input) {
  at::Tensor corrected;
  absl::Status status = TorchTry(absl::StrCat("bias correction of '", node.name, "'"), [&]() -> absl::Status {
    at::NoGradGuard no_grad;
    const at::Tensor weight = node.inputs[1].constant.toTensor().to(at::kFloat);
    const at::Tensor rounding = weight - quantized_weight.dequantize();  // W - W_q
    const c10::IValue& bias = node.inputs[2].constant;
    at::Tensor shift;
    if (node.kind == OpKind::kConv2d) {
      const int64_t groups = node.inputs[6].constant.toInt();
      const int64_t channels = weight.size(1) * groups;
      if (mean_input.dim() != 3 || mean_input.size(0) < channels) {
        return absl::InternalError(absl::StrCat("mean input of shape [", absl::StrJoin(mean_input.sizes(), ", "),
                                                "] for a convolution over ", channels, " channels"));
      }
      const at::Tensor mean = mean_input.narrow(0, 0, channels).unsqueeze(0);
      shift = at::conv2d(mean, rounding, {}, node.inputs[3].constant.toIntVector(),
                         node.inputs[4].constant.toIntVector(), node.inputs[5].constant.toIntVector(), groups)
                  .mean({0, 2, 3});
    } else {
      if (mean_input.dim() < 1 || mean_input.size(-1) != weight.size(1)) {
        return absl::InternalError(absl::StrCat("mean input of shape [", absl::StrJoin(mean_input.sizes(), ", "),
                                                "] for a linear layer over ", weight.size(1), " features"));
      }
      // On a [..., F] input (a sequence, an image's rows) the mean is kept per
      // position; the layer's mean output shift is that of their mean.
      shift = at::matmul(rounding, mean_input.reshape({-1, weight.size(1)}).mean(0));
    }
    corrected = bias.isTensor() ? bias.toTensor().to(at::kFloat) + shift : shift;
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return corrected;
}

}  // namespace quantd::engine
