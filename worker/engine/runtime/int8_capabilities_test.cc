#include "worker/engine/runtime/int8_capabilities.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <set>
#include <string>

#include "worker/engine/runtime/prepack.h"

namespace quantd::engine {
namespace {

bool Available(const std::string& engine) {
  const std::vector<std::string> engines = AvailableKernelEngineNames();
  return std::find(engines.begin(), engines.end(), engine) != engines.end();
}

// QNNPACK widens to 16 bits before it multiplies: exact on every CPU.
TEST(Int8CapabilitiesTest, QnnpackNeverSaturates) {
  if (!Available("qnnpack")) GTEST_SKIP() << "no qnnpack in this LibTorch";
  auto ops = ProbeSaturatingOps("qnnpack");
  ASSERT_TRUE(ops.ok()) << ops.status();
  EXPECT_TRUE(ops->empty());
}

// What the probe measures agrees with what oneDNN says it runs on: int8 dot
// products with VNNI (or AMX) are exact, without it the u8 x s8 pair sums of
// convolutions saturate. Under DNNL_MAX_CPU_ISA=AVX2 this checks the AVX2 side.
TEST(Int8CapabilitiesTest, OneDnnSaturatesExactlyWithoutVnni) {
  if (!Available("onednn")) GTEST_SKIP() << "no onednn in this LibTorch";
  const std::string isa = OneDnnEffectiveIsa();
  if (isa.empty()) GTEST_SKIP() << "oneDNN's ISA query is not reachable in this build";
  static const std::set<std::string> kVnni = {"avx512_core_vnni", "avx512_core_bf16", "avx512_core_amx", "avx2_vnni"};
  static const std::set<std::string> kNoVnni = {"avx2", "avx512_core"};
  if (kVnni.count(isa) == 0 && kNoVnni.count(isa) == 0) GTEST_SKIP() << "no expectation for oneDNN isa " << isa;
  auto ops = ProbeSaturatingOps("onednn");
  ASSERT_TRUE(ops.ok()) << ops.status();
  const bool conv_saturates = std::find(ops->begin(), ops->end(), "conv2d") != ops->end();
  EXPECT_EQ(conv_saturates, kNoVnni.count(isa) == 1) << "oneDNN isa " << isa;
  std::cout << "oneDNN isa " << isa << ": saturating ops:";
  for (const std::string& op : *ops) std::cout << " " << op;
  std::cout << std::endl;
}

TEST(Int8CapabilitiesTest, ReportNamesTheCpuAndMatchesTheProbe) {
  const CpuInt8Report& cpu = CpuInt8Capabilities();
  // The CPU as /proc/cpuinfo names it, read here on its own.
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line, model_name, flags;
  while (std::getline(cpuinfo, line) && (model_name.empty() || flags.empty())) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos || colon + 2 > line.size()) continue;
    if (model_name.empty() && line.rfind("model name", 0) == 0) model_name = line.substr(colon + 2);
    if (flags.empty() && line.rfind("flags", 0) == 0) flags = " " + line.substr(colon + 2) + " ";
  }
  while (!model_name.empty() && std::isspace(static_cast<unsigned char>(model_name.back()))) model_name.pop_back();
  ASSERT_FALSE(model_name.empty()) << "no model name in /proc/cpuinfo";
  EXPECT_EQ(cpu.model_name, model_name);
  const bool avx2 = flags.find(" avx2 ") != std::string::npos;
  EXPECT_EQ(std::find(cpu.features.begin(), cpu.features.end(), "avx2") != cpu.features.end(), avx2);
  EXPECT_NE(cpu.Summary().find(model_name), std::string::npos) << cpu.Summary();
  EXPECT_NE(cpu.Summary().find("quantd kernels " + cpu.kernel_isa), std::string::npos) << cpu.Summary();
  if (!cpu.onednn_isa.empty()) {
    EXPECT_NE(cpu.Summary().find("oneDNN isa " + cpu.onednn_isa), std::string::npos) << cpu.Summary();
  }
  for (const std::string& engine : AvailableKernelEngineNames()) {
    auto ops = ProbeSaturatingOps(engine);
    ASSERT_TRUE(ops.ok()) << ops.status();
    EXPECT_EQ(cpu.Saturates(engine), !ops->empty()) << engine;
  }
  std::cout << cpu.Summary() << std::endl;
}

}  // namespace
}  // namespace quantd::engine
