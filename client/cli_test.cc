#include "client/cli.h"

#include <fstream>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <google/protobuf/util/time_util.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/commands.h"
#include "client/job_format.h"

namespace quantd::cli {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

TEST(ParseInvocationTest, Defaults) {
  auto invocation = ParseInvocation({"health"});
  ASSERT_TRUE(invocation.ok()) << invocation.status();
  EXPECT_EQ(invocation->command, "health");
  EXPECT_EQ(invocation->options.server, "localhost:50051");
  EXPECT_DOUBLE_EQ(invocation->options.timeout_seconds, 10);
  EXPECT_FALSE(invocation->options.json);
  EXPECT_THAT(invocation->args, IsEmpty());
}

TEST(ParseInvocationTest, GlobalFlagsBeforeAndAfterCommand) {
  auto invocation = ParseInvocation(
      {"--server=10.0.0.1:1234", "--timeout_seconds", "2.5", "health", "--json", "--service=x"});
  ASSERT_TRUE(invocation.ok()) << invocation.status();
  EXPECT_EQ(invocation->options.server, "10.0.0.1:1234");
  EXPECT_DOUBLE_EQ(invocation->options.timeout_seconds, 2.5);
  EXPECT_TRUE(invocation->options.json);
  EXPECT_EQ(invocation->command, "health");
  EXPECT_THAT(invocation->args, ElementsAre("--service=x"));
}

TEST(ParseInvocationTest, TokenFromFlagOrEnvironmentAndTlsFlagsTogether) {
  auto from_env = ParseInvocation({"jobs"}, "env-token");
  ASSERT_TRUE(from_env.ok());
  EXPECT_EQ(from_env->options.token, "env-token");
  auto from_flag = ParseInvocation({"--token", "flag-token", "jobs"}, "env-token");
  ASSERT_TRUE(from_flag.ok());
  EXPECT_EQ(from_flag->options.token, "flag-token");  // the flag wins
  EXPECT_THAT(ParseInvocation({"--token=", "jobs"}).status().message(), HasSubstr("--token"));
  // The next flag is not a value (it was sent as the token "--json").
  EXPECT_THAT(ParseInvocation({"--token", "--json", "jobs"}).status().message(), HasSubstr("--token needs a value"));
  EXPECT_THAT(ParseInvocation({"--server", "--json", "jobs"}).status().message(), HasSubstr("--server needs a value"));

  auto server_from_env = ParseInvocation({"jobs"}, "", "quantd.prod:50051");
  ASSERT_TRUE(server_from_env.ok());
  EXPECT_EQ(server_from_env->options.server, "quantd.prod:50051");
  auto server_from_flag = ParseInvocation({"--server=h:1", "jobs"}, "", "quantd.prod:50051");
  ASSERT_TRUE(server_from_flag.ok());
  EXPECT_EQ(server_from_flag->options.server, "h:1");  // the flag wins
  EXPECT_EQ(ParseInvocation({"jobs"}, "", "")->options.server, "localhost:50051");

  auto mtls = ParseInvocation({"--tls_ca=ca.pem", "--tls_cert=c.pem", "--tls_key=c.key", "jobs"});
  ASSERT_TRUE(mtls.ok()) << mtls.status();
  EXPECT_EQ(mtls->options.tls_ca_file, "ca.pem");
  EXPECT_THAT(ParseInvocation({"--tls_ca=ca.pem", "--tls_cert=c.pem", "jobs"}).status().message(),
              HasSubstr("--tls_cert and --tls_key go together"));
  EXPECT_THAT(ParseInvocation({"--tls_cert=c.pem", "--tls_key=c.key", "jobs"}).status().message(),
              HasSubstr("--tls_ca"));
  GlobalOptions missing;
  missing.tls_ca_file = "/nonexistent/ca.pem";
  EXPECT_THAT(ChannelCredentials(missing).status().message(), HasSubstr("--tls_ca: cannot read"));
}

TEST(ParseInvocationTest, JsonTakesExplicitValue) {
  auto invocation = ParseInvocation({"--json=false", "health"});
  ASSERT_TRUE(invocation.ok());
  EXPECT_FALSE(invocation->options.json);
  EXPECT_FALSE(ParseInvocation({"--json=maybe", "health"}).ok());
}

TEST(ParseInvocationTest, DoubleDashEndsGlobalFlags) {
  auto invocation = ParseInvocation({"health", "--", "--json", "positional"});
  ASSERT_TRUE(invocation.ok());
  EXPECT_FALSE(invocation->options.json);
  EXPECT_THAT(invocation->args, ElementsAre("--json", "positional"));
}

TEST(ParseInvocationTest, RejectsBadTimeouts) {
  for (const char* bad : {"--timeout=0", "--timeout=-1", "--timeout=abc", "--timeout=nan", "--timeout=inf",
                          "--timeout=1e300"}) {
    auto invocation = ParseInvocation({bad, "health"});
    EXPECT_FALSE(invocation.ok()) << bad;
    EXPECT_THAT(std::string(invocation.status().message()), HasSubstr("--timeout")) << bad;
  }
  EXPECT_FALSE(ParseInvocation({"health", "--timeout"}).ok());
  // The flag is named as quantd names durations; errors name the flag given.
  auto named = ParseInvocation({"--timeout_seconds=0", "health"});
  ASSERT_FALSE(named.ok());
  EXPECT_THAT(std::string(named.status().message()), HasSubstr("--timeout_seconds expects"));
  // Both names at once: the last one silently won.
  auto both = ParseInvocation({"--timeout=5", "--timeout_seconds=1", "health"});
  ASSERT_FALSE(both.ok());
  EXPECT_EQ(both.status().message(), "--timeout and --timeout_seconds are the same flag: give one");
  // --timeout stays as its old name.
  auto old_name = ParseInvocation({"--timeout=4", "health"});
  ASSERT_TRUE(old_name.ok()) << old_name.status();
  EXPECT_DOUBLE_EQ(old_name->options.timeout_seconds, 4);
}

TEST(ParseInvocationTest, RequiresACommand) {
  EXPECT_FALSE(ParseInvocation({}).ok());
  EXPECT_FALSE(ParseInvocation({"--json"}).ok());
  auto help = ParseInvocation({"--help"});
  ASSERT_TRUE(help.ok());
  EXPECT_TRUE(help->help);
  // -h and --version as quantd answers them (-h once said "no command given").
  auto short_help = ParseInvocation({"-h"});
  ASSERT_TRUE(short_help.ok()) << short_help.status();
  EXPECT_TRUE(short_help->help);
  auto command_help = ParseInvocation({"submit", "-h"});
  ASSERT_TRUE(command_help.ok()) << command_help.status();
  EXPECT_TRUE(command_help->help);
  EXPECT_EQ(command_help->command, "submit");
  auto version = ParseInvocation({"--version"});
  ASSERT_TRUE(version.ok()) << version.status();
  EXPECT_TRUE(version->version);
  auto version_after_command = ParseInvocation({"health", "--version"});
  ASSERT_TRUE(version_after_command.ok()) << version_after_command.status();
  EXPECT_TRUE(version_after_command->version);
}

TEST(ParseInvocationTest, EmptyServerIsRejected) {
  EXPECT_FALSE(ParseInvocation({"--server=", "health"}).ok());
}

TEST(CommandTableTest, FindsCommands) {
  ASSERT_NE(FindCommand("health"), nullptr);
  EXPECT_EQ(FindCommand("no-such-command"), nullptr);
  EXPECT_THAT(Usage(), HasSubstr("health"));
  EXPECT_THAT(Usage(), HasSubstr("--server"));
}

TEST(CommandTableTest, HealthRejectsUnknownArguments) {
  CommandContext context;
  std::ostringstream out, err;
  context.out = &out;
  context.err = &err;
  EXPECT_EQ(RunHealth(context, {"--bogus"}), kExitUsage);
  EXPECT_THAT(err.str(), HasSubstr("--bogus"));
  EXPECT_EQ(RunHealth(context, {"--service"}), kExitUsage);
  EXPECT_THAT(err.str(), HasSubstr("--service needs a value"));
  EXPECT_EQ(RunHealth(context, {"stray"}), kExitUsage);
  EXPECT_THAT(err.str(), HasSubstr("unexpected argument \"stray\""));
}

// A wrong number of arguments says what the command takes and what it got,
// before any call to the server.
TEST(CommandTableTest, WrongArgumentCountsSayWhatIsMissingOrExtra) {
  CommandContext context;
  struct Case {
    int (*run)(const CommandContext&, const std::vector<std::string>&);
    std::vector<std::string> args;
    std::string says;
  };
  const std::vector<Case> cases = {
      {&RunDownload, {}, "download: ARTIFACT_ID required"},
      {&RunDownload, {"art-1"}, "download: --output=FILE (or -o FILE) required"},
      {&RunDownload, {"art-1", "--output="}, "download: --output is empty"},
      {&RunDownload, {"art-1", "-o", ""}, "download: -o is empty"},
      {&RunDownload, {"art-1", "art-2", "-o", "x.pt"}, "download: takes ARTIFACT_ID, got 2: \"art-1\" \"art-2\""},
      {&RunUpload, {}, "upload: FILE required"},
      {&RunUpload, {"m.pt", "--sha256=zz"}, "upload: --sha256: \"zz\" is not 64 lower-case hex digits"},
      {&RunUpload, {"m.pt", "--sha256="}, "upload: --sha256: \"\" is not 64 lower-case hex digits"},
      {&RunUpload, {"m.pt", "--data_format=npy"}, "upload: --data_format is a dataset's"},
      {&RunUpload, {"m.pt", "--format=npy"}, "upload: --data_format is a dataset's"},
      {&RunUpload, {"d.bin", "--kind=dataset", "--format=npy", "--data_format=npy"}, "upload: --format is --data_format"},
      {&RunModels, {"delete"}, "models: takes delete NAME:VERSION, got 1: \"delete\""},
      {&RunModels, {"delete", "resnet8"}, "models delete: \"resnet8\": give NAME:VERSION"},
      {&RunModels, {"delete", "resnet8:"}, "models delete: VERSION: \"\" is not 1, 2, ..."},
      {&RunModels, {"delete", ":2"}, "models delete: \":2\": give NAME:VERSION"},
      {&RunModels, {"delete", "resnet8", "1", "2"}, "models: takes delete NAME:VERSION, got 4"},
      {&RunBlobs, {"delete"}, "blobs: takes delete BLOB_ID, got 1: \"delete\""},
      {&RunJobs, {"extra"}, "jobs: takes no arguments, got 1: \"extra\""},
      {&RunJobs, {"--state=running,bogus"}, "jobs: --state: unknown state \"bogus\""},
      {&RunJobs, {"--state=unspecified"}, "jobs: --state: unknown state \"unspecified\""},
      {&RunJobs, {"--state=,"}, "jobs: --state: no state given"},
      {&RunSubmit, {"--model=m.pt", "--calib=c.bin", "--model_name="}, "--model_name is empty"},
      // Checked as quantd-quantize checks them (worker/engine/base/flag_values.h).
      {&RunSubmit, {"--model=m.pt", "--calib=c.bin", "--kernel_engine=bogus"}, "--kernel_engine: unknown kernel engine"},
      {&RunSubmit, {"--model=m.pt", "--calib=c.bin", "--std=,"}, "--std: a number left out in \",\""},
      {&RunSubmit, {"--model=m.pt", "--calib=c.bin", "--tuning=v.bin", "--time_budget_seconds=100000"},
       "--time_budget_seconds: a positive number up to 86400 expected"},
      {&RunSubmit, {"--model=m.pt", "--calib=c.bin", "--idempotency_key="}, "--idempotency_key is empty"},
      {&RunArtifacts, {"a", "b"}, "artifacts: takes ARTIFACT_ID, got 2: \"a\" \"b\""},
      // Empty, the job filter was off and every artifact was listed.
      {&RunArtifacts, {"--job="}, "artifacts: --job is empty (an unset variable?)"},
      {&RunSubmit, {"--model=m.pt", "--calib=c.bin", "--seed=-1"}, "--seed: not a count (0 or more)"},
      {&RunEval, {"a", "b", "--data=x.bin"}, "eval: takes NAME[:VERSION], got 2: \"a\" \"b\""},
      // NAME[:VERSION] is checked alike by every command that takes it.
      {&RunEval, {"resnet8:abc", "--data=x.bin"}, "eval: VERSION: \"abc\" is not 1, 2, ..."},
      {&RunEval, {":3", "--data=x.bin"}, "eval: \":3\": give NAME[:VERSION]"},
      {&RunInfer, {"resnet8:0", "--data=x.bin"}, "infer: VERSION: \"0\" is not 1, 2, ..."},
      {&RunInfer, {":3", "--data=x.bin"}, "infer: \":3\": give NAME[:VERSION]"},
      {&RunModels, {"delete", "resnet8:01"}, "models delete: VERSION: \"01\" is not 1, 2, ..."},
      {&RunInfer, {"resnet8"}, "infer: --data required"},
      {&RunEval, {"resnet8", "--data=x.bin", "--batch_size=0"}, "eval: --batch_size: a number in 1..4096 expected"},
      {&RunEval, {"resnet8", "--data=x.bin", "--batch_size=5000"}, "eval: --batch_size: a number in 1..4096 expected"},
      {&RunEval, {"resnet8", "--data=x.bin", "--max_samples=-1"}, "eval: --max_samples: \"-1\" is not a count"},
      {&RunEval, {"--id=eval-1", "resnet8"}, "eval: takes no arguments, got 1: \"resnet8\""},
      {&RunEval, {"--id=eval-1", "--data=x.bin"}, "eval: --id follows an evaluation already started; --data"},
      // Ignored by the server beside CIFAR-10 records: a missing file went unnoticed.
      {&RunEval, {"resnet8", "--data=x.bin", "--data_labels=nonexistent.npy"},
       "eval: --data_labels: CIFAR-10 records carry their labels"},
      // A flag is not a job id sent to the server.
      {&RunDelete, {"--id=job-1"}, "delete: unknown flag --id"},
      {&RunJob, {"--verbose"}, "job: unknown flag --verbose"},
      {&RunWatch, {"--follow", "job-1"}, "watch: unknown flag --follow"},
      {&RunJob, {}, "job: JOB_ID required"},
      {&RunDelete, {"job-1", "job-2"}, "delete: takes JOB_ID, got 2: \"job-1\" \"job-2\""},
  };
  for (const Case& c : cases) {
    std::ostringstream out, err;
    context.out = &out;
    context.err = &err;
    EXPECT_EQ(c.run(context, c.args), kExitUsage) << c.says;
    EXPECT_THAT(err.str(), HasSubstr(c.says));
  }
  std::string error;
  std::optional<CommandArgs> short_output = ParseCommandArgs({"art-1", "-o=x.pt"}, {"o", "output"}, &error);
  ASSERT_TRUE(short_output.has_value()) << error;
  EXPECT_EQ(short_output->Get("o"), "x.pt");
}

// Image ranges past the file, however large the numbers, are usage errors
// (first + count once overflowed past the bounds check into a crash).
TEST(CommandTableTest, InferRefusesImageRangesPastTheFile) {
  const std::string path = ::testing::TempDir() + "/two_images.bin";
  {
    std::ofstream out(path, std::ios::binary);
    out << std::string(2 * 3073, '\0');
  }
  CommandContext context;
  std::ostringstream out, err;
  context.out = &out;
  context.err = &err;
  for (const std::vector<std::string>& range :
       {std::vector<std::string>{"--first=9223372036854775807"}, {"--first=1", "--count=9223372036854775807"},
        {"--first=2"}, {"--count=3"}}) {
    std::vector<std::string> args = {"resnet8", "--data", path};
    args.insert(args.end(), range.begin(), range.end());
    err.str("");
    EXPECT_EQ(RunInfer(context, args), kExitUsage) << range[0];
    EXPECT_THAT(err.str(), HasSubstr("past the file's 2")) << range[0];
  }
}

// A .npy header whose shape multiplies past int64 (or just past the file)
// is a usage error, not an overflow into a read far outside the file.
TEST(CommandTableTest, InferRefusesANpyShapeLargerThanTheFile) {
  const std::string path = ::testing::TempDir() + "/huge_shape.npy";
  for (const char* shape : {"(2, 2097152, 2097152, 2097152)", "(1, 3, 32, 32)"}) {
    std::string header = absl::StrCat("{'descr': '|u1', 'fortran_order': False, 'shape': ", shape, ", }");
    header.resize(118, ' ');
    header += '\n';  // 10 + 118 = 128 bytes before the data, as numpy aligns it
    {
      std::ofstream out(path, std::ios::binary);
      out << std::string("\x93NUMPY\x01\x00", 8) << static_cast<char>(header.size() & 0xff)
          << static_cast<char>(header.size() >> 8) << header << std::string(64, '\0');
    }
    CommandContext context;
    std::ostringstream out, err;
    context.out = &out;
    context.err = &err;
    EXPECT_EQ(RunInfer(context, {"resnet8", "--data", path, "--first=1"}), kExitUsage) << shape;
    EXPECT_THAT(err.str(), HasSubstr("shorter than its shape")) << shape;
  }
}

// Inputs that are not a dataset file, and a target with no name, are usage
// errors before any call (a directory once crashed quantctl with an
// uncaught exception; a 10-byte v2 .npy read past its end).
TEST(CommandTableTest, InferRefusesFoldersTruncatedHeadersAndNamelessTargets) {
  const std::string truncated = ::testing::TempDir() + "/truncated_v2.npy";
  {
    std::ofstream out(truncated, std::ios::binary);
    out << std::string("\x93NUMPY\x02\x00\x10\x00", 10);
  }
  const std::string images = ::testing::TempDir() + "/one_image.bin";
  {
    std::ofstream out(images, std::ios::binary);
    out << std::string(3073, '\0');
  }
  CommandContext context;
  std::ostringstream out, err;
  context.out = &out;
  context.err = &err;
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"resnet8", "--data", ::testing::TempDir()}, "is not a readable file"},
      {{"resnet8", "--data", truncated}, "--data: truncated .npy header"},
      {{":3", "--data", images}, "\":3\": give NAME[:VERSION]"},
  };
  for (const auto& [args, message] : cases) {
    err.str("");
    EXPECT_EQ(RunInfer(context, args), kExitUsage) << message;
    EXPECT_THAT(err.str(), HasSubstr(message));
  }
}

