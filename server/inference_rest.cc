#include "server/inference_rest.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "server/audit_log.h"

namespace quantd {
namespace {

using Json = nlohmann::json;

constexpr char kBinaryHeader[] = "Inference-Header-Content-Length";

// Counts a JSON text's values, keys, arrays and objects without building it,
// and stops the parse past `max` (sax_parse then returns false). A syntax
// error also stops it: the parse that follows reports it.
class ElementCounter {
 public:
  explicit ElementCounter(int64_t max) : max_(max) {}
  bool too_many() const { return count_ > max_; }

  bool null() { return Add(); }
  bool boolean(bool) { return Add(); }
  bool number_integer(Json::number_integer_t) { return Add(); }
  bool number_unsigned(Json::number_unsigned_t) { return Add(); }
  bool number_float(Json::number_float_t, const Json::string_t&) { return Add(); }
  bool string(Json::string_t&) { return Add(); }
  bool binary(Json::binary_t&) { return Add(); }
  bool start_object(std::size_t) { return true; }
  bool key(Json::string_t&) { return Add(); }  // a key counts: a dropped value still leaves it
  bool end_object() { return Add(); }
  bool start_array(std::size_t) { return true; }
  bool end_array() { return Add(); }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) { return false; }

 private:
  bool Add() { return ++count_ <= max_; }
  const int64_t max_;
  int64_t count_ = 0;
};

HttpReply JsonReply(int status, const Json& body) {
  HttpReply reply;
  reply.status = status;
  // Invalid UTF-8 (a model name echoed from a request) is replaced, not thrown.
  reply.body = body.dump(-1, ' ', false, Json::error_handler_t::replace);
  return reply;
}

HttpReply ErrorReply(const absl::Status& status) {
  HttpReply reply = JsonReply(HttpStatusForCode(status.code()), Json{{"error", std::string(status.message())}});
  if (status.code() == absl::StatusCode::kUnauthenticated) reply.headers.emplace_back("WWW-Authenticate", "Bearer");
  // A full queue drains within a pass or two: worth a retry soon, as the
  // 503 for a full connection queue says too.
  if (status.code() == absl::StatusCode::kResourceExhausted) reply.headers.emplace_back("Retry-After", "1");
  return reply;
}

// The tensor checks run on the protocol's gRPC message, where a REST
// input's "data" became contents.uint_contents or fp32_contents: errors
// about it name the field the REST client sent.
absl::Status WithRestFieldNames(absl::Status status) {
  // The binary tensor data extension's bytes for the (one) input.
  constexpr absl::string_view kRaw = "raw_input_contents[0]";
  if (absl::StartsWith(status.message(), kRaw)) {
    return absl::Status(status.code(), absl::StrCat("inputs[0] binary data (parameters.binary_data_size)",
                                                    status.message().substr(kRaw.size())));
  }
  // The message's first field as REST names it: tensor data, the version in
  // the path, parameters as JSON object keys.
  static constexpr std::pair<absl::string_view, absl::string_view> kRenamed[] = {
      {"inputs[0].contents.uint_contents", "inputs[0].data"},
      {"inputs[0].contents.fp32_contents", "inputs[0].data"},
      {"model_version", "version"},
      {"parameters[timeout]", "parameters.timeout"},
  };
  for (const auto& [grpc_field, rest_field] : kRenamed) {
    if (absl::StartsWith(status.message(), grpc_field)) {
      return absl::Status(status.code(), absl::StrCat(rest_field, status.message().substr(grpc_field.size())));
    }
  }
  // outputs[i].parameters[classification]
  if (const size_t at = status.message().find(".parameters[classification]");
      absl::StartsWith(status.message(), "outputs[") && at != absl::string_view::npos) {
    return absl::Status(status.code(), absl::StrCat(status.message().substr(0, at), ".parameters.classification",
                                                    status.message().substr(at + 27)));
  }
  return status;
}

// 405 with the method the resource takes.
HttpReply MethodNotAllowed(const std::string& what, const std::string& allowed) {
  HttpReply reply = JsonReply(405, Json{{"error", absl::StrCat(what, ": use ", allowed)}});
  reply.headers.emplace_back("Allow", allowed);
  return reply;
}

Json DurationJson(const inference::StatisticDuration& d) { return Json{{"count", d.count()}, {"ns", d.ns()}}; }

// /v2/models/{m}[/versions/{v}][/{action}] split into its parts.
struct ModelPath {
  std::string name;
  std::string version;
  std::string action;  // "", "ready", "infer", "stats"
};

absl::StatusOr<ModelPath> ParseModelPath(const std::vector<std::string>& parts) {
  // parts: "", "v2", "models", m, ...
  ModelPath path;
  path.name = parts[3];
  size_t next = 4;
  if (parts.size() > next + 1 && parts[next] == "versions") {
    path.version = parts[next + 1];
    if (path.version.empty()) return absl::InvalidArgumentError("version: empty (leave out /versions/ for the newest)");
    next += 2;
  }
  if (parts.size() == next + 1) {
    path.action = parts[next];
  } else if (parts.size() != next) {
    return absl::NotFoundError("no such endpoint");
  }
  if (path.name.empty()) return absl::InvalidArgumentError("model name: empty");
  if (!path.action.empty() && path.action != "ready" && path.action != "infer" && path.action != "stats") {
    return absl::NotFoundError(absl::StrCat("no such endpoint: \"", path.action.substr(0, 40), "\""));
  }
  return path;
}

// The one method each /v2 resource takes: POST for inference and the
// repository index, GET for the rest ("" for a path that is none of them).
// A model may be called "infer": only the action is POST.
std::string AllowedMethod(const std::vector<std::string>& parts) {
  // parts: "", "v2", ...
  if (parts.size() >= 3 && parts[2] == "repository") return parts.size() == 4 && parts[3] == "index" ? "POST" : "";
  if (parts.size() >= 4 && parts[2] == "models") {
    absl::StatusOr<ModelPath> path = ParseModelPath(parts);
    if (!path.ok()) return "";  // the handler names what is wrong with it
    return path->action == "infer" ? "POST" : "GET";
  }
  return "GET";
}

// Deepest nesting of arrays and objects a request body may have: a body of
// brackets alone would otherwise cost the parser tens of bytes per byte.
constexpr int kMaxJsonNesting = 32;

// Whether the call is an inference request (counted in
// quantd_inference_requests_total whatever its outcome, as gRPC's ModelInfer
// is): also one whose model name or version is empty, which gRPC counts
// under model="".
bool IsInferCall(absl::string_view method, absl::string_view path) {
  if (method != "POST") return false;
  const std::vector<std::string> parts = absl::StrSplit(path, '/');
  if (parts.size() < 5 || parts[1] != "v2" || parts[2] != "models" || parts.back() != "infer") return false;
  absl::StatusOr<ModelPath> model = ParseModelPath(parts);
  return model.ok() ? model->action == "infer" : model.status().code() == absl::StatusCode::kInvalidArgument;
}

// Longest JSON string a request body may hold: its strings are ids, names,
// datatypes and parameters (inputs are numbers), and the parser copies each
// string at least twice before any field's own limit is checked.
constexpr size_t kMaxJsonStringBytes = 64 * 1024;

// Refuses a JSON text nested deeper than kMaxJsonNesting (brackets inside
// strings do not count) or holding a string longer than kMaxJsonStringBytes,
// before it is parsed.
absl::Status CheckJsonBeforeParsing(absl::string_view text, absl::string_view field) {
  int depth = 0;
  bool in_string = false;
  size_t string_start = 0;
  auto too_long = [&](size_t end) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": a JSON string of ", end - string_start,
                                                   " bytes at byte ", string_start, "; strings take at most ",
                                                   kMaxJsonStringBytes));
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character
      } else if (c == '"') {
        in_string = false;
        if (i - string_start > kMaxJsonStringBytes) return too_long(i);
      }
    } else if (c == '"') {
      in_string = true;
      string_start = i + 1;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonNesting) {
        return absl::InvalidArgumentError(absl::StrCat(field, ": JSON nested deeper than ", kMaxJsonNesting));
      }
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  if (in_string && text.size() - string_start > kMaxJsonStringBytes) return too_long(text.size());
  return absl::OkStatus();
}

