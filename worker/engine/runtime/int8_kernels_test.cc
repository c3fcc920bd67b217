#include "worker/engine/runtime/int8_kernels.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>

#include "worker/engine/base/cpu_features.h"

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

TEST(QuantizeToChannelsLastTest, ExtraChannelsHoldTheZeroPoint) {
  at::manual_seed(6);
  const at::Tensor pixels = at::floor(at::rand({2, 3, 4, 8}) * 256);  // 32 pixels: the vector path
  const at::Tensor odd = at::floor(at::rand({2, 3, 3, 3}) * 256);     // 9 pixels: the plain path
  for (const at::Tensor& x : {pixels, odd}) {
    const at::Tensor ours = QuantizeToChannelsLast(x, 2.0078, 7, 4);
    ASSERT_EQ(ours.size(1), 4);
    EXPECT_TRUE(ours.is_contiguous(at::MemoryFormat::ChannelsLast));
    const at::Tensor expected = at::quantize_per_tensor(x, 2.0078, 7, at::kQUInt8);
    EXPECT_TRUE(at::equal(ours.int_repr().slice(1, 0, 3), expected.int_repr()));
    EXPECT_TRUE(at::equal(ours.int_repr().select(1, 3), at::full_like(ours.int_repr().select(1, 3), 7)));
  }
}

TEST(ZeroPadInt8Test, SameAsPaddingTheFloatTensor) {
  at::manual_seed(4);
  const at::Tensor q = at::quantize_per_tensor(at::randn({2, 4, 5, 6}), 0.05, 130, at::kQUInt8);
  const at::Tensor pixel = at::quantize_per_tensor(at::randn({3, 4, 1, 1}), 0.05, 130, at::kQUInt8);  // both layouts
  // 3-D (a sequence after a linear layer): the 4-D fast path once read size(3).
  const at::Tensor sequence = at::quantize_per_tensor(at::randn({2, 5, 6}), 0.05, 130, at::kQUInt8);
  for (const at::Tensor& input : {q, q.contiguous(at::MemoryFormat::ChannelsLast), pixel, sequence}) {
    for (const std::vector<int64_t>& pad : std::vector<std::vector<int64_t>>{{0, 1, 0, 1}, {2, 0, 1, 3}, {1, 1}}) {
      const at::Tensor ours = ZeroPadInt8(input, pad);
      const at::Tensor expected = at::quantize_per_tensor(at::constant_pad_nd(input.dequantize(), pad, 0.0), 0.05, 130,
                                                          at::kQUInt8);
      ASSERT_EQ(ours.sizes(), expected.sizes());
      EXPECT_EQ(ours.sizes(), expected.sizes());
      EXPECT_TRUE(at::equal(ours.int_repr(), expected.int_repr()));
      EXPECT_EQ(ours.q_zero_point(), 130);
    }
  }
}

// quantized::add(_relu) through the dispatcher, as the operator runs it.
at::Tensor TorchAdd(const at::Tensor& a, const at::Tensor& b, double scale, int64_t zero_point, bool relu) {
  static const auto add = c10::Dispatcher::singleton().findSchemaOrThrow("quantized::add", "");
  static const auto add_relu = c10::Dispatcher::singleton().findSchemaOrThrow("quantized::add_relu", "");
  torch::jit::Stack stack{a, b, scale, zero_point};
  (relu ? add_relu : add).callBoxed(stack);
  return stack[0].toTensor();
}

void ExpectAddMatchesTorch() {
  // The operator's arithmetic follows the global engine; quantd's add is the
  // one outside QNNPACK (another test may have left QNNPACK set).
  at::globalContext().setQEngine(at::QEngine::ONEDNN);
  at::manual_seed(5);
  // One thread and a small tensor; two threads and a tensor LibTorch splits.
  for (auto [threads, shape] : std::vector<std::pair<int, std::vector<int64_t>>>{{1, {4, 16, 8, 8}},
                                                                                 {2, {8, 16, 32, 32}}}) {
    at::set_num_threads(threads);
    const at::Tensor x = at::randn(shape) * 4, y = at::randn(shape) * 2 + 1;
    for (auto format : {at::MemoryFormat::Contiguous, at::MemoryFormat::ChannelsLast}) {
      const at::Tensor a = at::quantize_per_tensor(x, 0.0371, 131, at::kQUInt8).contiguous(format);
      const at::Tensor b = at::quantize_per_tensor(y, 0.0229, 64, at::kQUInt8).contiguous(format);
      for (auto [scale, zero_point] : std::vector<std::pair<double, int64_t>>{{0.05, 120}, {0.0123, 3}, {0.5, 250}}) {
        for (bool relu : {false, true}) {
          const at::Tensor ours = AddInt8(a, b, scale, zero_point, relu);
          const at::Tensor theirs = TorchAdd(a, b, scale, zero_point, relu);
          ASSERT_TRUE(ours.defined());
          EXPECT_EQ(ours.strides(), theirs.strides());
          EXPECT_EQ(ours.q_scale(), theirs.q_scale());
          EXPECT_EQ(ours.q_zero_point(), theirs.q_zero_point());
          EXPECT_TRUE(at::equal(ours.int_repr(), theirs.int_repr()))
              << threads << " threads, scale " << scale << " relu " << relu;
        }
      }
    }
  }
  at::set_num_threads(1);
}

TEST(AddInt8Test, SameCodesAsLibTorch) { ExpectAddMatchesTorch(); }

