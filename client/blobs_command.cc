// quantctl blobs [BLOB_ID] | blobs delete BLOB_ID: ListBlobs, GetBlob, DeleteBlob.

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/job_format.h"

namespace quantd::cli {
namespace {

std::string BlobText(const v1::BlobInfo& blob) {
  const absl::Time used = absl::FromUnixSeconds(blob.last_used_time().seconds());
  std::string text = absl::StrCat(blob.blob_id(), "  ", blob.size_bytes(), " bytes  last used ",
                                  absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", used, absl::UTCTimeZone()));
  if (blob.active_job_ids_size() > 0) absl::StrAppend(&text, "  used by ", absl::StrJoin(blob.active_job_ids(), ","));
  return text;
}

}  // namespace

int RunBlobs(const CommandContext& context, const std::vector<std::string>& args) {
  std::string error;
  auto a = ParseCommandArgs(args, {"page_token"}, &error);
  const bool deleting = a.has_value() && !a->positional.empty() && a->positional[0] == "delete";
  if (a.has_value()) {
    error = deleting ? PositionalCountError(*a, 2, 2, "delete BLOB_ID") : PositionalCountError(*a, 0, 1, "BLOB_ID");
  }
  if (!error.empty()) {
    return context.UsageError(absl::StrCat("blobs: ", error, "\nusage: blobs [BLOB_ID] | blobs delete BLOB_ID"));
  }
  auto stub = v1::QuantizationService::NewStub(context.channel);
  grpc::ClientContext client_context;
  context.PrepareCall(client_context);
  if (deleting) {
    v1::DeleteBlobRequest request;
    request.set_id(a->positional[1]);
    v1::DeleteBlobResponse response;
    grpc::Status status = stub->DeleteBlob(&client_context, request, &response);
    if (!status.ok()) return context.RpcFailed("delete blob", status);
    context.Print(response, absl::StrCat("deleted ", a->positional[1]));
    return kExitOk;
  }
  if (a->positional.size() == 1) {
    v1::GetBlobRequest request;
    request.set_id(a->positional[0]);
    v1::BlobInfo blob;
    grpc::Status status = stub->GetBlob(&client_context, request, &blob);
    if (!status.ok()) return context.RpcFailed("get blob", status);
    context.Print(blob, BlobText(blob));
    return kExitOk;
  }
  v1::ListBlobsRequest request;
  request.set_page_token(a->Get("page_token"));
  v1::ListBlobsResponse response;
  grpc::Status status = stub->ListBlobs(&client_context, request, &response);
  if (!status.ok()) return context.RpcFailed("list blobs", status);
  std::string text;
  for (const v1::BlobInfo& blob : response.blobs()) absl::StrAppend(&text, BlobText(blob), "\n");
  if (!response.next_page_token().empty()) absl::StrAppend(&text, "next page: --page_token=", response.next_page_token(), "\n");
  if (!text.empty()) text.pop_back();
  if (text.empty()) text = "no blobs";
  context.Print(response, text);
  return kExitOk;
}

}  // namespace quantd::cli
