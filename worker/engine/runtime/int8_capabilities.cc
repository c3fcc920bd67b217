#include "worker/engine/runtime/int8_capabilities.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <cpuid.h>
#include <dlfcn.h>

#include <cmath>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "worker/engine/base/cpu_features.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"
#include "worker/engine/runtime/prepack.h"

namespace quantd::engine {
namespace {

std::string CpuModelName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    }
  }
  return "";
}

std::vector<std::string> Int8Features() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  const bool leaf7 = __get_cpuid_count(7, 0, &a, &b, &c, &d) != 0;
  const unsigned leaf7_ecx = leaf7 ? c : 0, leaf7_edx = leaf7 ? d : 0;
  const bool leaf7_1 = leaf7 && __get_cpuid_count(7, 1, &a, &b, &c, &d) != 0;
  const unsigned leaf7_1_eax = leaf7_1 ? a : 0;
  // __builtin_cpu_supports also checks that the OS saves the vector state.
  const bool avx2 = __builtin_cpu_supports("avx2");
  const bool avx512 = __builtin_cpu_supports("avx512f");
  std::vector<std::string> features;
  if (avx2) features.push_back("avx2");
  if (__builtin_cpu_supports("fma")) features.push_back("fma");
  if (avx512) features.push_back("avx512f");
  if (avx512 && __builtin_cpu_supports("avx512bw")) features.push_back("avx512bw");
  if (avx512 && (leaf7_ecx & (1u << 11)) != 0) features.push_back("avx512_vnni");
  if (avx2 && (leaf7_1_eax & (1u << 4)) != 0) features.push_back("avx_vnni");
  if ((leaf7_edx & (1u << 25)) != 0) features.push_back("amx_int8");
  return features;
}

// A quantized tensor with every code equal to `code`.
at::Tensor Filled(at::IntArrayRef sizes, int code, bool weight) {
  if (weight) {
    const int64_t channels = sizes[0];
    return at::_make_per_channel_quantized_tensor(at::full(sizes, code, at::kChar),
                                                  at::ones({channels}, at::kDouble),
                                                  at::zeros({channels}, at::kLong), 0);
  }
  return at::_make_per_tensor_quantized_tensor(at::full(sizes, code, at::kByte), 1.0, 0);
}

c10::List<int64_t> Pair(int64_t v) { return c10::List<int64_t>({v, v}); }

// Every checked code within 1 of the exact result (requantization rounds).
bool AllNear(const at::Tensor& codes, double expected) {
  return (codes.to(at::kDouble) - std::round(expected)).abs().max().item<double>() <= 1.0;
}

absl::StatusOr<bool> ConvIsExact(const std::string& engine, int64_t channels, int64_t groups) {
  constexpr int kActivation = 255, kWeight = 127;
  const at::Tensor input = Filled({1, channels, 8, 8}, kActivation, false).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor weight = Filled({channels, channels / groups, 3, 3}, kWeight, true);
  QUANTD_ASSIGN_OR_RETURN(c10::IValue packed,
                          PrepackConv2d(engine, {weight, c10::IValue(), Pair(1), Pair(1), Pair(1), groups}));
  const double exact = static_cast<double>(channels / groups) * 9 * kActivation * kWeight;
  const double scale = exact / 180;  // the exact result lands on code 180
  at::Tensor out;
  QUANTD_RETURN_IF_ERROR(WithKernelEngine(engine, "probing conv2d", [&]() {
    torch::jit::Stack stack = {input, packed, scale, int64_t{0}};
    c10::Dispatcher::singleton().findSchemaOrThrow("quantized::conv2d", "new").callBoxed(stack);
    out = stack.at(0).toTensor();
  }));
  // Interior pixels: the whole 3x3 window lies inside the image.
  return AllNear(out.int_repr().slice(2, 1, 7).slice(3, 1, 7), 180);
}