// quantctl submit refuses, naming the flag and before any call, what
// quantd-quantize refuses (the context has no channel: an RPC would crash).
TEST(CommandTableTest, SubmitRefusesWhatQuantdQuantizeRefuses) {
  CommandContext context;
  std::ostringstream out, err;
  context.out = &out;
  context.err = &err;
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--calib=c.dat"}, "--calib: cannot tell the format of \"c.dat\""},
      {{"--calib=c.bin", "--calib_format=csv"}, "--calib_format must be cifar10 or npy, not \"csv\""},
      {{"--calib=c.bin", "--fusion="}, "--fusion is empty"},
      // What fusion refuses after loading the model, and a spec file
      // (quantd-quantize reads one; a job's groups travel in the request).
      {{"--calib=c.bin", "--fusion=conv1"}, "--fusion: group \"conv1\" needs two or more modules"},
      {{"--calib=c.bin", "--fusion=conv1,bn1;bn1,relu1"}, "--fusion: module \"bn1\" is in two groups"},
      {{"--calib=c.bin", "--fusion=spec.json"}, "--fusion: groups go inline here"},
      // The server's limits, as quantd-quantize checks them.
      {{"--calib=c.bin", "--batch_size=20000"}, "--batch_size: a number in 1..10000 expected"},
      {{"--calib=c.bin", "--quality_samples=50000"}, "--quality_samples: a number in 0..10000 expected"},
      // The enums' UNSPECIFIED reached the server as "not given".
      {{"--calib=c.bin", "--preset=unspecified"}, "--preset: unknown preset \"unspecified\""},
      {{"--calib=c.bin", "--preset=custom", "--activation_observer=unspecified"},
       "--activation_observer: unknown observer \"unspecified\""},
      {{"--calib=c.bin", "--preset=custom", "--weight_observer=unspecified"},
       "--weight_observer: unknown observer \"unspecified\""},
      // Given empty, a file flag read as not given.
      {{"--calib=c.bin", "--calib_labels="}, "--calib_labels is empty"},
      {{"--calib=c.bin", "--fusion=;"}, "--fusion: no groups"},
      {{"--calib=c.bin", "--eval_labels=l.npy"}, "--eval_labels: needs --eval or --eval_blob"},
      // Dropped silently once, with no dataset to apply them to.
      {{"--calib_format=npy"}, "--calib_format: needs --calib or --calib_blob"},
      {{"--calib_labels=l.npy"}, "--calib_labels: needs --calib or --calib_blob"},
      {{"--calib=c.bin", "--batch_size=0"}, "--batch_size: a number in 1..10000 expected"},
      {{"--calib=c.bin", "--scale=nan"}, "--scale: a finite, non-zero number expected"},
      {{"--calib=c.bin", "--mean="}, "--mean: comma-separated numbers expected"},
      {{"--calib=c.npy", "--layout=auto"}, "--layout must be NCHW or NHWC, not \"auto\""},
      {{"--calib=c.bin", "--wait", "false"}, "unexpected argument \"false\""},
      // 0 once reached the server as "unset", and ran with 99.99.
      {{"--calib=c.bin", "--preset=custom", "--activation_observer=percentile", "--percentile=0"},
       "--percentile must be a number in (0, 100], not \"0\""},
      {{"--calib=c.bin", "--preset=custom", "--percentile=99"}, "--percentile: only with --activation_observer"},
      {{"--calib=c.bin", "--tuning=v.bin", "--tolerance=nan"}, "--tolerance: a number of points in [0, 100]"},
      {{"--calib=c.bin", "--tuning=v.bin", "--max_trials=5000"}, "--max_trials: a number in 1..1000"},
      // Reached the server once, which named its own field.
      {{"--calib=c.bin", "--min_top1_agreement=1.5"}, "--min_top1_agreement must be a fraction in 0..1"},
      {{"--calib=c.bin", "--min_top1_agreement=nan"}, "--min_top1_agreement must be a finite number, not 'nan'"},
      {{"--calib=c.bin", "--min_output_sqnr_db=inf"}, "--min_output_sqnr_db must be a finite number, not 'inf'"},
      // A path and a blob for one input: the blob silently won.
      {{"--model_blob=" + std::string(64, 'b'), "--calib=c.bin"}, "--model and --model_blob name the same input"},
      {{"--calib=c.bin", "--calib_blob=" + std::string(64, 'b')}, "--calib and --calib_blob name the same dataset"},
      {{"--calib=c.bin", "--tuning=v.bin", "--tuning_blob=" + std::string(64, 'b')},
       "--tuning and --tuning_blob name the same dataset"},
      {{"--calib=c.npy", "--calib_labels=l.npy", "--calib_labels_blob=" + std::string(64, 'b')},
       "--calib_labels and --calib_labels_blob name the same labels"},
      // The server ignores labels beside CIFAR-10 records: not even a
      // missing file was noticed.
      {{"--calib=c.bin", "--calib_labels=l.npy"}, "--calib_labels: CIFAR-10 records carry their labels"},
      {{"--calib=c.bin", "--tuning=v.bin", "--tuning_labels_blob=" + std::string(64, 'b')},
       "--tuning_labels_blob: CIFAR-10 records carry their labels"},
      {{"--calib=c.bin", "--eval_labels_blob=" + std::string(64, 'b')}, "--eval_labels_blob: needs --eval"},
      {{"--calib=c.bin", "--eval=e.npy", "--eval_labels_blob="}, "--eval_labels_blob is empty"},
  };
  for (const auto& [extra, message] : cases) {
    std::vector<std::string> args = {"--model=m.pt"};
    args.insert(args.end(), extra.begin(), extra.end());
    err.str("");
    EXPECT_EQ(RunSubmit(context, args), kExitUsage) << message;
    EXPECT_THAT(err.str(), HasSubstr(message));
  }
  // Without a model or a calibration set (flags or --file), naming the
  // flags; the server named its fields, and quantctl exited 1.
  for (const auto& [args, message] :
       std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{}, "a model is required: --model or --model_blob"},
           {{"--calib=c.bin"}, "a model is required: --model or --model_blob"},
           {{"--model=m.pt"}, "a calibration set is required: --calib or --calib_blob"}}) {
    err.str("");
    EXPECT_EQ(RunSubmit(context, args), kExitUsage) << message;
    EXPECT_THAT(err.str(), HasSubstr(message));
  }
}