// Every vector level this CPU has (AVX-512, AVX2, portable loops) gives the
// same codes: an AVX-512 machine checks what AVX2-only CPUs run.
class Int8KernelsIsaTest : public ::testing::TestWithParam<KernelIsa> {};

TEST_P(Int8KernelsIsaTest, SameCodesAsLibTorch) {
  if (static_cast<int>(GetParam()) > static_cast<int>(MaxKernelIsa())) {
    GTEST_SKIP() << "this CPU lacks " << KernelIsaName(GetParam()) << ", or QUANTD_MAX_CPU_ISA / DNNL_MAX_CPU_ISA caps it";
  }
  SetMaxKernelIsaForTesting(GetParam());
  ExpectAddMatchesTorch();
  const at::Tensor pixels = at::floor(at::rand({2, 3, 4, 8}) * 256);
  for (int64_t channels : {0, 4}) {
    const at::Tensor ours = QuantizeToChannelsLast(pixels, 2.0078, 7, channels);
    const at::Tensor expected = at::quantize_per_tensor(pixels, 2.0078, 7, at::kQUInt8);
    EXPECT_TRUE(at::equal(ours.int_repr().slice(1, 0, 3), expected.int_repr())) << channels;
  }
  for (int64_t n : {3, 40}) {  // 40 * 8 * 5 * 5: whole vectors and a tail
    const at::Tensor q = at::quantize_per_tensor(at::randn({n, 8, 5, 5}) * 3, 0.04, 100, at::kQUInt8);
    EXPECT_TRUE(at::equal(ReluInt8(q).int_repr(), at::relu(q).int_repr()));
  }
  SetMaxKernelIsaForTesting(std::nullopt);
}

INSTANTIATE_TEST_SUITE_P(Levels, Int8KernelsIsaTest,
                         ::testing::Values(KernelIsa::kPortable, KernelIsa::kAvx2, KernelIsa::kAvx512),
                         [](const auto& info) { return std::string(KernelIsaName(info.param)); });

TEST(AddInt8Test, OtherCasesAreLeftToTheOperator) {
  const at::Tensor a = at::quantize_per_tensor(at::randn({2, 4, 3, 3}), 0.1, 128, at::kQUInt8);
  const at::Tensor signed_b = at::quantize_per_tensor(at::randn({2, 4, 3, 3}), 0.1, 0, at::kQInt8);
  EXPECT_FALSE(AddInt8(a, signed_b, 0.1, 128, false).defined());
  EXPECT_FALSE(AddInt8(a, a.contiguous(at::MemoryFormat::ChannelsLast), 0.1, 128, false).defined());
  EXPECT_FALSE(AddInt8(a, a.slice(0, 0, 1), 0.1, 128, false).defined());
  // 72 elements: LibTorch computes the last 8 with its scalar formula.
  EXPECT_FALSE(AddInt8(a, a, 0.1, 128, false).defined());
}

// LibTorch's quantized clamp as onednn computes it (QNNPACK's garbles
// channels-last tensors, which is why quantd has its own).
TEST(ClampInt8Test, SameCodesAsLibTorchsQuantizedClamp) {
  at::manual_seed(5);
  const at::Tensor q = at::quantize_per_tensor(at::randn({3, 8, 5, 5}) * 4, 0.05, 100, at::kQUInt8);
  const at::Tensor s = at::quantize_per_tensor(at::randn({3, 8, 5, 5}) * 4, 0.05, 3, at::kQInt8);
  auto& ctx = at::globalContext();
  const at::QEngine previous = ctx.qEngine();
  for (at::QEngine e : ctx.supportedQEngines()) {
    if (e == at::QEngine::ONEDNN) ctx.setQEngine(e);
  }
  for (const at::Tensor& input : {q, q.contiguous(at::MemoryFormat::ChannelsLast), s}) {
    for (const auto& [lo, hi] : std::vector<std::pair<double, double>>{{0.0, 6.0}, {-1.0, 4.0}, {-0.02, 0.0301}}) {
      const at::Tensor ours = ClampInt8(input, lo, hi);
      const at::Tensor theirs = at::clamp(input, lo, hi);
      ASSERT_TRUE(ours.defined());
      EXPECT_EQ(ours.strides(), input.strides());
      EXPECT_EQ(ours.q_scale(), input.q_scale());
      EXPECT_TRUE(at::equal(ours.int_repr(), theirs.int_repr())) << lo << ".." << hi;
    }
    EXPECT_TRUE(at::equal(ClampInt8(input, std::nullopt, 1.0).int_repr(), at::clamp(input, c10::nullopt, 1.0).int_repr()));
    EXPECT_TRUE(at::equal(ClampInt8(input, -1.0, std::nullopt).int_repr(), at::clamp(input, -1.0, c10::nullopt).int_repr()));
  }
  ctx.setQEngine(previous);
}

TEST(ReluInt8Test, SameAsQuantizedRelu) {
  const at::Tensor q = at::quantize_per_tensor(at::randn({3, 8, 5, 5}) * 3, 0.04, 100, at::kQUInt8);
  for (const at::Tensor& input : {q, q.contiguous(at::MemoryFormat::ChannelsLast)}) {
    const at::Tensor ours = ReluInt8(input);
    const at::Tensor theirs = at::relu(input);
    ASSERT_TRUE(ours.defined());
    EXPECT_EQ(ours.strides(), theirs.strides());
    EXPECT_EQ(ours.q_zero_point(), 100);
    EXPECT_TRUE(at::equal(ours.int_repr(), theirs.int_repr()));
  }
}

}  // namespace
}  // namespace quantd::engine
