#ifndef QUANTD_SERVER_INFERENCE_CONVERSION_H_
#define QUANTD_SERVER_INFERENCE_CONVERSION_H_

// Open Inference Protocol messages <-> what a loaded model runs: checks a
// ModelInferRequest's tensor against the model (datatype, shape, byte
// counts; errors name the field), decodes it to float pixels, and encodes
// outputs (raw FP32, or Triton's classification strings).

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "inference/grpc_predict_v2.pb.h"
#include "worker/engine/servable_model.h"
#include "worker/model_repository.h"

namespace quantd {

// "" = newest (0); else a positive decimal. INVALID_ARGUMENT naming `field`.
absl::StatusOr<int64_t> ParseModelVersion(const std::string& version, const std::string& field);

struct DecodedBatch {
  int64_t batch = 0;
  std::vector<float> pixels;  // batch samples of the model's input shape
};

// The request's one input ("input") as float pixels: FP32 or UINT8, shape [N, C, H, W]
// of the model's C, H, W with 1 <= N <= max_batch_size, in
// raw_input_contents or typed contents.
absl::StatusOr<DecodedBatch> DecodeInferInput(const inference::ModelInferRequest& request,
                                              const worker::ServedModelInfo& model, int64_t max_batch_size);

// Triton's request parameter "timeout": how long, in microseconds, the
// request may wait in the queue for its pass (an int64 or uint64 >= 0).
// Absent or 0: no limit (InfiniteDuration). INVALID_ARGUMENT naming
// parameters[timeout] otherwise.
absl::StatusOr<absl::Duration> InferQueueTimeout(const inference::ModelInferRequest& request);

// The model's input and output tensor names ("input", "output").
const char* InputTensorName();
const char* OutputTensorName();

// Checks the request's requested outputs against the model before its pass:
// names, and a "classification" parameter k (an int64 >= 1, for a model
// whose output is [N, classes]). Returns k, or 0 for raw scores.
absl::StatusOr<int64_t> CheckInferOutputs(const inference::ModelInferRequest& request,
                                          const worker::ServedModelInfo& model);

// FAILED_PRECONDITION naming the first non-finite FP32 output value: JSON
// has no number for it (REST without binary outputs).
absl::Status CheckOutputsFitJson(const inference::ModelInferResponse& response);

// Fills the response's outputs from `output`: the scores as FP32 in
// raw_output_contents, or per requested output with a "classification"
// parameter k, the top k per sample as BYTES "score:index[:label]".
absl::Status EncodeInferOutputs(const inference::ModelInferRequest& request, const worker::ServedModelInfo& model,
                                const engine::ServingOutput& output, inference::ModelInferResponse* response);

}  // namespace quantd

#endif  // QUANTD_SERVER_INFERENCE_CONVERSION_H_
