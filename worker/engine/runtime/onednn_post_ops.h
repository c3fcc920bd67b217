#ifndef QUANTD_WORKER_ENGINE_RUNTIME_ONEDNN_POST_OPS_H_
#define QUANTD_WORKER_ENGINE_RUNTIME_ONEDNN_POST_OPS_H_

// Why int8 convolutions and linears on onednn run without a fused ReLU.
//
// oneDNN 2.6's brgemm kernels (int8 on AVX-512 VNNI CPUs) keep raw pointers
// to the attributes (post-ops) of the primitive descriptor that first set
// them up; copies of that descriptor, which oneDNN's primitive cache hands to
// later callers, copy the pointers. When that first descriptor is gone and a
// primitive is built again from a copy (the cached primitive was evicted),
// building its kernel reads freed memory: a crash, an exception, or a
// kernel without its ReLU. Only kernels with post-ops read them, and in
// LibTorch 1.13 ReLU is the only post-op of quantized::conv2d_relu and
// linear_relu on onednn (oneDNN fixed this in 3.4, which Debian 12 lacks).
//
// So on onednn, quantd calls quantized::conv2d / linear and applies the ReLU
// on the codes, max(code, zero point): the same codes (a negative value
// rounds to at most the zero point either way) without any post-op.

#include <string>

namespace torch::jit {
struct Graph;
}  // namespace torch::jit

namespace quantd::engine {

// Whether int8 conv2d_relu / linear_relu run as the plain kernel then a ReLU
// on the codes on `kernel_engine`.
bool UnfusesInt8Relu(const std::string& kernel_engine);

// Rewrites every quantized::conv2d_relu / linear_relu call in `graph`'s top
// block (a loaded artifact's forward, which quantd writes straight-line) into
// the plain kernel followed by an in-place ReLU, when
// UnfusesInt8Relu(kernel_engine). Returns how many it rewrote.
int UnfuseInt8Relu(torch::jit::Graph& graph, const std::string& kernel_engine);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_RUNTIME_ONEDNN_POST_OPS_H_
