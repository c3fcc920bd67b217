#include "client/commands.h"

#include <ostream>

#include <google/protobuf/util/json_util.h>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/base/pem_file.h"

namespace quantd::cli {

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(const GlobalOptions& options) {
  if (options.tls_ca_file.empty()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  absl::StatusOr<std::string> ca = ReadPemFile(options.tls_ca_file, "--tls_ca");
  if (!ca.ok()) return ca.status();
  ssl.pem_root_certs = *ca;
  if (!options.tls_cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadPemFile(options.tls_cert_file, "--tls_cert");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPemFile(options.tls_key_file, "--tls_key");
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *cert;
    ssl.pem_private_key = *key;
  }
  return grpc::SslCredentials(ssl);
}

void CommandContext::PrepareCall(grpc::ClientContext& context, bool with_deadline) const {
  if (!options.token.empty()) context.AddMetadata("authorization", "Bearer " + options.token);
  if (!with_deadline) return;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::duration_cast<std::chrono::system_clock::duration>(
                           std::chrono::duration<double>(options.timeout_seconds)));
}

void CommandContext::Print(const google::protobuf::Message& message,
                           const std::string& text) const {
  if (!options.json) {
    *out << text << "\n";
    return;
  }
  google::protobuf::util::JsonPrintOptions json_options;
  json_options.add_whitespace = true;
  json_options.always_print_primitive_fields = true;
  std::string json;
  auto status = google::protobuf::util::MessageToJsonString(message, &json, json_options);
  if (!status.ok()) {
    *err << "quantctl: cannot print response as JSON: " << status.ToString() << "\n";
    *out << text << "\n";
    return;
  }
  *out << json;
  if (json.empty() || json.back() != '\n') *out << "\n";
}

int CommandContext::RpcFailed(const std::string& what, const grpc::Status& status) const {
  // gRPC's codes are absl's, number for number.
  const int code = static_cast<int>(status.error_code());
  *err << "quantctl: " << what << " failed (server " << options.server << "): "
       << absl::StatusCodeToString(static_cast<absl::StatusCode>(code)) << " (code " << code
       << "): " << status.error_message() << "\n";
  return kExitFailure;
}

int CommandContext::UsageError(const std::string& message) const {
  *err << "quantctl: " << message << "\n";
  return kExitUsage;
}

const std::vector<Command>& Commands() {
  static const std::vector<Command>* commands = new std::vector<Command>{
      {"artifacts", "[ARTIFACT_ID] [--job=JOB_ID]",
       "list int8 artifacts, newest first, or show one", &RunArtifacts,
       "[ARTIFACT_ID] [--job=JOB_ID] [--page_size=N] [--page_token=T]"},
      {"blobs", "[BLOB_ID] | delete BLOB_ID",
       "list uploaded blobs (with the jobs using them), show one, or delete one", &RunBlobs,
       "[BLOB_ID] [--page_token=T] | delete BLOB_ID"},
      {"cancel", "(JOB_ID | EVALUATION_ID) [--reason=TEXT]",
       "cancel a queued job at once, a running job or evaluation at its next batch", &RunCancel},
      {"delete", "JOB_ID", "delete a finished job (its artifact if unused, and the model version it published)", &RunDelete},
      {"download", "ARTIFACT_ID --output=FILE", "download an artifact, verifying its sha256",
       &RunDownload, "ARTIFACT_ID (--output=FILE | -o FILE) [--chunk_size=BYTES]"},
      {"eval", "NAME[:VERSION] (--data=PATH | --data_blob=ID) [--data_format=cifar10|npy] [--max_samples=N] ...",
       "evaluate a published version, int8 and FP32 side by side (top-1/5, per class, confusion)", &RunEval,
       "NAME[:VERSION] (--data=PATH | --data_blob=ID) [--data_format=cifar10|npy] "
       "[--data_labels=PATH | --data_labels_blob=ID] [--max_samples=N] [--batch_size=N] [--skip_fp32] "
       "| --id=EVALUATION_ID"},
      {"health", "[--service=NAME]",
       "check quantd's health (grpc.health.v1); exit 0 if SERVING", &RunHealth},
      {"infer", "NAME[:VERSION] --data=FILE [--data_format=cifar10|npy] [--first=N] [--count=N] [--top=K]",
       "classify images from a local file with a served version (top K with class names)", &RunInfer},
      {"job", "JOB_ID", "show one job with its result", &RunJob},
      {"jobs", "[--state=S,...] [--page_size=N] [--page_token=T]",
       "list jobs, newest first", &RunJobs},
      {"models", "[NAME] | delete NAME:VERSION",
       "list published model versions (with accuracy and whether loaded), or unpublish one", &RunModels},
      {"submit", "[--file=JOB.json] --model=PATH --calib=PATH ... [--wait]",
       "submit a quantization job (see `submit --help`); --wait follows it", &RunSubmit, kSubmitUsage},
      {"upload", "FILE [--kind=model|dataset] [--data_format=cifar10|npy]",
       "upload a model or dataset; prints its blob id", &RunUpload,
       "FILE [--kind=model|dataset] [--data_format=cifar10|npy (default: the extension)] [--sha256=HEX]"},
      {"watch", "JOB_ID", "stream a job's events until it ends", &RunWatch},
  };
  return *commands;
}

const Command* FindCommand(const std::string& name) {
  for (const Command& command : Commands()) {
    if (name == command.name) return &command;
  }
  return nullptr;
}

std::string Usage() {
  std::string usage = GlobalUsage();
  absl::StrAppend(&usage, "\ncommands:\n");
  for (const Command& command : Commands()) {
    absl::StrAppend(&usage, "  ", command.name, " ", command.args, "\n      ", command.summary, "\n");
  }
  return usage;
}

std::string CommandUsage(const Command& command) {
  const char* args = command.all_args != nullptr ? command.all_args : command.args;
  std::string text =
      absl::StrCat("usage: quantctl [GLOBAL FLAGS] ", absl::StartsWith(args, command.name) ? "" : command.name,
                   absl::StartsWith(args, command.name) ? "" : " ", args, "\n  ", command.summary, "\n",
                   "Value flags: --flag=VALUE or --flag VALUE; boolean flags: --flag or --flag=true|false.\n");
  return text;
}

}  // namespace quantd::cli