absl::StatusOr<bool> LinearIsExact(const std::string& engine) {
  constexpr int kActivation = 255, kWeight = 127;
  constexpr int64_t kFeatures = 256;
  const at::Tensor input = Filled({4, kFeatures}, kActivation, false);
  const at::Tensor weight = Filled({8, kFeatures}, kWeight, true);
  QUANTD_ASSIGN_OR_RETURN(c10::IValue packed, PrepackLinear(engine, {weight, c10::IValue()}));
  const double exact = static_cast<double>(kFeatures) * kActivation * kWeight;
  const double scale = exact / 180;
  at::Tensor out;
  QUANTD_RETURN_IF_ERROR(WithKernelEngine(engine, "probing linear", [&]() {
    torch::jit::Stack stack = {input, packed, scale, int64_t{0}};
    c10::Dispatcher::singleton().findSchemaOrThrow("quantized::linear", "").callBoxed(stack);
    out = stack.at(0).toTensor();
  }));
  return AllNear(out.int_repr(), 180);
}

using IsaQuery = int (*)();

}  // namespace

std::string OneDnnEffectiveIsa() {
  // Looked up at run time: LibTorch links oneDNN itself (shared on Debian),
  // and quantd needs no oneDNN of its own for this.
  auto query = reinterpret_cast<IsaQuery>(dlsym(RTLD_DEFAULT, "dnnl_get_effective_cpu_isa"));
  if (query == nullptr) return "";
  switch (query()) {  // dnnl_cpu_isa_t (oneDNN 2.x)
    case 0x1: return "sse41";
    case 0x3: return "avx";
    case 0x7: return "avx2";
    case 0x407: return "avx2_vnni";
    case 0xf: return "avx512_mic";
    case 0x1f: return "avx512_mic_4ops";
    case 0x27: return "avx512_core";
    case 0x67: return "avx512_core_vnni";
    case 0xe7: return "avx512_core_bf16";
    case 0x3e7: return "avx512_core_amx";
    default: return absl::StrCat("isa 0x", absl::Hex(query()));
  }
}

absl::StatusOr<std::vector<std::string>> ProbeSaturatingOps(const std::string& kernel_engine) {
  at::NoGradGuard no_grad;
  std::vector<std::string> saturating;
  struct Case {
    const char* op;
    std::function<absl::StatusOr<bool>()> exact;
  };
  const std::vector<Case> cases = {
      {"conv2d", [&]() { return ConvIsExact(kernel_engine, 64, 1); }},
      {"depthwise_conv2d", [&]() { return ConvIsExact(kernel_engine, 16, 16); }},
      {"linear", [&]() { return LinearIsExact(kernel_engine); }},
  };
  for (const Case& c : cases) {
    absl::StatusOr<bool> exact = absl::InternalError("not run");
    QUANTD_RETURN_IF_ERROR(TorchTry(absl::StrCat("probing ", kernel_engine, " ", c.op), [&]() {
      exact = c.exact();
      return exact.status();
    }));
    if (!*exact) saturating.push_back(c.op);
  }
  return saturating;
}

const CpuInt8Report& CpuInt8Capabilities() {
  static const CpuInt8Report report = [] {
    CpuInt8Report r;
    r.model_name = CpuModelName();
    r.features = Int8Features();
    r.onednn_isa = OneDnnEffectiveIsa();
    r.kernel_isa = KernelIsaName(MaxKernelIsa());
    for (const std::string& engine : AvailableKernelEngineNames()) {
      absl::StatusOr<std::vector<std::string>> ops = ProbeSaturatingOps(engine);
      // An engine that cannot even run the probe is treated as saturating:
      // quantd then prefers another one.
      if (!ops.ok()) {
        r.saturating_engines.push_back({engine, {absl::StrCat("probe failed: ", ops.status().message())}});
      } else if (!ops->empty()) {
        r.saturating_engines.push_back({engine, *ops});
      }
    }
    return r;
  }();
  return report;
}

}  // namespace quantd::engine