// --deadline_seconds counts from now to the millisecond: from whole seconds
// a deadline of 0.5 s was up to a second early, often already past.
TEST(CommandTableTest, ADeadlineCountsFromNowToTheMillisecond) {
  CommandArgs args;
  args.flags = {{"model", "m.pt"}, {"calib", "c.bin"}, {"deadline_seconds", "0.5"}};
  v1::QuantizeJobRequest request;
  std::string error;
  const int64_t before = absl::ToUnixMillis(absl::Now());
  ASSERT_TRUE(QuantizeJobRequestFromFlags(args, &request, &error)) << error;
  const int64_t after = absl::ToUnixMillis(absl::Now());
  const int64_t deadline = google::protobuf::util::TimeUtil::TimestampToMilliseconds(request.deadline());
  EXPECT_GE(deadline, before + 500);
  EXPECT_LE(deadline, after + 500);
}

TEST(CommandTableTest, DatasetFormatIsNamedOrToldByTheExtension) {
  std::string error;
  EXPECT_EQ(DatasetFormatOf("/d/calib.npy", "calib", "", &error), "npy");
  EXPECT_EQ(DatasetFormatOf("/d/calib_batch.bin", "calib", "", &error), "cifar10");
  EXPECT_EQ(DatasetFormatOf("/d/images", "calib", "npy", &error), "npy");  // named: the name wins
  EXPECT_TRUE(error.empty()) << error;
  EXPECT_EQ(DatasetFormatOf("/d/images", "tuning", "", &error), "");
  EXPECT_THAT(error, HasSubstr("--tuning_format=cifar10|npy"));
}