// JSON elements an infer request may hold beyond its input data (shapes,
// parameters, ...).
constexpr int64_t kJsonElementsBesideData = 1024;

// Row-major values of a (possibly nested) JSON array.
absl::Status Flatten(const Json& data, const std::string& field, std::vector<const Json*>* out, int depth = 0) {
  if (!data.is_array()) {
    out->push_back(&data);
    return absl::OkStatus();
  }
  if (depth > 16) return absl::InvalidArgumentError(absl::StrCat(field, ": nested deeper than 16"));
  for (const Json& item : data) {
    absl::Status status = Flatten(item, field, out, depth + 1);
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status ToParameter(const Json& value, const std::string& field, inference::InferParameter* parameter) {
  if (value.is_boolean()) {
    parameter->set_bool_param(value.get<bool>());
  } else if (value.is_number_unsigned()) {
    // Above INT64_MAX it would wrap to a negative int64.
    const uint64_t number = value.get<uint64_t>();
    if (number > static_cast<uint64_t>(INT64_MAX)) {
      parameter->set_uint64_param(number);
    } else {
      parameter->set_int64_param(static_cast<int64_t>(number));
    }
  } else if (value.is_number_integer()) {
    parameter->set_int64_param(value.get<int64_t>());
  } else if (value.is_number()) {
    parameter->set_double_param(value.get<double>());
  } else if (value.is_string()) {
    parameter->set_string_param(value.get<std::string>());
  } else {
    return absl::InvalidArgumentError(absl::StrCat(field, ": a boolean, number or string"));
  }
  return absl::OkStatus();
}

Json FromParameter(const inference::InferParameter& parameter) {
  switch (parameter.parameter_choice_case()) {
    case inference::InferParameter::kBoolParam:
      return parameter.bool_param();
    case inference::InferParameter::kInt64Param:
      return parameter.int64_param();
    case inference::InferParameter::kStringParam:
      return parameter.string_param();
    case inference::InferParameter::kDoubleParam:
      return parameter.double_param();
    case inference::InferParameter::kUint64Param:
      return parameter.uint64_param();
    default:
      return nullptr;
  }
}

// The JSON (and binary) body of an infer call as the gRPC message. Sets
// `binary_outputs` when the caller wants outputs as binary data.
// `max_elements`: the most JSON elements (values, arrays and objects) the
// body may hold; past it they are dropped while parsing and the call fails,
// so a JSON body never costs more memory than a full batch does.
absl::Status ToInferRequest(const HttpCall& call, const ModelPath& path, int64_t max_elements,
                            inference::ModelInferRequest* request, bool* binary_outputs) {
  size_t header_size = call.body.size();
  if (!call.inference_header_length.empty()) {
    uint64_t size = 0;
    if (!absl::SimpleAtoi(call.inference_header_length, &size) || size == 0 || size > call.body.size()) {
      return absl::InvalidArgumentError(absl::StrCat(kBinaryHeader, ": \"", call.inference_header_length.substr(0, 20),
                                                     "\" is not a length within the body's ", call.body.size(),
                                                     " bytes (the JSON header's, at least 1)"));
    }
    header_size = static_cast<size_t>(size);
  }
  const absl::string_view header(call.body.data(), header_size);
  if (absl::Status nesting = CheckJsonBeforeParsing(header, "body"); !nesting.ok()) return nesting;
  // Counted before a document is built, stopping at the first element past
  // the limit, not at the end of the body. (nlohmann's parser callback, used
  // for this before, scans the enclosing array at each object's end: 100 000
  // objects in one array took 2 s of CPU.)
  ElementCounter counter(max_elements);
  const auto begin = call.body.begin();
  const auto end = call.body.begin() + static_cast<std::ptrdiff_t>(header_size);
  if (!Json::sax_parse(begin, end, &counter) && counter.too_many()) {
    return absl::InvalidArgumentError(absl::StrCat("inputs: more than ", max_elements,
                                                   " values, keys and arrays in the JSON body, more than a batch of "
                                                   "--max_batch_size samples of this model takes"));
  }
  Json body;
  try {
    body = Json::parse(begin, end);
  } catch (const Json::exception& e) {
    // nlohmann's message has the position (and "number overflow" for 1e309).
    return absl::InvalidArgumentError(absl::StrCat("body: not valid JSON: ", e.what()));
  }
  if (!body.is_object()) return absl::InvalidArgumentError("body: not a JSON object (the inference request)");
  request->set_model_name(path.name);
  request->set_model_version(path.version);
  if (body.contains("id")) {
    if (!body["id"].is_string()) return absl::InvalidArgumentError("id: a string");
    request->set_id(body["id"].get<std::string>());  // its length is checked with the gRPC form's
  }
  *binary_outputs = false;
  if (body.contains("parameters")) {
    const Json& parameters = body["parameters"];
    if (!parameters.is_object()) return absl::InvalidArgumentError("parameters: an object");
    for (const auto& [key, value] : parameters.items()) {
      if (key == "binary_data_output") {
        if (!value.is_boolean()) return absl::InvalidArgumentError("parameters.binary_data_output: a boolean");
        *binary_outputs = value.get<bool>();
      }
      absl::Status status = ToParameter(value, absl::StrCat("parameters.", key), &(*request->mutable_parameters())[key]);
      if (!status.ok()) return status;
    }
  }
  if (!body.contains("inputs") || !body["inputs"].is_array()) return absl::InvalidArgumentError("inputs: required array");
  size_t binary_offset = header_size;
  for (size_t i = 0; i < body["inputs"].size(); ++i) {
    const Json& in = body["inputs"][i];
    const std::string field = absl::StrCat("inputs[", i, "]");
    if (!in.is_object()) return absl::InvalidArgumentError(absl::StrCat(field, ": an object"));
    auto* tensor = request->add_inputs();
    if (!in.contains("name") || !in["name"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".name: required string"));
    }
    tensor->set_name(in["name"].get<std::string>());
    if (!in.contains("datatype") || !in["datatype"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".datatype: required string"));
    }
    tensor->set_datatype(in["datatype"].get<std::string>());
    if (!in.contains("shape") || !in["shape"].is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".shape: required array"));
    }
    for (size_t j = 0; j < in["shape"].size(); ++j) {
      const Json& d = in["shape"][j];
      if (!d.is_number_integer()) return absl::InvalidArgumentError(absl::StrCat(field, ".shape: integers"));
      if (d.is_number_unsigned() && d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".shape[", j, "]: beyond the int64 range"));
      }
      tensor->add_shape(d.get<int64_t>());
    }
    std::optional<uint64_t> binary_size;
    if (in.contains("parameters")) {
      if (!in["parameters"].is_object()) return absl::InvalidArgumentError(absl::StrCat(field, ".parameters: an object"));
      for (const auto& [key, value] : in["parameters"].items()) {
        if (key == "binary_data_size") {
          if (!value.is_number_unsigned()) {
            return absl::InvalidArgumentError(absl::StrCat(field, ".parameters.binary_data_size: a byte count"));
          }
          binary_size = value.get<uint64_t>();
          continue;
        }
        absl::Status status = ToParameter(value, absl::StrCat(field, ".parameters.", key),
                                          &(*tensor->mutable_parameters())[key]);
        if (!status.ok()) return status;
      }
    }
    if (binary_size.has_value()) {
      if (in.contains("data")) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".data: not allowed with binary_data_size"));
      }
      if (*binary_size > call.body.size() - binary_offset) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".parameters.binary_data_size: ", *binary_size,
                                                       " bytes, but only ", call.body.size() - binary_offset,
                                                       " follow the JSON header"));
      }
      request->add_raw_input_contents()->assign(call.body, binary_offset, static_cast<size_t>(*binary_size));
      binary_offset += static_cast<size_t>(*binary_size);
      continue;
    }
    if (!in.contains("data")) return absl::InvalidArgumentError(absl::StrCat(field, ".data: required"));
    // The datatype decides how the values read: named first, not as a bad value.
    if (tensor->datatype() != "UINT8" && tensor->datatype() != "FP32") {
      return absl::InvalidArgumentError(absl::StrCat(field, ".datatype: \"", tensor->datatype().substr(0, 20),
                                                     "\" is not supported (FP32 or UINT8)"));
    }
    std::vector<const Json*> values;
    absl::Status flattened = Flatten(in["data"], absl::StrCat(field, ".data"), &values);
    if (!flattened.ok()) return flattened;
    auto* contents = tensor->mutable_contents();
    for (size_t k = 0; k < values.size(); ++k) {
      const Json& v = *values[k];
      if (tensor->datatype() == "UINT8") {
        if (!v.is_number_unsigned() || v.get<uint64_t>() > 255) {
          return absl::InvalidArgumentError(absl::StrCat(field, ".data[", k, "]: not a UINT8"));
        }
        contents->add_uint_contents(v.get<uint32_t>());
      } else {
        if (!v.is_number()) return absl::InvalidArgumentError(absl::StrCat(field, ".data[", k, "]: not a number"));
        const double d = v.get<double>();
        if (std::abs(d) > std::numeric_limits<float>::max()) {
          return absl::InvalidArgumentError(absl::StrCat(field, ".data[", k, "]: ", d, " is outside the FP32 range"));
        }
        contents->add_fp32_contents(static_cast<float>(d));
      }
    }
  }
  if (binary_offset != call.body.size()) {
    // Binary data the sizes do not cover: most likely a binary_data_size
    // that is short of its tensor's bytes.
    return absl::InvalidArgumentError(absl::StrCat(
        "body: ", call.body.size() - binary_offset, " bytes after the inputs' binary data: the inputs' "
        "parameters.binary_data_size add up to ", binary_offset - header_size, " of the ",
        call.body.size() - header_size, " bytes that follow the JSON header"));
  }
  if (request->raw_input_contents_size() > 0 && request->raw_input_contents_size() != request->inputs_size()) {
    return absl::InvalidArgumentError("inputs: binary data for some inputs and JSON data for others");
  }
  if (body.contains("outputs")) {
    if (!body["outputs"].is_array()) return absl::InvalidArgumentError("outputs: an array");
    for (size_t i = 0; i < body["outputs"].size(); ++i) {
      const Json& out = body["outputs"][i];
      const std::string field = absl::StrCat("outputs[", i, "]");
      if (!out.is_object() || !out.contains("name") || !out["name"].is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".name: required string"));
      }
      auto* wanted = request->add_outputs();
      wanted->set_name(out["name"].get<std::string>());
      if (!out.contains("parameters")) continue;
      if (!out["parameters"].is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".parameters: an object"));
      }
      for (const auto& [key, value] : out["parameters"].items()) {
        if (key == "binary_data") {
          if (!value.is_boolean()) return absl::InvalidArgumentError(absl::StrCat(field, ".parameters.binary_data: a boolean"));
          // The output's own choice over the request's (the model has one output).
          *binary_outputs = value.get<bool>();
          continue;
        }
        absl::Status status = ToParameter(value, absl::StrCat(field, ".parameters.", key),
                                          &(*wanted->mutable_parameters())[key]);
        if (!status.ok()) return status;
      }
    }
  }
  return absl::OkStatus();
}

