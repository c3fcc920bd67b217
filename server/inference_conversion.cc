#include "server/inference_conversion.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "worker/engine/base/status_macros.h"

namespace quantd {
namespace {

constexpr char kInputName[] = "input";
constexpr char kOutputName[] = "output";

// At most 8 dims: a message that echoed a shape of thousands would outgrow
// gRPC's trailer limits and reach the client as another error.
std::string ShapeText(const google::protobuf::RepeatedField<int64_t>& shape) {
  constexpr int kShown = 8;
  if (shape.size() <= kShown) return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
  return absl::StrCat("[", absl::StrJoin(shape.begin(), shape.begin() + kShown, ", "), ", ... (", shape.size(),
                      " dims)]");
}

void AppendBytesElement(const std::string& value, std::string* out) {
  const uint32_t size = static_cast<uint32_t>(value.size());
  char prefix[4];
  std::memcpy(prefix, &size, 4);  // little-endian on x86-64, as the protocol wants
  out->append(prefix, 4);
  out->append(value);
}

}  // namespace

absl::StatusOr<absl::Duration> InferQueueTimeout(const inference::ModelInferRequest& request) {
  const auto it = request.parameters().find("timeout");
  if (it == request.parameters().end()) return absl::InfiniteDuration();
  const inference::InferParameter& timeout = it->second;
  int64_t microseconds = -1;
  if (timeout.parameter_choice_case() == inference::InferParameter::kInt64Param) {
    microseconds = timeout.int64_param();
  } else if (timeout.parameter_choice_case() == inference::InferParameter::kUint64Param &&
             timeout.uint64_param() <= static_cast<uint64_t>(INT64_MAX)) {
    microseconds = static_cast<int64_t>(timeout.uint64_param());
  }
  if (microseconds < 0) {
    return absl::InvalidArgumentError(
        "parameters[timeout]: microseconds the request may wait for its pass, an integer >= 0 (0: no limit)");
  }
  return microseconds == 0 ? absl::InfiniteDuration() : absl::Microseconds(microseconds);
}

const char* InputTensorName() { return kInputName; }
const char* OutputTensorName() { return kOutputName; }

absl::StatusOr<int64_t> ParseModelVersion(const std::string& version, const std::string& field) {
  if (version.empty()) return 0;
  int64_t v = 0;
  // Digits only, no leading zero: "01", "+1" and " 1" are not version 1.
  const bool canonical = version.size() <= 19 && version[0] >= '1' && version[0] <= '9' &&
                         std::all_of(version.begin(), version.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (!canonical || !absl::SimpleAtoi(version, &v) || v < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": \"", version.substr(0, 40), "\" is not a version (1, 2, ...; empty = newest)"));
  }
  return v;
}

