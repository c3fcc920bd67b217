#include "worker/engine/runtime/kernel_choice.h"

#include <gtest/gtest.h>

namespace quantd::engine {
namespace {

// An AVX2 server as seen from quantd: onednn's convolutions and linears
// saturate with 8-bit activations.
CpuInt8Report Avx2Cpu() {
  CpuInt8Report cpu;
  cpu.model_name = "AMD EPYC 7R32";
  cpu.features = {"avx2", "fma"};
  cpu.onednn_isa = "avx2";
  cpu.kernel_isa = "avx2";
  cpu.saturating_engines = {{"onednn", {"conv2d", "linear"}}};
  return cpu;
}

CpuInt8Report VnniCpu() {
  CpuInt8Report cpu;
  cpu.model_name = "Intel Xeon";
  cpu.features = {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"};
  cpu.onednn_isa = "avx512_core_vnni";
  cpu.kernel_isa = "avx512";
  return cpu;
}

const std::vector<std::string> kDebianEngines = {"qnnpack", "onednn"};

TEST(KernelChoiceTest, PreferenceOrderFollowsThePreset) {
  EXPECT_EQ(KernelPreference("fbgemm", kDebianEngines), (std::vector<std::string>{"onednn", "qnnpack"}));
  EXPECT_EQ(KernelPreference("qnnpack", kDebianEngines), (std::vector<std::string>{"onednn", "qnnpack"}));
  const std::vector<std::string> pip = {"qnnpack", "onednn", "x86", "fbgemm"};
  EXPECT_EQ(KernelPreference("fbgemm", pip), (std::vector<std::string>{"fbgemm", "x86", "onednn", "qnnpack"}));
  EXPECT_EQ(KernelPreference("x86", pip), (std::vector<std::string>{"x86", "fbgemm", "onednn", "qnnpack"}));
  EXPECT_EQ(KernelPreference("custom", {"qnnpack", "someday"}), (std::vector<std::string>{"qnnpack", "someday"}));
}

TEST(KernelChoiceTest, EightBitActivationsAreExactOnlyWithoutSaturation) {
  const KernelCandidate onednn = AssessKernelEngine("onednn", 255, Avx2Cpu());
  EXPECT_FALSE(onednn.exact);
  EXPECT_NE(onednn.why.find("saturation"), std::string::npos) << onednn.why;
  EXPECT_NE(onednn.why.find("AMD EPYC 7R32"), std::string::npos) << onednn.why;
  EXPECT_TRUE(AssessKernelEngine("onednn", 127, Avx2Cpu()).exact);  // reduce_range
  EXPECT_TRUE(AssessKernelEngine("qnnpack", 255, Avx2Cpu()).exact);
  EXPECT_TRUE(AssessKernelEngine("onednn", 255, VnniCpu()).exact);
}

TEST(KernelChoiceTest, RequirementsSayWhenVnniIsNeeded) {
  EXPECT_TRUE(RequirementsFor("onednn", 255).needs_non_saturating_u8s8);
  EXPECT_FALSE(RequirementsFor("onednn", 127).needs_non_saturating_u8s8);
  EXPECT_FALSE(RequirementsFor("qnnpack", 255).needs_non_saturating_u8s8);
}

TEST(KernelChoiceTest, ArtifactsAreReroutedOrRefusedWhereTheyWouldSaturate) {
  const ArtifactRequirements full_range = RequirementsFor("onednn", 255);
  // Made on a VNNI machine, run there: as made.
  EXPECT_EQ(*RuntimeKernelEngine(full_range, VnniCpu(), kDebianEngines, false), "onednn");
  // Run on an AVX2 server: qnnpack, or a clear refusal.
  EXPECT_EQ(*RuntimeKernelEngine(full_range, Avx2Cpu(), kDebianEngines, true), "qnnpack");
  auto refused = RuntimeKernelEngine(full_range, Avx2Cpu(), kDebianEngines, false);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("saturation"), std::string::npos) << refused.status();
  EXPECT_NE(refused.status().message().find("qnnpack"), std::string::npos) << refused.status();
  // 7-bit activations run as made everywhere.
  EXPECT_EQ(*RuntimeKernelEngine(RequirementsFor("onednn", 127), Avx2Cpu(), kDebianEngines, false), "onednn");
  // No exact engine to go to.
  EXPECT_FALSE(RuntimeKernelEngine(full_range, Avx2Cpu(), {"onednn"}, true).ok());
  // An engine this LibTorch lacks.
  EXPECT_FALSE(RuntimeKernelEngine(RequirementsFor("fbgemm", 127), VnniCpu(), kDebianEngines, false).ok());
  EXPECT_EQ(*RuntimeKernelEngine(RequirementsFor("fbgemm", 127), VnniCpu(), kDebianEngines, true), "qnnpack");
}

TEST(KernelChoiceTest, RequirementsSurviveTheManifest) {
  QuantizeReport report;
  report.kernel_engine = "onednn";
  report.requirements = RequirementsFor("onednn", 255);
  auto parsed = ArtifactRequirementsFromManifest(ManifestJson(report));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->kernel_engine, "onednn");
  EXPECT_EQ(parsed->activation_quant_max, 255);
  EXPECT_TRUE(parsed->needs_non_saturating_u8s8);
  // A manifest from before requirements were recorded: assume the worst.
  auto old = ArtifactRequirementsFromManifest(R"({"format": "quantd.artifact.v1", "kernel_engine": "onednn"})");
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_TRUE(old->needs_non_saturating_u8s8);
  EXPECT_FALSE(ArtifactRequirementsFromManifest("[1, 2]").ok());
  EXPECT_FALSE(ArtifactRequirementsFromManifest(R"({"kernel_engine": ""})").ok());
}

}  // namespace
}  // namespace quantd::engine
