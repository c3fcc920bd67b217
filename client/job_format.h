#ifndef QUANTD_CLIENT_JOB_FORMAT_H_
#define QUANTD_CLIENT_JOB_FORMAT_H_

// Shared pieces of quantctl's job/artifact commands: flag parsing, text
// rendering of jobs, events and artifacts, and following a job's events.

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <google/protobuf/message.h>

#include "absl/time/time.h"
#include "client/commands.h"
#include "quantd/v1/quantd.grpc.pb.h"

namespace quantd::cli {

// A command's flags and positional arguments. Value flags are "--name=VALUE"
// or "--name VALUE" (a missing value is an error naming the flag); boolean
// flags are "--name" (true) or "--name=true|false|1|0", stored as "true" or
// "false"; "-o FILE" and "-o=FILE" are "--o=FILE".
struct CommandArgs {
  std::map<std::string, std::string> flags;
  std::vector<std::string> positional;
  bool Has(const std::string& name) const { return flags.count(name) > 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") const;
  // A boolean flag: given and not false.
  bool IsOn(const std::string& name) const { return Get(name) == "true"; }
};
// Flags in neither `allowed` (value flags) nor `booleans` are a usage error
// (message in *error, naming the flag).
std::optional<CommandArgs> ParseCommandArgs(const std::vector<std::string>& args,
                                            const std::vector<std::string>& allowed, std::string* error,
                                            const std::vector<std::string>& booleans = {});

// Why the arguments that are not flags do not fit a command that takes
// `min`..`max` of them (`takes`, as its usage line names them, e.g.
// "ARTIFACT_ID"); "" when they fit.
std::string PositionalCountError(const CommandArgs& a, size_t min, size_t max, const std::string& takes);
// The one JOB_ID of `job`, `watch` and `delete`, which take no flags: a flag
// is "unknown flag --x", not a job id sent to the server. "" and `error` set
// otherwise.
std::string OnlyJobId(const std::vector<std::string>& args, std::string* error);

// NAME[:VERSION], as `models delete`, `eval` and `infer` take a model
// version: a NAME, and a VERSION of 1, 2, ... (absent: the newest, unless
// `version_required`). Checked as the server checks it, so that a typo is a
// usage error before any connection. False with *error saying what is wrong.
struct ModelTarget {
  std::string name;
  std::string version;  // "" = the newest
};
bool ParseModelTarget(const std::string& text, bool version_required, ModelTarget* target, std::string* error);

// A DatasetRef from --PREFIX=PATH | --PREFIX_blob=ID, --PREFIX_format=cifar10|npy
// and --PREFIX_labels=PATH (false with *error naming the flag).
bool SetDataset(const CommandArgs& a, const std::string& prefix, v1::DatasetRef* ref, std::string* error);
// "cifar10" or "npy" for the dataset file `path` of --FLAG: `format` (from
// --FLAG_format) when given, else the file's extension (.bin CIFAR-10 binary,
// .npy NumPy), as quantd-quantize decides. Empty, with `error` naming the
// flag, when neither tells.
std::string DatasetFormatOf(const std::string& path, const std::string& flag, const std::string& format,
                            std::string* error);

// `quantctl submit`'s request from its flags (false with *error naming the
// flag).
bool QuantizeJobRequestFromFlags(const CommandArgs& a, v1::QuantizeJobRequest* r, std::string* error);

std::string JobText(const v1::Job& job);
std::string JobLine(const v1::Job& job);
std::string EventText(const v1::JobEvent& event);
std::string ArtifactText(const v1::Artifact& artifact);
// A finished evaluation's report as tables; the confusion matrices as grids
// (columns by class index) up to kMaxGridClasses classes.
inline constexpr int kMaxGridClasses = 32;
std::string EvaluationText(const v1::Evaluation& evaluation);
// Compact one-line JSON (for streams under --json).
std::string JsonLine(const google::protobuf::Message& message);

// Streams WatchJob until the job ends, printing each event. Returns kExitOk
// if the job SUCCEEDED, kExitFailure otherwise. A watch that breaks after
// its first event is resumed while the server answers again within
// `reconnect_window` (5 minutes in the first form) of the break; so is one
// that never got an event when `job_exists` (submit --wait: the server
// just answered with the job, so a busy or restarting server is no reason
// to give up on it and have the user submit it again).
int FollowJob(const CommandContext& context, const std::string& job_id, bool job_exists = false);
int FollowJob(const CommandContext& context, const std::string& job_id, absl::Duration reconnect_window,
              bool job_exists = false);
// Polls `evaluation` until it ends (a live line on a terminal, a plain one
// every few seconds on a pipe), then prints its report. A server that stops
// answering (UNAVAILABLE, DEADLINE_EXCEEDED) is asked again while it comes
// back within `reconnect_window` (or answers RESOURCE_EXHAUSTED or CANCELLED:
// busy, or stopping): the evaluation runs on without the client.
int FollowEvaluation(const CommandContext& context, v1::QuantizationService::StubInterface& stub,
                     v1::Evaluation evaluation, absl::Duration reconnect_window);

std::string ShortEnum(const std::string& name, const std::string& prefix);

}  // namespace quantd::cli

#endif  // QUANTD_CLIENT_JOB_FORMAT_H_