namespace {

// Typed contents in a field other than the datatype's own (Triton refuses
// them too): ignored, they were a silent mistake.
absl::Status CheckOnlyTheDatatypesField(const inference::InferTensorContents& contents, bool fp32,
                                        const std::string& datatype) {
  const std::pair<const char*, int> fields[] = {
      {"bool_contents", contents.bool_contents_size()},     {"int_contents", contents.int_contents_size()},
      {"int64_contents", contents.int64_contents_size()},   {"uint_contents", fp32 ? contents.uint_contents_size() : 0},
      {"uint64_contents", contents.uint64_contents_size()}, {"fp32_contents", fp32 ? 0 : contents.fp32_contents_size()},
      {"fp64_contents", contents.fp64_contents_size()},     {"bytes_contents", contents.bytes_contents_size()}};
  for (const auto& [name, size] : fields) {
    if (size > 0) {
      return absl::InvalidArgumentError(absl::StrCat("inputs[0].contents.", name, ": ", size, " values, but a ",
                                                     datatype, " input takes only ",
                                                     fp32 ? "fp32_contents" : "uint_contents"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DecodedBatch> DecodeInferInput(const inference::ModelInferRequest& request,
                                              const worker::ServedModelInfo& model, int64_t max_batch_size) {
  // Echoed in the response: an id, not a payload.
  constexpr size_t kMaxIdBytes = 1024;
  if (request.id().size() > kMaxIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("id: ", request.id().size(), " bytes, more than ", kMaxIdBytes));
  }
  if (request.inputs_size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("inputs: ", model.name, " takes exactly 1 input tensor, got ", request.inputs_size()));
  }
  const auto& input = request.inputs(0);
  if (input.name() != kInputName) {
    return absl::InvalidArgumentError(absl::StrCat("inputs[0].name: \"", input.name().substr(0, 40),
                                                   "\" is not an input of ", model.name, " (it has \"", kInputName,
                                                   "\")"));
  }
  const bool fp32 = input.datatype() == "FP32";
  if (!fp32 && input.datatype() != "UINT8") {
    return absl::InvalidArgumentError(absl::StrCat("inputs[0].datatype: \"", input.datatype().substr(0, 20),
                                                   "\" is not supported (FP32 or UINT8)"));
  }
  const std::vector<int64_t>& sample = model.input_shape;
  const auto& shape = input.shape();
  const std::string expected = absl::StrCat("[N, ", absl::StrJoin(sample, ", "), "]");
  if (shape.size() != 1 + static_cast<int>(sample.size()) ||
      !std::equal(sample.begin(), sample.end(), shape.begin() + 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("inputs[0].shape: ", ShapeText(shape), " does not match ", model.name, "'s input ", expected));
  }
  const int64_t batch = shape[0];
  if (batch < 1) return absl::InvalidArgumentError(absl::StrCat("inputs[0].shape: batch size ", batch, " < 1"));
  if (batch > max_batch_size) {
    return absl::InvalidArgumentError(absl::StrCat("inputs[0].shape: batch size ", batch,
                                                   " is above the server's --max_batch_size ", max_batch_size));
  }
  const int64_t count = batch * model.sample_values();
  // The data must be all there before the buffer is sized from the shape: a
  // small request claiming a large batch allocates nothing.
  const bool raw_data = request.raw_input_contents_size() > 0;
  if (raw_data) {
    if (input.has_contents()) {
      return absl::InvalidArgumentError("inputs[0].contents: not allowed together with raw_input_contents");
    }
    if (request.raw_input_contents_size() != 1) {
      return absl::InvalidArgumentError(absl::StrCat("raw_input_contents: 1 entry per input, got ",
                                                     request.raw_input_contents_size()));
    }
    const int64_t want = count * (fp32 ? 4 : 1);
    if (static_cast<int64_t>(request.raw_input_contents(0).size()) != want) {
      return absl::InvalidArgumentError(absl::StrCat("raw_input_contents[0]: ", request.raw_input_contents(0).size(),
                                                     " bytes, but ", input.datatype(), " ", ShapeText(shape), " is ",
                                                     want));
    }
  } else if (absl::Status other = CheckOnlyTheDatatypesField(input.contents(), fp32, input.datatype()); !other.ok()) {
    return other;
  } else if (fp32 && input.contents().fp32_contents_size() != count) {
    return absl::InvalidArgumentError(absl::StrCat("inputs[0].contents.fp32_contents: ",
                                                   input.contents().fp32_contents_size(), " values, but ",
                                                   ShapeText(shape), " holds ", count));
  } else if (!fp32 && input.contents().uint_contents_size() != count) {
    return absl::InvalidArgumentError(absl::StrCat("inputs[0].contents.uint_contents: ",
                                                   input.contents().uint_contents_size(), " values, but ",
                                                   ShapeText(shape), " holds ", count));
  }
  DecodedBatch decoded;
  decoded.batch = batch;
  decoded.pixels.resize(static_cast<size_t>(count));
  if (raw_data) {
    const std::string& raw = request.raw_input_contents(0);
    if (fp32) {
      std::memcpy(decoded.pixels.data(), raw.data(), raw.size());
    } else {
      for (int64_t i = 0; i < count; ++i) decoded.pixels[i] = static_cast<uint8_t>(raw[i]);
    }
  } else if (fp32) {
    const auto& values = input.contents().fp32_contents();
    std::copy(values.begin(), values.end(), decoded.pixels.begin());
  } else {
    const auto& values = input.contents().uint_contents();
    for (int64_t i = 0; i < count; ++i) {
      if (values[i] > 255) {
        return absl::InvalidArgumentError(
            absl::StrCat("inputs[0].contents.uint_contents[", i, "]: ", values[i], " is not a UINT8"));
      }
      decoded.pixels[i] = static_cast<float>(values[i]);
    }
  }
  // An int8 model quantizes its input as LibTorch does, whose float-to-int
  // conversion overflows for values near 1e19 times the input's scale: such
  // an image read as all zero (black), with no error. No image has values
  // anywhere near the bound.
  constexpr float kInt8InputBound = 1e12f;
  for (size_t i = 0; i < decoded.pixels.size(); ++i) {
    if (!std::isfinite(decoded.pixels[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("inputs[0]: value ", i, " is ", decoded.pixels[i], " (NaN and infinite values are refused)"));
    }
    if (!model.fp32 && std::fabs(decoded.pixels[i]) > kInt8InputBound) {
      return absl::InvalidArgumentError(absl::StrCat("inputs[0]: value ", i, " is ", decoded.pixels[i],
                                                     " (an int8 model takes values within +-1e12: beyond, its input "
                                                     "quantization overflows)"));
    }
  }
  return decoded;
}

absl::StatusOr<int64_t> CheckInferOutputs(const inference::ModelInferRequest& request,
                                          const worker::ServedModelInfo& model) {
  int64_t top_k = 0;
  for (int i = 0; i < request.outputs_size(); ++i) {
    const auto& wanted = request.outputs(i);
    if (wanted.name() != kOutputName) {
      return absl::InvalidArgumentError(absl::StrCat("outputs[", i, "].name: \"", wanted.name().substr(0, 40),
                                                     "\" is not an output of ", model.name, " (it has \"",
                                                     kOutputName, "\")"));
    }
    if (i > 0) {  // the model has one output: any second request names it again
      return absl::InvalidArgumentError(
          absl::StrCat("outputs[", i, "].name: \"", kOutputName, "\" requested twice"));
    }
    if (auto it = wanted.parameters().find("classification"); it != wanted.parameters().end()) {
      // Either integer type (Triton's clients send both); k past the classes
      // is cut to them.
      const inference::InferParameter& k = it->second;
      const bool valid = (k.parameter_choice_case() == inference::InferParameter::kInt64Param && k.int64_param() >= 1) ||
                         (k.parameter_choice_case() == inference::InferParameter::kUint64Param && k.uint64_param() >= 1);
      if (!valid) {
        return absl::InvalidArgumentError(
            absl::StrCat("outputs[", i, "].parameters[classification]: an integer k >= 1"));
      }
      // Known before the pass when the model's output shape is ([N] +) [classes].
      if (!model.output_shape.empty() && model.output_shape.size() != 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("outputs[", i, "].parameters[classification]: needs [N, classes] scores; ", model.name,
                         " returns [N, ", absl::StrJoin(model.output_shape, ", "), "]"));
      }
      top_k = k.parameter_choice_case() == inference::InferParameter::kInt64Param
                  ? k.int64_param()
                  : static_cast<int64_t>(std::min<uint64_t>(k.uint64_param(), INT64_MAX));
    }
  }
  return top_k;
}

absl::Status EncodeInferOutputs(const inference::ModelInferRequest& request, const worker::ServedModelInfo& model,
                                const engine::ServingOutput& output, inference::ModelInferResponse* response) {
  if (output.shape.size() < 2) return absl::InternalError(absl::StrCat(model.name, " returned no [N, ...] output"));
  const int64_t batch = output.shape[0];
  const int64_t classes = static_cast<int64_t>(output.values.size()) / std::max<int64_t>(batch, 1);
  QUANTD_ASSIGN_OR_RETURN(int64_t top_k, CheckInferOutputs(request, model));
  top_k = std::min(top_k, classes);
  auto* tensor = response->add_outputs();
  tensor->set_name(kOutputName);
  if (top_k == 0) {
    tensor->set_datatype("FP32");
    for (int64_t d : output.shape) tensor->add_shape(d);
    response->add_raw_output_contents()->assign(reinterpret_cast<const char*>(output.values.data()),
                                               output.values.size() * sizeof(float));
    return absl::OkStatus();
  }
  // Triton's classification extension: per sample, the k best as
  // "score:index[:label]", best first.
  if (output.shape.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("outputs: classification needs [N, classes] scores; ", model.name,
                                                   " returns [", absl::StrJoin(output.shape, ", "), "]"));
  }
  tensor->set_datatype("BYTES");
  tensor->add_shape(batch);
  tensor->add_shape(top_k);
  std::string* raw = response->add_raw_output_contents();
  std::vector<int64_t> order(static_cast<size_t>(classes));
  for (int64_t n = 0; n < batch; ++n) {
    const float* scores = output.values.data() + n * classes;
    std::iota(order.begin(), order.end(), 0);
    // NaN (a model that overflowed) ranks last: a plain > is no ordering with it.
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return std::isnan(scores[b]) ? !std::isnan(scores[a]) : scores[a] > scores[b];
    });
    for (int64_t k = 0; k < top_k; ++k) {
      const int64_t index = order[k];
      std::string text = absl::StrFormat("%f:%d", scores[index], index);
      if (index < static_cast<int64_t>(model.labels.size())) absl::StrAppend(&text, ":", model.labels[index]);
      AppendBytesElement(text, raw);
    }
  }
  return absl::OkStatus();
}

absl::Status CheckOutputsFitJson(const inference::ModelInferResponse& response) {
  for (int i = 0; i < response.outputs_size() && i < response.raw_output_contents_size(); ++i) {
    if (response.outputs(i).datatype() != "FP32") continue;
    const std::string& raw = response.raw_output_contents(i);
    for (size_t j = 0; j < raw.size() / sizeof(float); ++j) {
      float value = 0;
      std::memcpy(&value, raw.data() + j * sizeof(float), sizeof(float));
      // An FP32 model whose input overflowed it.
      if (!std::isfinite(value)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "outputs[", i, "].data[", j, "]: the model returned ", value,
            ", which JSON cannot carry; ask for binary data (parameters.binary_data_output) to get the raw FP32"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace quantd
