#include "worker/engine/runtime/int8_kernels.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace quantd::engine {
namespace {

TEST(QuantizeToChannelsLastTest, SameCodesAsLibTorch) {
  at::manual_seed(3);
  // Raw pixels (many exact halves after scaling) and signed activations.
  const at::Tensor pixels = at::floor(at::rand({4, 3, 8, 8}) * 256);
  const at::Tensor signed_values = at::randn({2, 5, 7, 3}) * 3;
  for (const auto& [x, scale, zp] : std::vector<std::tuple<at::Tensor, double, int64_t>>{
           {pixels, 2.0068896, 0}, {pixels, 1.0, 0}, {pixels, 0.99951171875, 3}, {signed_values, 0.0471, 128},
           {signed_values * 100, 0.5, 120}}) {
    const at::Tensor ours = QuantizeToChannelsLast(x, scale, zp);
    const at::Tensor theirs = at::quantize_per_tensor(x, scale, zp, at::kQUInt8);
    EXPECT_TRUE(ours.is_contiguous(at::MemoryFormat::ChannelsLast));
    EXPECT_EQ(ours.q_scale(), scale);
    EXPECT_TRUE(at::equal(ours.int_repr(), theirs.int_repr())) << "scale " << scale;
  }
}

TEST(ZeroPadInt8Test, SameAsPaddingTheFloatTensor) {
  at::manual_seed(4);
  const at::Tensor q = at::quantize_per_tensor(at::randn({2, 4, 5, 6}), 0.05, 130, at::kQUInt8);
  for (const at::Tensor& input : {q, q.contiguous(at::MemoryFormat::ChannelsLast)}) {
    for (const std::vector<int64_t>& pad : std::vector<std::vector<int64_t>>{{0, 1, 0, 1}, {2, 0, 1, 3}, {1, 1}}) {
      const at::Tensor ours = ZeroPadInt8(input, pad);
      const at::Tensor expected = at::quantize_per_tensor(at::constant_pad_nd(input.dequantize(), pad, 0.0), 0.05, 130,
                                                          at::kQUInt8);
      EXPECT_EQ(ours.sizes(), expected.sizes());
      EXPECT_TRUE(at::equal(ours.int_repr(), expected.int_repr()));
      EXPECT_EQ(ours.q_zero_point(), 130);
    }
  }
}

}  // namespace
}  // namespace quantd::engine
