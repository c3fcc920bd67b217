// quantctl download ARTIFACT_ID -o FILE: streams the artifact, checks its
// sha256 and size against the header and trailer, then renames it into place.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <ostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/base/sha256.h"
#include "worker/engine/base/sync_directory.h"
#include "client/job_format.h"

namespace quantd::cli {

int RunDownload(const CommandContext& context, const std::vector<std::string>& args) {
  std::string error;
  auto a = ParseCommandArgs(args, {"o", "output", "chunk_size"}, &error);
  // --output as in quantd-quantize; -o for short.
  if (a.has_value() && a->Has("o") && a->Has("output")) error = "-o and --output name the same file: give one";
  if (a.has_value() && error.empty()) error = PositionalCountError(*a, 1, 1, "ARTIFACT_ID");
  if (a.has_value() && error.empty() && !a->Has("o") && !a->Has("output")) {
    error = "--output=FILE (or -o FILE) required";
  }
  // Empty (an unset variable), it wrote "./.part" and failed at the very end.
  if (a.has_value() && error.empty() && (a->Has("o") ? a->Get("o") : a->Get("output")).empty()) {
    error = absl::StrCat(a->Has("o") ? "-o" : "--output", " is empty (an unset variable?)");
  }
  if (!error.empty()) {
    return context.UsageError(absl::StrCat("download: ", error,
                                           "\nusage: download ARTIFACT_ID (--output=FILE | -o FILE) "
                                           "[--chunk_size=BYTES]"));
  }
  uint32_t chunk_size = 0;  // the server's default
  if (a->Has("chunk_size") && (!absl::SimpleAtoi(a->Get("chunk_size"), &chunk_size) || chunk_size == 0)) {
    return context.UsageError(absl::StrCat("download: --chunk_size: \"", a->Get("chunk_size"),
                                           "\" is not a positive number of bytes (the server caps it at 4 MiB - 64 KiB)"));
  }
  const std::string target = a->Has("output") ? a->Get("output") : a->Get("o");
  // A name of its own: two downloads to one file once shared "FILE.part",
  // one truncating what the other had written.
  std::string tmp = target + ".part.XXXXXX";
  const int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) {
    *context.err << "quantctl: download: cannot write " << target << ".part.*: " << std::strerror(errno) << "\n";
    return kExitFailure;
  }
  bool written = true;  // every byte received is in the file
  auto write_all = [&](const std::string& bytes) {
    for (size_t done = 0; written && done < bytes.size();) {
      const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) written = false;
      else done += static_cast<size_t>(n);
    }
  };

  auto stub = v1::QuantizationService::NewStub(context.channel);
  grpc::ClientContext client_context;
  // No deadline on the whole stream: a large file may take longer than
  // --timeout at any speed. The server drops a stalled upload, and the
  // channel's keepalive a vanished peer.
  context.PrepareCall(client_context, /*with_deadline=*/false);
  v1::DownloadArtifactRequest request;
  request.set_id(a->positional[0]);
  request.set_chunk_size(chunk_size);
  auto reader = stub->DownloadArtifact(&client_context, request);
  v1::DownloadArtifactResponse message;
  v1::DownloadHeader header;
  v1::DownloadTrailer trailer;
  bool have_trailer = false;
  engine::Sha256 hasher;
  uint64_t received = 0;
  while (reader->Read(&message)) {
    if (message.has_header()) header = message.header();
    if (message.has_trailer()) {
      trailer = message.trailer();
      have_trailer = true;
    }
    if (message.payload_case() == v1::DownloadArtifactResponse::kChunkData) {
      write_all(message.chunk_data());
      hasher.Update(message.chunk_data());
      received += message.chunk_data().size();
    }
  }
  grpc::Status status = reader->Finish();
  // On disk before it is renamed into place and said verified: after a power
  // loss the file would otherwise be there, empty or cut short.
  if (written && ::fsync(fd) != 0) written = false;
  // Not mkostemp's 0600: the mode a file written by hand gets (umask applies).
  const mode_t mask = ::umask(0);
  ::umask(mask);
  (void)::fchmod(fd, 0666 & ~mask);
  ::close(fd);
  if (!status.ok()) {
    std::remove(tmp.c_str());
    return context.RpcFailed("download", status);
  }
  const std::string sha256 = hasher.HexDigest();
  if (!written) {
    // The bytes came; the disk did not take them (full, or a write error).
    std::remove(tmp.c_str());
    *context.err << "quantctl: download: cannot write " << tmp << " (disk full?); nothing kept\n";
    return kExitFailure;
  }
  if (!have_trailer || sha256 != header.sha256() || sha256 != trailer.sha256() ||
      received != header.size_bytes()) {
    std::remove(tmp.c_str());
    *context.err << "quantctl: download of " << a->positional[0] << " is corrupt: got " << received
                 << " bytes with sha256 " << sha256 << ", expected " << header.size_bytes()
                 << " bytes with sha256 " << header.sha256() << "\n";
    return kExitFailure;
  }
  std::error_code rename_error;
  std::filesystem::rename(tmp, target, rename_error);
  if (rename_error) {
    std::remove(tmp.c_str());
    *context.err << "quantctl: cannot rename " << tmp << " to " << target << ": " << rename_error.message() << "\n";
    return kExitFailure;
  }
  const std::string folder = std::filesystem::path(target).parent_path().string();
  if (absl::Status synced = SyncDirectory(folder.empty() ? "." : folder); !synced.ok()) {
    *context.err << "quantctl: download: " << synced.message() << " (the file is in place, not yet durable)\n";
  }
  context.Print(header, absl::StrCat(sha256, "  ", received, "  ", target));
  return kExitOk;
}

}  // namespace quantd::cli
