// quantctl upload FILE [--kind=model|dataset] [--data_format=cifar10|npy]
// [--sha256=HEX]: streams a file in 1 MiB chunks; prints the blob id.

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <ostream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/base/sha256.h"
#include "client/job_format.h"

namespace quantd::cli {
namespace {

constexpr size_t kChunk = 1 << 20;

// Sends metadata + chunks on `writer`; Metadata is the request's metadata type.
template <typename Request, typename Writer>
bool SendFile(std::ifstream& in, Writer* writer) {
  std::string buffer(kChunk, '\0');
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const std::streamsize n = in.gcount();
    if (n <= 0) break;
    Request chunk;
    chunk.set_chunk_data(buffer.data(), static_cast<size_t>(n));
    if (!writer->Write(chunk)) return false;  // the server ended the call early
  }
  return true;
}

}  // namespace

int RunUpload(const CommandContext& context, const std::vector<std::string>& args) {
  std::string error;
  // --data_format as eval and infer name it; --format is its old name.
  auto a = ParseCommandArgs(args, {"kind", "data_format", "format", "sha256"}, &error);
  if (a.has_value()) error = PositionalCountError(*a, 1, 1, "FILE");
  if (error.empty() && a->Has("data_format") && a->Has("format")) error = "--format is --data_format: give one";
  if (!error.empty()) {
    return context.UsageError(absl::StrCat(
        "upload: ", error, "\nusage: upload FILE [--kind=model|dataset] [--data_format=cifar10|npy] [--sha256=HEX]"));
  }
  const std::string path = a->positional[0];
  const std::string kind = a->Get("kind", "model");
  if (kind != "model" && kind != "dataset") return context.UsageError("upload: --kind must be model or dataset");
  const bool format_given = a->Has("data_format") || a->Has("format");
  if (kind == "model" && format_given) {
    return context.UsageError("upload: --data_format is a dataset's (cifar10|npy): give it with --kind=dataset");
  }
  if (!a->Has("kind") && (absl::EndsWith(path, ".bin") || absl::EndsWith(path, ".npy"))) {
    // A dataset's extension: uploaded as a model, it was refused only at submit.
    *context.err << "quantctl: upload: " << path
                 << " goes as a model (--kind=model, the default); a dataset needs --kind=dataset\n";
  }
  if (a->Has("sha256")) {  // as the server checks it, before the file is sent
    const std::string given = a->Get("sha256");
    const bool hex = given.size() == 64 && std::all_of(given.begin(), given.end(), [](char c) {
                       return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
                     });
    if (!hex) {
      return context.UsageError(
          absl::StrCat("upload: --sha256: \"", given.substr(0, 80), "\" is not 64 lower-case hex digits"));
    }
  }
  std::error_code size_error;
  const uint64_t size = std::filesystem::file_size(path, size_error);
  std::ifstream in(path, std::ios::binary);
  if (!in || size_error) return context.UsageError(absl::StrCat("upload: cannot read ", path));
  std::string sha256 = a->Get("sha256");
  if (sha256.empty()) {
    engine::Sha256 hasher;
    std::string buffer(kChunk, '\0');
    while (in.read(buffer.data(), static_cast<std::streamsize>(buffer.size())) || in.gcount() > 0) {
      hasher.Update(std::string_view(buffer.data(), static_cast<size_t>(in.gcount())));
    }
    sha256 = hasher.HexDigest();
    in.clear();
    in.seekg(0);
  }
  const std::string filename = std::filesystem::path(path).filename().string();
  auto stub = v1::QuantizationService::NewStub(context.channel);
  grpc::ClientContext client_context;
  // No deadline on the whole stream: a large file may take longer than
  // --timeout at any speed. The server drops a stalled upload, and the
  // channel's keepalive a vanished peer.
  context.PrepareCall(client_context, /*with_deadline=*/false);
  v1::BlobInfo blob;
  grpc::Status status;
  if (kind == "model") {
    auto writer = stub->UploadModel(&client_context, &blob);
    v1::UploadModelRequest first;
    first.mutable_metadata()->set_expected_sha256(sha256);
    first.mutable_metadata()->set_size_bytes(size);
    first.mutable_metadata()->set_filename(filename);
    if (writer->Write(first)) SendFile<v1::UploadModelRequest>(in, writer.get());
    writer->WritesDone();
    status = writer->Finish();
  } else {
    std::string format_error;
    // The file's extension unless --data_format names it (as for --calib).
    std::string format = a->Has("data_format") ? a->Get("data_format") : a->Get("format");
    if (format.empty()) {
      format = absl::EndsWith(path, ".npy") ? "npy" : absl::EndsWith(path, ".bin") ? "cifar10" : "";
      if (format.empty()) {
        return context.UsageError(absl::StrCat("upload: cannot tell the format of \"", path,
                                               "\" (CIFAR-10 binary .bin or NumPy .npy); name it with "
                                               "--data_format=cifar10|npy"));
      }
    } else if (format != "cifar10" && format != "npy") {
      return context.UsageError("upload: --data_format must be cifar10 or npy");
    }
    auto writer = stub->UploadDataset(&client_context, &blob);
    v1::UploadDatasetRequest first;
    first.mutable_metadata()->set_expected_sha256(sha256);
    first.mutable_metadata()->set_size_bytes(size);
    first.mutable_metadata()->set_filename(filename);
    first.mutable_metadata()->set_format(format == "npy" ? v1::DATASET_FORMAT_NPY
                                                         : v1::DATASET_FORMAT_CIFAR10_BINARY);
    if (writer->Write(first)) SendFile<v1::UploadDatasetRequest>(in, writer.get());
    writer->WritesDone();
    status = writer->Finish();
  }
  if (!status.ok()) return context.RpcFailed("upload", status);
  context.Print(blob, absl::StrCat(blob.blob_id(), " ", blob.size_bytes(),
                                   blob.already_existed() ? " (already stored)" : ""));
  return kExitOk;
}

}  // namespace quantd::cli
