#ifndef QUANTD_WORKER_ENGINE_RUNTIME_INT8_KERNELS_H_
#define QUANTD_WORKER_ENGINE_RUNTIME_INT8_KERNELS_H_

// Two int8 data-movement kernels where LibTorch 1.13 (without fbgemm) is
// slow; both give exactly LibTorch's values (unit-tested against it).

#include <ATen/core/Tensor.h>

namespace quantd::engine {

// at::quantize_per_tensor(x, scale, zero_point, quint8) for a 4-D float
// tensor, written straight into channels-last layout (what oneDNN's int8
// convolutions read), without LibTorch's scalar loop and reorder.
at::Tensor QuantizeToChannelsLast(const at::Tensor& x, double scale, int64_t zero_point);

// Constant zero pad of an int8 tensor (F.pad order: last dim first), done on
// the raw bytes with the zero point as fill, in the input's memory layout.
at::Tensor ZeroPadInt8(const at::Tensor& q, const std::vector<int64_t>& pad);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_RUNTIME_INT8_KERNELS_H_