// The gRPC response as JSON; binary outputs go after it.
HttpReply FromInferResponse(const inference::ModelInferResponse& response, bool binary_outputs) {
  Json body = {{"model_name", response.model_name()}, {"model_version", response.model_version()}};
  if (!response.id().empty()) body["id"] = response.id();
  Json parameters = Json::object();
  for (const auto& [key, value] : response.parameters()) parameters[key] = FromParameter(value);
  body["parameters"] = parameters;
  Json outputs = Json::array();
  std::string binary;
  for (int i = 0; i < response.outputs_size(); ++i) {
    const auto& tensor = response.outputs(i);
    const std::string& raw = i < response.raw_output_contents_size() ? response.raw_output_contents(i) : "";
    Json out = {{"name", tensor.name()}, {"datatype", tensor.datatype()},
                {"shape", std::vector<int64_t>(tensor.shape().begin(), tensor.shape().end())}};
    if (binary_outputs) {
      out["parameters"] = {{"binary_data_size", raw.size()}};
      binary += raw;
    } else if (tensor.datatype() == "FP32") {
      // Finite: the core refused (and counted) non-finite scores for a JSON
      // answer (CheckOutputsFitJson), which nlohmann would write as null.
      std::vector<float> values(raw.size() / sizeof(float));
      std::memcpy(values.data(), raw.data(), values.size() * sizeof(float));
      out["data"] = values;
    } else {  // BYTES: 4-byte little-endian length, then the bytes
      std::vector<std::string> values;
      for (size_t at = 0; at + 4 <= raw.size();) {
        uint32_t size = 0;
        std::memcpy(&size, raw.data() + at, 4);
        values.emplace_back(raw.substr(at + 4, size));
        at += 4 + size;
      }
      out["data"] = values;
    }
    outputs.push_back(std::move(out));
  }
  body["outputs"] = std::move(outputs);
  HttpReply reply = JsonReply(200, body);
  if (binary_outputs) {
    reply.headers.emplace_back(kBinaryHeader, std::to_string(reply.body.size()));
    reply.content_type = "application/octet-stream";
    reply.body += binary;
  }
  return reply;
}