// "quantctl submit --help": every flag of the command, not the one-line row.
TEST(CommandTableTest, ACommandsHelpListsEveryFlag) {
  const std::string submit = CommandUsage(*FindCommand("submit"));
  EXPECT_THAT(submit, HasSubstr("usage: quantctl [GLOBAL FLAGS] submit [--file=JOB.json]"));
  EXPECT_THAT(submit, HasSubstr("a flag beside --file sets its field over the file's"));
  EXPECT_THAT(submit, HasSubstr("--against_fp32"));
  EXPECT_THAT(submit, HasSubstr("--wait"));
  EXPECT_THAT(CommandUsage(*FindCommand("health")), HasSubstr("health [--service=NAME]"));
  EXPECT_THAT(CommandUsage(*FindCommand("eval")), HasSubstr("--data_labels=PATH | --data_labels_blob=ID"));
  EXPECT_THAT(CommandUsage(*FindCommand("upload")), HasSubstr("--sha256=HEX"));
  EXPECT_THAT(CommandUsage(*FindCommand("download")), HasSubstr("--chunk_size=BYTES"));
}

// Uploaded labels, as uploaded images, go by blob id: without the flag a
// remote user could not evaluate or tune on a .npy set.
TEST(SubmitFlagsTest, LabelsGoByPathOrBlob) {
  CommandArgs a;
  a.flags = {{"model", "m.pt"},
             {"calib_blob", std::string(64, 'c')},
             {"calib_format", "npy"},
             {"calib_labels_blob", std::string(64, 'l')},
             {"eval", "e.npy"},
             {"eval_labels", "e_labels.npy"}};
  v1::QuantizeJobRequest request;
  std::string error;
  ASSERT_TRUE(QuantizeJobRequestFromFlags(a, &request, &error)) << error;
  EXPECT_EQ(request.calibration().dataset().labels_blob_id(), std::string(64, 'l'));
  EXPECT_EQ(request.evaluation().dataset().labels_path(), "e_labels.npy");
}

