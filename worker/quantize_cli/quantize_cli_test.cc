#include "worker/quantize_cli/quantize_cli.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "worker/engine/testing/test_env.h"

namespace quantd::cli {
namespace {

namespace testing = engine::testing;

std::vector<std::string> BaseArgs(const std::string& out_dir) {
  return {"--model", testing::ResNet8Path(), "--calib", testing::CalibrationPath(), "--samples_per_class", "10",
          "--output", out_dir + "/int8.pt", "--report", out_dir + "/report.json"};
}

bool DirIsEmpty(const std::string& dir) { return std::filesystem::is_empty(dir); }

TEST(ParseQuantizeArgsTest, DefaultsAndErrors) {
  auto cmd = ParseQuantizeArgs({"--model=m.pt", "--calibration", "c.bin", "--output", "o.pt"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->options.qconfig.preset, "fbgemm");
  EXPECT_TRUE(cmd->options.fusion.automatic);
  EXPECT_EQ(cmd->options.batch_size, 100);
  EXPECT_EQ(ParseQuantizeArgs({"--calibration", "c.bin", "--output", "o.pt"}).status().message(), "--model is required");
  EXPECT_NE(ParseQuantizeArgs({"--model", "m.pt", "--calibration", "c.txt", "--output", "o.pt"}).status().message().find("c.txt"),
            std::string::npos);
  EXPECT_NE(ParseQuantizeArgs({"--model", "m.pt", "--calibration", "c.bin", "--output", "o.pt", "--bogus", "1"})
                .status()
                .message()
                .find("--bogus"),
            std::string::npos);
  EXPECT_FALSE(ParseQuantizeArgs({"--model", "m.pt", "--calibration", "c.bin", "--output", "o.pt", "--samples-per-class", "x"}).ok());
  // quantctl's names and underscores; the older dashed names still work.
  cmd = ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--preset=qnnpack", "--kernel_engine=qnnpack",
                           "--strict_kernels", "--quality_samples=50", "--min_top1_agreement=0.9",
                           "--min-output-sqnr-db", "12.5", "--allow_low_quality"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->options.qconfig.preset, "qnnpack");
  EXPECT_EQ(cmd->options.kernel_engine, "qnnpack");
  EXPECT_TRUE(cmd->options.strict_kernels);
  EXPECT_EQ(cmd->options.quality_samples, 50);
  EXPECT_EQ(cmd->options.min_top1_agreement, 0.9);
  EXPECT_EQ(cmd->options.min_output_sqnr_db, 12.5);
  EXPECT_TRUE(cmd->options.allow_low_quality);
  EXPECT_NE(ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--min_top1_agreement=95"})
                .status()
                .message()
                .find("--min_top1_agreement"),
            std::string::npos);
}

// The same syntax as quantctl's: strict booleans, a value flag's missing
// value and a malformed number named, no silent fallbacks.
TEST(ParseQuantizeArgsTest, BooleansValuesAndNumbersAreCheckedNamingTheFlag) {
  const std::vector<std::string> base = {"--model=m.pt", "--calib=c.bin", "--output=o.pt"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return ParseQuantizeArgs(args);
  };
  auto cmd = with({"--preset", "custom", "--reduce_range=false", "--bias_correction=1", "--intra_op_threads", "2"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_FALSE(cmd->options.qconfig.reduce_range);
  EXPECT_TRUE(cmd->options.qconfig.bias_correction);
  EXPECT_EQ(cmd->threads, 2);
  EXPECT_EQ(with({"--threads=3"})->threads, 3);  // the older name

  EXPECT_EQ(with({"--reduce_range=yes please"}).status().message(),
            "--reduce_range expects true or false, got \"yes please\"");
  EXPECT_EQ(with({"--fusion", "--reduce_range"}).status().message(), "--fusion needs a value");
  EXPECT_EQ(with({"--mean=125.3,abc,113.9"}).status().message(), "--mean: \"abc\" is not a number");
  EXPECT_EQ(with({"--std=nan"}).status().message(), "--std: \"nan\" is not a number");
  EXPECT_EQ(with({"--intra_op_threads=0"}).status().message(), "--intra_op_threads must be in 1..1024, not 0");
  EXPECT_EQ(with({"--help"}).status().message(), "help requested");
  // Seeds span the API's uint64, as in quantctl.
  EXPECT_EQ(with({"--seed=18446744073709551615"})->options.calibration.seed, UINT64_MAX);
  EXPECT_EQ(with({"--seed=-1"}).status().message(), "--seed must be an integer in 0..18446744073709551615, not '-1'");
  EXPECT_EQ(with({"--seed=18446744073709551616"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(with({"--help=false"}).ok());
  // Unknown before its value is looked for; the canonical name in errors.
  EXPECT_EQ(with({"--verbose", "--quiet"}).status().message(), "unknown flag --verbose");
  EXPECT_EQ(with({"--threads=-1"}).status().message(), "--intra_op_threads must be a non-negative integer, not '-1'");
  // Values the engine would refuse later (exit 1) are usage errors here, as in quantctl.
  EXPECT_EQ(with({"--scale=nan"}).status().message(), "--scale must be a finite, non-zero number");
  EXPECT_EQ(with({"--scale=0"}).status().message(), "--scale must be a finite, non-zero number");
  EXPECT_EQ(with({"--min_output_sqnr_db=inf"}).status().message(),
            "--min_output_sqnr_db must be a finite number, not 'inf'");
  EXPECT_THAT(std::string(with({"--preset=bogus"}).status().message()), ::testing::StartsWith("--preset: "));
  // Each error names the one flag that is wrong.
  EXPECT_THAT(std::string(with({"--preset=custom", "--weight_observer=bogus"}).status().message()),
              ::testing::StartsWith("--weight_observer: "));
  EXPECT_THAT(std::string(with({"--preset=custom", "--activation_observer=bogus"}).status().message()),
              ::testing::StartsWith("--activation_observer: "));
  EXPECT_EQ(with({"--reduce_range"}).status().message(), "--reduce_range: needs --preset custom");
  // quantctl's and the server's limits.
  EXPECT_EQ(with({"--batch_size=20000"}).status().message(), "--batch_size: a number in 1..10000 expected");
  EXPECT_EQ(with({"--quality_samples=50000"}).status().message(), "--quality_samples: a number in 0..10000 expected");
  // A flag and its older name together, or a file flag given empty, are
  // refused (the last one won; no report was written).
  EXPECT_EQ(with({"--calibration=d.bin"}).status().message(), "--calib and --calibration are the same flag: give one");
  EXPECT_EQ(with({"--report="}).status().message(), "--report is empty (an unset variable?)");
  EXPECT_EQ(with({"--mean=1,,2"}).status().message(), "--mean: a number left out in \"1,,2\"");
  EXPECT_EQ(with({"--preset=custom", "--activation_observer=mse", "--percentile=99"}).status().message(),
            "--percentile: only with --activation_observer=percentile");
  EXPECT_EQ(with({"--preset=custom", "--activation_observer=percentile", "--percentile=150"}).status().message(),
            "--percentile must be a number in (0, 100], not '150'");
  // Checked as quantctl checks them (worker/engine/base/flag_values.h).
  EXPECT_THAT(std::string(with({"--mean="}).status().message()),
              ::testing::StartsWith("--mean: comma-separated numbers expected"));
  EXPECT_THAT(std::string(with({"--std=,,"}).status().message()), ::testing::StartsWith("--std: a number left out"));
  EXPECT_EQ(with({"--kernel_engine", "bogus"}).status().message(),
            "--kernel_engine: unknown kernel engine \"bogus\" (onednn, qnnpack, fbgemm or x86)");
  EXPECT_EQ(with({"--tuning=v.bin", "--max_trials=5000"}).status().message(), "--max_trials: a number in 1..1000 expected");
  EXPECT_EQ(with({"--tuning=v.bin", "--time_budget_seconds=inf"}).status().message(),
            "--time_budget_seconds: a positive number up to 86400 expected");
  // Names in either case, as quantctl takes them.
  cmd = with({"--preset=FBGEMM", "--kernel_engine=OneDNN", "--layout=nhwc"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->options.qconfig.preset, "fbgemm");
  EXPECT_EQ(cmd->options.kernel_engine, "onednn");
  EXPECT_EQ(cmd->options.calibration.layout, "NHWC");
  cmd = with({"--preset=Custom", "--activation_observer=MSE", "--layout=AUTO"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->options.qconfig.activation_observer, "mse");
  EXPECT_EQ(cmd->options.calibration.layout, "auto");
  EXPECT_EQ(with({"--eval_format=npy"}).status().message(), "--eval_format needs --eval");
  EXPECT_EQ(with({"--tuning_format=npy"}).status().message(), "--tuning_format needs --tuning");
  // A boolean given as false is as good as left out (wrappers pass --X=$X).
  EXPECT_TRUE(with({"--reduce_range=false"}).ok());
  EXPECT_TRUE(with({"--int8_only=false", "--against_fp32=false", "--relative_tolerance=false"}).ok());
  EXPECT_EQ(with({"--int8_only"}).status().message(), "--int8_only needs --tuning");
  // What quantd refuses at submit is a usage error here too, before anything runs.
  EXPECT_EQ(with({"--tuning=v.bin", "--int8_only", "--max_fp32_layers=2"}).status().message(),
            "--max_fp32_layers: not with --int8_only (no layer stays FP32)");
  EXPECT_EQ(with({"--tuning=v.npy"}).status().message(),
            "--tuning_labels: required for .npy images to tune on (or --against_fp32, which needs none)");
  EXPECT_TRUE(with({"--tuning=v.npy", "--against_fp32"}).ok());
  // Without a named engine an exact one is chosen: nothing to be strict about.
  EXPECT_EQ(with({"--strict_kernels"}).status().message(),
            "--strict_kernels: only with --kernel_engine (without one an exact engine is chosen)");
  EXPECT_TRUE(with({"--strict_kernels=false"}).ok());
}

// The output and the report are written at the end: naming an input, or
// each other, replaced that file and exited 0.
TEST(ParseQuantizeArgsTest, AnOutputThatNamesAnInputOrTheOtherOutputIsRefused) {
  auto parse = [](std::vector<std::string> args) { return std::string(ParseQuantizeArgs(args).status().message()); };
  EXPECT_EQ(parse({"--model=m.pt", "--calib=c.bin", "--output=m.pt"}),
            "--output: \"m.pt\" is the --model file; writing it would replace that input");
  EXPECT_EQ(parse({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--report=./c.bin"}),
            "--report: \"./c.bin\" is the --calib file; writing it would replace that input");
  EXPECT_EQ(parse({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--tuning=v.bin", "--report=v.bin"}),
            "--report: \"v.bin\" is the --tuning file; writing it would replace that input");
  EXPECT_EQ(parse({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--report=o.pt"}),
            "--report: the same file as --output; give each its own");
  // A hard link is the same file under another name.
  const std::string dir = ::testing::TempDir() + "/quantize_cli_links";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/model.pt") << "x";
  std::filesystem::remove(dir + "/linked.pt");
  std::filesystem::create_hard_link(dir + "/model.pt", dir + "/linked.pt");
  EXPECT_THAT(parse({"--model=" + dir + "/model.pt", "--calib=c.bin", "--output=" + dir + "/linked.pt"}),
              ::testing::HasSubstr("is the --model file"));
  std::filesystem::remove_all(dir);
}

// The same --fusion values as quantctl submit's, and a .json file.
TEST(ParseQuantizeArgsTest, FusionTakesQuantctlsInlineGroupsNoneAutoOrAFile) {
  auto fusion = [](const std::string& value) {
    return ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--fusion=" + value});
  };
  auto inline_groups = fusion("conv1,bn1,relu1;layer1.0.conv1,layer1.0.bn1");
  ASSERT_TRUE(inline_groups.ok()) << inline_groups.status();
  EXPECT_FALSE(inline_groups->options.fusion.automatic);
  ASSERT_EQ(inline_groups->options.fusion.groups.size(), 2u);
  EXPECT_EQ(inline_groups->options.fusion.groups[0], (std::vector<std::string>{"conv1", "bn1", "relu1"}));
  EXPECT_EQ(inline_groups->options.fusion.groups[1], (std::vector<std::string>{"layer1.0.conv1", "layer1.0.bn1"}));
  auto none = fusion("none");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->options.fusion.automatic);
  EXPECT_TRUE(none->options.fusion.groups.empty());
  EXPECT_EQ(fusion("conv1,,bn1").status().message(), "--fusion: an empty module path in group \"conv1,,bn1\"");
  // What fusion would refuse once the model had loaded (exit 1), refused
  // here; auto and none in either case.
  EXPECT_THAT(std::string(fusion("conv1").status().message()), ::testing::HasSubstr("needs two or more modules"));
  EXPECT_THAT(std::string(fusion("conv1,bn1;conv1,bn2").status().message()), ::testing::HasSubstr("in two groups"));
  auto automatic = fusion("AUTO");
  ASSERT_TRUE(automatic.ok()) << automatic.status();
  EXPECT_TRUE(automatic->options.fusion.automatic);
  EXPECT_EQ(fusion("missing.json").status().code(), absl::StatusCode::kNotFound);
}

TEST(ParseQuantizeArgsTest, ADatasetsFormatIsNamedOrToldByItsExtension) {
  auto cmd = ParseQuantizeArgs({"--model=m.pt", "--calib=calib.dat", "--calib_format=cifar10", "--output=o.pt"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->options.calibration.format, engine::DatasetFormat::kCifar10Binary);
  EXPECT_THAT(std::string(ParseQuantizeArgs({"--model=m.pt", "--calib=calib.dat", "--output=o.pt"}).status().message()),
              ::testing::HasSubstr("--calib_format=cifar10|npy"));
  EXPECT_EQ(ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--eval=e.bin", "--eval_format=png"})
                .status()
                .message(),
            "--eval_format must be cifar10 or npy, not 'png'");
}

// CIFAR-10 records carry their labels: a labels file beside them was
// ignored, even one that does not exist (quantctl refuses it alike).
TEST(ParseQuantizeArgsTest, LabelsGoOnlyWithNpyImages) {
  const std::vector<std::string> base = {"--model=m.pt", "--output=o.pt"};
  auto parse = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), base.begin(), base.end());
    return ParseQuantizeArgs(extra);
  };
  EXPECT_EQ(parse({"--calib=c.bin", "--calib_labels=l.npy"}).status().message(),
            "--calib_labels: CIFAR-10 records carry their labels; a labels file goes with .npy images");
  EXPECT_THAT(std::string(parse({"--calib=c.npy", "--eval=e.bin", "--eval_labels=l.npy"}).status().message()),
              ::testing::StartsWith("--eval_labels: CIFAR-10 records"));
  EXPECT_THAT(std::string(parse({"--calib=c.bin", "--tuning=t.dat", "--tuning_format=cifar10",
                                 "--tuning_labels=l.npy"})
                              .status()
                              .message()),
              ::testing::StartsWith("--tuning_labels: CIFAR-10 records"));
  auto npy = parse({"--calib=c.npy", "--calib_labels=l.npy", "--eval=e.dat", "--eval_format=npy",
                    "--eval_labels=el.npy"});
  ASSERT_TRUE(npy.ok()) << npy.status();
  EXPECT_EQ(npy->options.calibration.labels_path, "l.npy");
  EXPECT_EQ(npy->options.evaluation->labels_path, "el.npy");
  EXPECT_EQ(npy->options.evaluation->limit, 0);  // all
  // quantctl's flag: the first N images.
  auto first = parse({"--calib=c.bin", "--eval=e.bin", "--eval_max_samples=500"});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->options.evaluation->limit, 500);
  EXPECT_EQ(parse({"--calib=c.bin", "--eval_max_samples=500"}).status().message(), "--eval_max_samples needs --eval");
  EXPECT_THAT(std::string(parse({"--calib=c.bin", "--eval=e.bin", "--eval_max_samples=-1"}).status().message()),
              ::testing::StartsWith("--eval_max_samples must be a non-negative integer"));
}

TEST(ParseQuantizeArgsTest, BiasCorrectionWithAnyPreset) {
  auto cmd =
      ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--preset=onednn", "--bias_correction"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->options.qconfig.preset, "onednn");
  EXPECT_TRUE(cmd->options.qconfig.bias_correction);
  cmd = ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--preset=custom",
                           "--activation_observer=percentile", "--bias-correction"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_TRUE(cmd->options.qconfig.bias_correction);
  cmd = ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_FALSE(cmd->options.qconfig.bias_correction);  // the presets stay PyTorch's
  EXPECT_FALSE(cmd->options.qconfig.fitted_rounding);
  EXPECT_FALSE(cmd->options.qconfig.equalization);
}

TEST(ParseQuantizeArgsTest, FittedRoundingAndEqualizationWithAnyPreset) {
  auto cmd = ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--preset=qnnpack",
                                "--fitted_rounding", "--cross-layer-equalization"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_TRUE(cmd->options.qconfig.fitted_rounding);
  EXPECT_TRUE(cmd->options.qconfig.equalization);
  EXPECT_FALSE(cmd->options.qconfig.bias_correction);
  cmd = ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--cross_layer_equalization=false"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_FALSE(cmd->options.qconfig.equalization);
}

TEST(ParseQuantizeArgsTest, AccuracyGoalFlags) {
  auto cmd = ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--tuning=v.bin", "--tolerance=0.25",
                                "--relative_tolerance", "--max_trials=7", "--time_budget_seconds=30", "--int8_only",
                                "--against_fp32"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  ASSERT_TRUE(cmd->options.accuracy_goal.has_value());
  const engine::AccuracyGoal& goal = *cmd->options.accuracy_goal;
  EXPECT_EQ(goal.tuning.path, "v.bin");
  EXPECT_DOUBLE_EQ(goal.max_top1_drop, 0.0025);  // points to a fraction
  EXPECT_TRUE(goal.relative);
  EXPECT_EQ(goal.max_trials, 7);
  EXPECT_EQ(goal.time_budget_seconds, 30);
  EXPECT_FALSE(goal.allow_fp32_layers);
  EXPECT_TRUE(goal.against_fp32);
  cmd = ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--tuning=v.bin"});
  ASSERT_TRUE(cmd.ok());
  EXPECT_DOUBLE_EQ(cmd->options.accuracy_goal->max_top1_drop, 0.001);  // 0.1 points by default
  EXPECT_TRUE(cmd->options.accuracy_goal->allow_fp32_layers);
  EXPECT_EQ(cmd->options.accuracy_goal->max_fp32_layers, 0);  // no cap
  cmd = ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--tuning=v.bin", "--max_fp32_layers=2"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->options.accuracy_goal->max_fp32_layers, 2);
  // 0 is no cap, as in the API and quantctl (it was refused here only).
  cmd = ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--tuning=v.bin", "--max_fp32_layers=0"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->options.accuracy_goal->max_fp32_layers, 0);
  EXPECT_EQ(
      ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--max_fp32_layers=2"}).status().message(),
      "--max_fp32_layers needs --tuning");
  // Labels a .npy set needs, named as flags before anything runs (they were
  // runtime errors, exit 1, naming no flag).
  EXPECT_EQ(ParseQuantizeArgs({"--model=m.pt", "--calib=c.npy", "--output=o.pt", "--samples_per_class=3"})
                .status()
                .message(),
            "--calib_labels: required for .npy images with --samples_per_class (per class)");
  EXPECT_EQ(
      ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--eval=e.npy"}).status().message(),
      "--eval_labels: required for .npy images to evaluate");
  EXPECT_TRUE(ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--eval=e.npy",
                                 "--eval_labels=l.npy"})
                  .ok());
  EXPECT_EQ(ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--tolerance=0.2"}).status().message(),
            "--tolerance needs --tuning");
  EXPECT_NE(ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--tuning=v.bin", "--tolerance=x"})
                .status()
                .message()
                .find("--tolerance"),
            std::string::npos);
  EXPECT_NE(ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--tuning=v.txt"})
                .status()
                .message()
                .find("--tuning"),
            std::string::npos);
  // Conflicts the request alone shows are usage errors, before calibration.
  EXPECT_EQ(ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--tuning=v.bin", "--preset=custom",
                               "--activation_observer=moving_average_minmax"})
                .status()
                .message(),
            "--activation_observer: --tuning tries range estimators on the calibration's histograms, which "
            "moving_average_minmax does not keep (use a preset, or histogram, mse, percentile or entropy)");
  EXPECT_TRUE(ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--tuning=v.bin",
                                 "--preset=custom", "--activation_observer=mse"})
                  .ok());
  EXPECT_EQ(ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--preset=custom",
                               "--weight_observer=per_tensor_affine", "--kernel_engine=onednn"})
                .status()
                .message(),
            "--weight_observer: per_tensor_affine gives weight zero points, which --kernel_engine=onednn rejects (use "
            "a symmetric weight observer, or --kernel_engine=qnnpack)");
  EXPECT_TRUE(ParseQuantizeArgs({"--model=m.pt", "--calib=c.bin", "--output=o.pt", "--preset=custom",
                                 "--weight_observer=per_tensor_affine", "--kernel_engine=qnnpack"})
                  .ok());
}

TEST(ParseFusionSpecTest, ReadsGroupsFromJson) {
  const std::string dir = testing::MakeTempDir("fusion_spec");
  std::ofstream(dir + "/spec.json") << R"([["conv1","bn1","relu1"],["layer1.conv2","layer1.bn2"]])";
  auto spec = ParseFusionSpec(dir + "/spec.json");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->groups.size(), 2u);
  std::ofstream(dir + "/bad.json") << R"([["conv1", 3]])";
  EXPECT_FALSE(ParseFusionSpec(dir + "/bad.json").ok());
  std::ofstream(dir + "/broken.json") << "[[";
  EXPECT_NE(ParseFusionSpec(dir + "/broken.json").status().message().find("not valid JSON"), std::string::npos);
  EXPECT_EQ(ParseFusionSpec(dir + "/missing.json").status().code(), absl::StatusCode::kNotFound);
  // The groups a spec file holds are checked as groups inline are.
  std::ofstream(dir + "/single.json") << R"([["conv1","bn1"],["relu1"]])";
  EXPECT_EQ(ParseFusionSpec(dir + "/single.json").status().message(),
            "--fusion: group \"relu1\" needs two or more modules (auto, none, or a,b;c,d)");
  std::ofstream(dir + "/twice.json") << R"([["conv1","bn1"],["bn1","relu1"]])";
  EXPECT_EQ(ParseFusionSpec(dir + "/twice.json").status().message(), "--fusion: module \"bn1\" is in two groups");
}

TEST(RunQuantizeTest, WritesArtifactAndReport) {
  const std::string dir = testing::MakeTempDir("cli_ok");
  auto cmd = ParseQuantizeArgs(BaseArgs(dir));
  ASSERT_TRUE(cmd.ok());
  std::ostringstream out;
  ASSERT_TRUE(RunQuantize(*cmd, out).ok());
  EXPECT_TRUE(std::filesystem::exists(dir + "/int8.pt"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/report.json"));
  EXPECT_NE(out.str().find("kernel engine: onednn"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("fused groups: [conv1, bn1, relu1]"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("cpu: "), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("quality: passed on 100 calibration images"), std::string::npos) << out.str();
  // Only the two outputs: no temporary files left behind.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir), std::filesystem::directory_iterator()), 2);
}

// What the engine finds wrong with the options is said in this tool's flags,
// not in the API's field names (preprocessing.std).
TEST(RunQuantizeTest, OptionsTheEngineRefusesAreNamedByTheirFlags) {
  for (const auto& [extra, says] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--std=0,1,1"}, "--std has a zero"},
           {{"--mean=1,2"}, "--mean has 2 values, the images have 3 channels"},
           {{"--samples_per_class=5000"}, "--samples_per_class=5000 but class 0 has only 100 samples"}}) {
    const std::string dir = testing::MakeTempDir("cli_flag_terms");
    std::vector<std::string> args = BaseArgs(dir);
    args.insert(args.end(), extra.begin(), extra.end());
    auto cmd = ParseQuantizeArgs(args);
    ASSERT_TRUE(cmd.ok()) << cmd.status();
    std::ostringstream out;
    const absl::Status status = RunQuantize(*cmd, out);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << extra[0] << ": " << status;
    EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr(says)) << status;
    EXPECT_THAT(std::string(status.message()), ::testing::Not(::testing::HasSubstr("preprocessing."))) << status;
    EXPECT_TRUE(DirIsEmpty(dir)) << extra[0];
  }
}

// Each bad input fails with a message naming the problem and leaves nothing behind.
TEST(RunQuantizeTest, BadInputsLeaveNoPartialArtifact) {
  const std::string inputs = testing::MakeTempDir("cli_bad_inputs");
  std::ofstream(inputs + "/corrupt.pt") << "garbage";
  {
    std::ifstream in(testing::CalibrationPath(), std::ios::binary);
    std::vector<char> bytes(3073 * 3 - 7);
    in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    std::ofstream(inputs + "/truncated.bin", std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  std::ofstream(inputs + "/empty.bin").close();
  std::ofstream(inputs + "/spec.json") << R"([["conv1","bn1","relu1"],["layer1.convX","layer1.bn1"]])";
  struct Case {
    std::string flag, value, expected;
  };
  const std::vector<Case> cases = {
      {"--model", inputs + "/corrupt.pt", "corrupt.pt"},
      {"--calib", inputs + "/truncated.bin", "truncated"},
      {"--calib", inputs + "/empty.bin", "empty"},
      {"--fusion", inputs + "/spec.json", "layer1.convX"},
  };
  for (const Case& c : cases) {
    const std::string dir = testing::MakeTempDir("cli_bad_out");
    std::vector<std::string> args = BaseArgs(dir);
    for (size_t i = 0; i + 1 < args.size(); ++i) {
      if (args[i] == c.flag) args[i + 1] = c.value;
    }
    if (c.flag == "--fusion") args.insert(args.end(), {c.flag, c.value});
    args.erase(std::remove(args.begin(), args.end(), "--samples_per_class"), args.end());
    args.erase(std::remove(args.begin(), args.end(), "10"), args.end());
    auto cmd = ParseQuantizeArgs(args);
    ASSERT_TRUE(cmd.ok()) << cmd.status();
    std::ostringstream out;
    absl::Status s = RunQuantize(*cmd, out);
    EXPECT_FALSE(s.ok()) << c.value;
    EXPECT_NE(s.message().find(c.expected), std::string::npos) << s;
    EXPECT_TRUE(DirIsEmpty(dir)) << c.value;
  }
}

}  // namespace
}  // namespace quantd::cli