Json TensorMetadata(const inference::ModelMetadataResponse::TensorMetadata& tensor) {
  return {{"name", tensor.name()},
          {"datatype", tensor.datatype()},
          {"shape", std::vector<int64_t>(tensor.shape().begin(), tensor.shape().end())}};
}

// A request as errors and the audit log name it: a path of up to 8 KiB,
// audited on every refusal, would cost that much log per request.
std::string RequestWhat(const std::string& method, const std::string& path) {
  return absl::StrCat(method.substr(0, 16), " ", path.substr(0, 256), path.size() > 256 ? "..." : "");
}

}  // namespace

int HttpStatusForCode(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted:
      return 409;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kCancelled:
      return 499;
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

bool InferenceRest::Owns(const std::string& path) { return path == "/v2" || absl::StartsWith(path, "/v2/"); }

HttpReply InferenceRest::StatsReply(const std::string& name, const std::string& version) {
  inference::ModelStatisticsRequest request;
  request.set_name(name);
  request.set_version(version);
  inference::ModelStatisticsResponse stats;
  if (absl::Status status = core_->ModelStatistics(request, &stats); !status.ok()) return ErrorReply(status);
  // Triton's JSON: its field names, numbers as numbers.
  Json models = Json::array();
  for (const inference::ModelStatistics& m : stats.model_stats()) {
    const inference::InferStatistics& s = m.inference_stats();
    Json batches = Json::array();
    for (const inference::InferBatchStatistics& b : m.batch_stats()) {
      batches.push_back(Json{{"batch_size", b.batch_size()},
                             {"compute_input", DurationJson(b.compute_input())},
                             {"compute_infer", DurationJson(b.compute_infer())},
                             {"compute_output", DurationJson(b.compute_output())}});
    }
    models.push_back(Json{{"name", m.name()},
                          {"version", m.version()},
                          {"last_inference", m.last_inference()},
                          {"inference_count", m.inference_count()},
                          {"execution_count", m.execution_count()},
                          {"inference_stats", Json{{"success", DurationJson(s.success())},
                                                   {"fail", DurationJson(s.fail())},
                                                   {"queue", DurationJson(s.queue())},
                                                   {"compute_input", DurationJson(s.compute_input())},
                                                   {"compute_infer", DurationJson(s.compute_infer())},
                                                   {"compute_output", DurationJson(s.compute_output())}}},
                          {"batch_stats", batches}});
  }
  return JsonReply(200, Json{{"model_stats", models}});
}

std::optional<HttpReply> InferenceRest::RefuseBeforeBody(const std::string& method, const std::string& path,
                                                         const std::string& authorization,
                                                         const std::string& remote) {
  const std::string what = RequestWhat(method, path);
  absl::StatusOr<Principal> caller = auth_->Authorize(authorization, Role::kRead, what);
  if (caller.ok()) return std::nullopt;
  AuditLine("", remote, what, "", caller.status());
  if (IsInferCall(method, path)) core_->CountRefused(caller.status().code());  // as gRPC's refusals are
  return ErrorReply(caller.status());
}

std::string InferenceRest::AllowedMethodFor(const std::string& path) {
  return Owns(path) ? AllowedMethod(absl::StrSplit(path, '/')) : "";
}

HttpReply InferenceRest::Handle(const HttpCall& call) {
  const std::string what = RequestWhat(call.method, call.path);
  // HEAD is GET without the body (which the HTTP server leaves out).
  const std::string method = call.method == "HEAD" ? "GET" : call.method;
  {
    const std::string allowed = AllowedMethod(absl::StrSplit(call.path, '/'));
    if (!allowed.empty() && method != allowed) return MethodNotAllowed(what, allowed);
  }
  // Liveness and readiness are open, like the gRPC health service.
  if (call.path == "/v2/health/live" && method == "GET") return JsonReply(200, Json{{"live", true}});
  if (call.path == "/v2/health/ready" && method == "GET") {
    const bool ready = core_->ServerReady();
    // The protocol: 200 is true, a 4xx false (Kubernetes fails the probe).
    return JsonReply(ready ? 200 : 400, Json{{"ready", ready}});
  }
  absl::StatusOr<Principal> caller = auth_->Authorize(call.authorization, Role::kRead, what);
  if (!caller.ok()) {
    AuditLine("", call.remote, what, "", caller.status());
    if (IsInferCall(method, call.path)) core_->CountRefused(caller.status().code());  // as gRPC's refusals are
    return ErrorReply(caller.status());
  }
  const std::vector<std::string> parts = absl::StrSplit(call.path, '/');
  if (call.path == "/v2" || call.path == "/v2/") {
    inference::ServerMetadataResponse metadata;
    core_->ServerMetadata(&metadata);
    return JsonReply(200, Json{{"name", metadata.name()},
                               {"version", metadata.version()},
                               {"extensions", std::vector<std::string>(metadata.extensions().begin(),
                                                                       metadata.extensions().end())}});
  }
  if (call.path == "/v2/repository/index") {
    inference::RepositoryIndexRequest request;
    if (!call.body.empty()) {
      // Its one field is "ready": a large body is no index request, and
      // parsing it whole would cost far more memory than its bytes.
      constexpr size_t kMaxIndexBody = 4096;
      if (call.body.size() > kMaxIndexBody) {
        return ErrorReply(absl::InvalidArgumentError(
            absl::StrCat("body: ", call.body.size(), " bytes; a repository index request takes at most ",
                         kMaxIndexBody, " ({\"ready\": true|false})")));
      }
      if (absl::Status nesting = CheckJsonBeforeParsing(call.body, "body"); !nesting.ok()) return ErrorReply(nesting);
      Json body = Json::parse(call.body, nullptr, /*allow_exceptions=*/false);
      if (body.is_discarded() || !body.is_object()) return ErrorReply(absl::InvalidArgumentError("body: a JSON object"));
      if (body.contains("ready")) {
        if (!body["ready"].is_boolean()) return ErrorReply(absl::InvalidArgumentError("ready: a boolean"));
        request.set_ready(body["ready"].get<bool>());
      }
    }
    inference::RepositoryIndexResponse index;
    absl::Status status = core_->RepositoryIndex(request, &index);
    if (!status.ok()) return ErrorReply(status);
    Json models = Json::array();
    for (const auto& m : index.models()) {
      Json entry = {{"name", m.name()}, {"version", m.version()}, {"state", m.state()}};
      if (!m.reason().empty()) entry["reason"] = m.reason();
      models.push_back(std::move(entry));
    }
    return JsonReply(200, models);
  }
  if (parts.size() < 4 || parts[1] != "v2" || parts[2] != "models") {
    return ErrorReply(absl::NotFoundError(absl::StrCat("no such endpoint: ", call.path.substr(0, 100))));
  }
  if (call.path == "/v2/models/stats") return StatsReply("", "");
  absl::StatusOr<ModelPath> path = ParseModelPath(parts);
  if (!path.ok()) {
    if (IsInferCall(method, call.path)) core_->CountRefused(path.status().code());
    return ErrorReply(path.status());
  }
  if (path->action == "stats") return StatsReply(path->name, path->version);
  // A client that closed its connection waits for nothing: its request
  // leaves a wait for another's load, and is not run if still queued.
  auto gone = [client_gone = call.client_gone]() {
    if (!client_gone || !client_gone()) return absl::OkStatus();
    return absl::CancelledError("the client closed its connection while the request waited; it was not run");
  };
  if (path->action == "ready") {
    absl::StatusOr<bool> ready = core_->ModelReady(path->name, path->version, "version", gone);
    if (!ready.ok()) return ErrorReply(ready.status());
    return JsonReply(*ready ? 200 : 400, Json{{"name", path->name}, {"ready", *ready}});
  }
  if (path->action.empty()) {
    inference::ModelMetadataResponse metadata;
    absl::Status status = core_->ModelMetadata(path->name, path->version, "version", &metadata, gone);
    if (!status.ok()) return ErrorReply(status);
    Json inputs = Json::array();
    for (const auto& t : metadata.inputs()) inputs.push_back(TensorMetadata(t));
    Json outputs = Json::array();
    for (const auto& t : metadata.outputs()) outputs.push_back(TensorMetadata(t));
    return JsonReply(200, Json{{"name", metadata.name()},
                               {"versions", std::vector<std::string>(metadata.versions().begin(),
                                                                     metadata.versions().end())},
                               {"platform", metadata.platform()},
                               {"inputs", inputs},
                               {"outputs", outputs}});
  }
  // The model first: its input size bounds what the JSON may hold. A batch
  // nested row by row has at most as many arrays as values.
  inference::ModelInferRequest request;
  request.set_model_name(path->name);
  request.set_model_version(path->version);
  const absl::Time received = core_->Now();  // parameters[timeout] counts from here, the load included
  absl::StatusOr<std::shared_ptr<const worker::LoadedModel>> model = core_->LoadForInfer(request, gone);
  if (!model.ok()) return ErrorReply(WithRestFieldNames(model.status()));
  const int64_t batch_values = core_->max_batch_size() * (*model)->info().sample_values();
  bool binary_outputs = false;
  absl::Status parsed =
      ToInferRequest(call, *path, 2 * batch_values + kJsonElementsBesideData, &request, &binary_outputs);
  if (!parsed.ok()) {
    core_->CountRefused(parsed.code(), &(*model)->info());  // as gRPC's decode errors are
    return ErrorReply(WithRestFieldNames(parsed));
  }
  inference::ModelInferResponse response;
  absl::Notification done;
  absl::Status outcome;
  core_->ModelInfer(
      request, &response,
      [&](absl::Status status) {
        outcome = std::move(status);
        done.Notify();
      },
      *std::move(model), gone, received, /*json_outputs=*/!binary_outputs);
  done.WaitForNotification();
  if (!outcome.ok()) return ErrorReply(WithRestFieldNames(std::move(outcome)));
  return FromInferResponse(response, binary_outputs);
}

}  // namespace quantd
