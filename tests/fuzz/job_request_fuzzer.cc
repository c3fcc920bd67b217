// A QuantizeJob request as it arrives on the wire (protobuf bytes) through
// the server's validation and conversion into a job: a status for anything,
// and a job that passes converts back to its proto and JSON without a crash.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>

#include "absl/time/clock.h"
#include "quantd/v1/quantd.pb.h"
#include "server/job_conversion.h"
#include "tests/fuzz/fuzz_file.h"
#include "worker/local_blob_store.h"
#include "worker/job_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A data dir with a model and a CIFAR-10 file of one record, so that
  // requests naming them get past the path checks.
  static const std::string* data_dir = [] {
    auto* dir = new std::string(quantd::fuzz::ScratchPath("data"));
    std::filesystem::create_directories(*dir + "/blobs");
    std::ofstream(*dir + "/model.pt") << "PK";
    std::ofstream(*dir + "/calib.bin", std::ios::binary) << std::string(1 + 3 * 32 * 32, '\x01');
    return dir;
  }();
  static const quantd::worker::BlobStore* blobs =
      quantd::worker::LocalBlobStore::Open(*data_dir + "/blobs", 1 << 20)->release();
  static const quantd::ReferenceResolver* resolver = new quantd::ReferenceResolver(*data_dir, blobs);

  quantd::v1::QuantizeJobRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto job = quantd::JobFromRequest(request, *resolver);
  if (!job.ok()) return 0;
  job->create_time = absl::Now();  // as WorkerPool::Submit sets it
  quantd::v1::Job proto;
  quantd::ToProto(*job, &proto);
  auto decoded = quantd::worker::DecodeJobSpec(quantd::worker::EncodeJobSpec(job->spec));
  if (!decoded.ok()) std::abort();  // what the server stores it must read back
  return 0;
}
