#ifndef QUANTD_WORKER_ENGINE_RUNTIME_INT8_KERNELS_H_
#define QUANTD_WORKER_ENGINE_RUNTIME_INT8_KERNELS_H_

// int8 kernels where LibTorch 1.13 (without fbgemm) is slow; each gives
// exactly LibTorch's values (unit-tested against it).

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace quantd::engine {

// at::quantize_per_tensor(x, scale, zero_point, quint8) for a 4-D float
// tensor, written straight into channels-last layout (what oneDNN's int8
// convolutions read), without LibTorch's scalar loop and reorder. With
// `channels` larger than x's, the extra channels hold the code of 0.0.
at::Tensor QuantizeToChannelsLast(const at::Tensor& x, double scale, int64_t zero_point, int64_t channels = 0);

// Constant zero pad of an int8 tensor (F.pad order: last dim first), done on
// the raw bytes with the zero point as fill, in the input's memory layout.
at::Tensor ZeroPadInt8(const at::Tensor& q, const std::vector<int64_t>& pad);

// quantized::add / add_relu as LibTorch 1.13 computes them outside QNNPACK
// (dequantize with a fused multiply-add, add, requantize), for two quint8
// per-tensor tensors of one shape and one dense layout whose size LibTorch
// runs wholly through its vector formula (no scalar tails at the current
// intra-op thread count). Returns an undefined tensor for any other case:
// call the operator then.
at::Tensor AddInt8(const at::Tensor& a, const at::Tensor& b, double scale, int64_t zero_point, bool relu);

// ReLU on a quint8 per-tensor tensor: max(code, zero point), same qparams
// and layout. Undefined tensor for other cases.
at::Tensor ReluInt8(const at::Tensor& q);

// The code LibTorch's quantize_val gives `value`: zero_point +
// nearbyint(value * (1.0f / float(scale))), clamped to the type's range.
int64_t QuantizedCode(double value, double scale, int64_t zero_point, bool is_signed);

// clamp / hardtanh / relu6 on a per-tensor quint8 or qint8 tensor as
// LibTorch's quantized kernel computes them (the bounds quantized with the
// input's qparams, codes clamped), same qparams and layout, on every kernel
// engine: QNNPACK's own clamp garbles channels-last tensors in LibTorch 1.13.
// A missing bound leaves that side open. Undefined tensor for other cases.
at::Tensor ClampInt8(const at::Tensor& q, std::optional<double> min, std::optional<double> max);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_RUNTIME_INT8_KERNELS_H_