// --file as a template: flags that refine a part of the request (a custom
// qconfig's observers, the evaluation's sample cap, the accuracy goal's
// settings) apply to that part when the file has it. They were refused as
// needing the flag that names it, and a custom qconfig's fields the flags
// left out were reset to their defaults.
TEST(SubmitFlagsTest, FlagsRefineWhatTheFileRequestHas) {
  v1::QuantizeJobRequest request;
  request.mutable_qconfig()->mutable_custom()->set_activation_observer(v1::ACTIVATION_OBSERVER_PERCENTILE);
  request.mutable_qconfig()->mutable_custom()->set_weight_observer(v1::WEIGHT_OBSERVER_PER_TENSOR_AFFINE);
  request.mutable_qconfig()->mutable_custom()->set_reduce_range(true);
  request.mutable_evaluation()->mutable_dataset()->set_path("test.bin");
  request.mutable_accuracy_goal()->mutable_tuning()->set_path("val.bin");
  CommandArgs a;
  a.flags = {{"percentile", "99.9"},       {"eval_max_samples", "100"}, {"tolerance", "0.5"},
             {"max_fp32_layers", "0"},     {"max_trials", "3"}};
  std::string error;
  ASSERT_TRUE(QuantizeJobRequestFromFlags(a, &request, &error)) << error;
  const v1::CustomQConfig& custom = request.qconfig().custom();
  EXPECT_EQ(custom.activation_observer(), v1::ACTIVATION_OBSERVER_PERCENTILE);
  EXPECT_EQ(custom.weight_observer(), v1::WEIGHT_OBSERVER_PER_TENSOR_AFFINE);  // kept
  EXPECT_TRUE(custom.reduce_range());                                          // kept
  EXPECT_DOUBLE_EQ(custom.percentile(), 99.9);
  EXPECT_EQ(request.evaluation().max_samples(), 100u);
  EXPECT_EQ(request.evaluation().dataset().path(), "test.bin");
  EXPECT_DOUBLE_EQ(request.accuracy_goal().tolerance(), 0.5);
  EXPECT_EQ(request.accuracy_goal().max_trials(), 3u);
  EXPECT_EQ(request.accuracy_goal().tuning().path(), "val.bin");

  // Without them in the file, each still names what it needs; a preset
  // given as a flag replaces the file's custom qconfig.
  for (const auto& [flag, message] : std::vector<std::pair<std::string, std::string>>{
           {"percentile", "--percentile: needs --preset=custom (or qconfig.custom in --file)"},
           {"eval_max_samples", "--eval_max_samples: needs --eval or --eval_blob (or evaluation in --file)"},
           {"tolerance", "--tolerance: needs --tuning or --tuning_blob (or accuracy_goal in --file)"}}) {
    v1::QuantizeJobRequest empty;
    CommandArgs b;
    b.flags = {{flag, "1"}};
    EXPECT_FALSE(QuantizeJobRequestFromFlags(b, &empty, &error)) << flag;
    EXPECT_EQ(error, message);
  }
  CommandArgs preset;
  preset.flags = {{"preset", "onednn"}, {"reduce_range", "true"}};
  EXPECT_FALSE(QuantizeJobRequestFromFlags(preset, &request, &error));
  EXPECT_EQ(error, "--reduce_range: needs --preset=custom (or qconfig.custom in --file)");
  // A boolean given as false is as good as left out (wrappers pass --X=$X).
  CommandArgs off;
  off.flags = {{"model", "m.pt"},         {"calib", "c.bin"},          {"preset", "onednn"},
               {"reduce_range", "false"}, {"against_fp32", "false"}, {"int8_only", "false"}};
  v1::QuantizeJobRequest plain;
  EXPECT_TRUE(QuantizeJobRequestFromFlags(off, &plain, &error)) << error;
  EXPECT_FALSE(plain.has_accuracy_goal());
  // As the server refuses it, before anything is sent.
  CommandArgs capped;
  capped.flags = {{"model", "m.pt"}, {"calib", "c.bin"}, {"tuning", "v.bin"}, {"int8_only", "true"},
                  {"max_fp32_layers", "2"}};
  v1::QuantizeJobRequest tuned;
  EXPECT_FALSE(QuantizeJobRequestFromFlags(capped, &tuned, &error));
  EXPECT_EQ(error, "--max_fp32_layers: not with --int8_only (no layer stays FP32)");
  CommandArgs strict;
  strict.flags = {{"model", "m.pt"}, {"calib", "c.bin"}, {"strict_kernels", "true"}};
  v1::QuantizeJobRequest unnamed_engine;
  EXPECT_FALSE(QuantizeJobRequestFromFlags(strict, &unnamed_engine, &error));
  EXPECT_EQ(error, "--strict_kernels: only with --kernel_engine (without one an exact engine is chosen)");
  strict.flags["kernel_engine"] = "qnnpack";
  EXPECT_TRUE(QuantizeJobRequestFromFlags(strict, &unnamed_engine, &error)) << error;
}

// Names are taken in either case, as quantd-quantize takes them.
TEST(SubmitFlagsTest, NamesAreTakenInEitherCase) {
  CommandArgs a;
  a.flags = {{"model", "m.pt"},   {"calib", "c.bin"},       {"preset", "CUSTOM"},
             {"activation_observer", "MSE"}, {"kernel_engine", "OneDNN"}, {"layout", "Nhwc"}};
  v1::QuantizeJobRequest request;
  std::string error;
  ASSERT_TRUE(QuantizeJobRequestFromFlags(a, &request, &error)) << error;
  EXPECT_TRUE(request.qconfig().has_custom());
  EXPECT_EQ(request.qconfig().custom().activation_observer(), v1::ACTIVATION_OBSERVER_MSE);
  EXPECT_EQ(request.qconfig().kernel_engine(), "onednn");
  EXPECT_EQ(request.preprocessing().input_layout(), v1::TENSOR_LAYOUT_NHWC);
}

}  // namespace
}  // namespace quantd::cli
