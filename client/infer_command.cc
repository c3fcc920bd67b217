// quantctl infer NAME[:VERSION] --data=FILE [--data_format=cifar10|npy] [--first=N] [--count=N] [--top=K]:
// reads images from a local CIFAR-10 binary or .npy file (uint8 or float32,
// [N, C, H, W]) and sends them in one ModelInfer (the Open Inference
// Protocol), asking for Triton's classification output: prints each image's
// top K as "score index label", with its true label when the file has one.

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/job_format.h"
#include "inference/grpc_predict_v2.grpc.pb.h"

namespace quantd::cli {
namespace {

// `count` images from index `first` do not fit in a file of `total`.
std::string PastTheFile(int64_t first, int64_t count, int64_t total) {
  return absl::StrCat("--first/--count: ", count, count == 1 ? " image" : " images", " from index ", first,
                      " run past the file's ", total, total == 1 ? " image" : " images");
}

constexpr char kUsage[] =
    "usage: infer NAME[:VERSION] --data=FILE [--data_format=cifar10|npy] [--first=N] [--count=N] [--top=K]";

const char* const kCifarLabels[] = {"airplane", "automobile", "bird", "cat", "deer",
                                    "dog", "frog", "horse", "ship", "truck"};

struct Images {
  std::string datatype;            // "UINT8" or "FP32"
  std::vector<int64_t> shape;      // [N, C, H, W] of the selection
  std::string raw;                 // the selection's bytes
  std::vector<int> labels;         // CIFAR-10 only
};

// Images [first, first + count) of a CIFAR-10 binary file.
bool ReadCifar(const std::string& bytes, int64_t first, int64_t count, Images* out, std::string* error) {
  constexpr int64_t kRecord = 3073;
  const int64_t total = static_cast<int64_t>(bytes.size()) / kRecord;
  if (bytes.empty() || static_cast<int64_t>(bytes.size()) % kRecord != 0) {
    *error = absl::StrCat("--data: ", bytes.size(), " bytes is not a whole number of 3073-byte CIFAR-10 records");
    return false;
  }
  if (count > total || first > total - count) {  // first + count could overflow
    *error = PastTheFile(first, count, total);
    return false;
  }
  out->datatype = "UINT8";
  out->shape = {count, 3, 32, 32};
  for (int64_t i = first; i < first + count; ++i) {
    out->labels.push_back(static_cast<uint8_t>(bytes[i * kRecord]));
    out->raw.append(bytes, i * kRecord + 1, kRecord - 1);
  }
  return true;
}

// Images [first, first + count) of a C-order .npy array of uint8 or float32
// [N, C, H, W].
bool ReadNpy(const std::string& bytes, int64_t first, int64_t count, Images* out, std::string* error) {
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) {
    *error = "--data: not a .npy file";
    return false;
  }
  const int major = static_cast<uint8_t>(bytes[6]);
  const size_t length_bytes = major == 1 ? 2 : 4;
  if (bytes.size() < 8 + length_bytes) {
    *error = "--data: truncated .npy header";
    return false;
  }
  size_t header_length = 0;
  for (size_t i = 0; i < length_bytes; ++i) header_length |= static_cast<size_t>(static_cast<uint8_t>(bytes[8 + i])) << (8 * i);
  const size_t data_start = 8 + length_bytes + header_length;
  if (data_start > bytes.size()) {
    *error = "--data: truncated .npy header";
    return false;
  }
  const std::string header = bytes.substr(8 + length_bytes, header_length);
  size_t element = 0;
  if (header.find("'<f4'") != std::string::npos) {
    out->datatype = "FP32";
    element = 4;
  } else if (header.find("'|u1'") != std::string::npos) {
    out->datatype = "UINT8";
    element = 1;
  } else {
    *error = "--data: .npy dtype must be uint8 or float32 ('|u1' or '<f4')";
    return false;
  }
  if (header.find("'fortran_order': False") == std::string::npos) {
    *error = "--data: .npy must be in C order";
    return false;
  }
  const size_t open = header.find("'shape': (");
  const size_t close = open == std::string::npos ? open : header.find(')', open);
  std::vector<int64_t> dims;
  if (close != std::string::npos) {
    for (absl::string_view part : absl::StrSplit(header.substr(open + 10, close - open - 10), ',', absl::SkipWhitespace())) {
      int64_t d = 0;
      if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &d) || d < 1) {
        dims.clear();  // not a shape we can use
        break;
      }
      dims.push_back(d);
    }
  }
  if (dims.size() != 4) {
    *error = "--data: .npy images must be [N, C, H, W]";
    return false;
  }
  // Multiplied only while the product still fits in the file's bytes, so a
  // crafted shape cannot overflow its way past this check.
  const int64_t available = static_cast<int64_t>(bytes.size() - data_start);
  int64_t sample = static_cast<int64_t>(element);
  bool fits = true;
  for (size_t i = 1; i < 4 && fits; ++i) {
    fits = dims[i] <= available / sample;
    if (fits) sample *= dims[i];
  }
  if (!fits || dims[0] > available / sample) {
    *error = "--data: the .npy file is shorter than its shape";
    return false;
  }
  if (count > dims[0] || first > dims[0] - count) {
    *error = PastTheFile(first, count, dims[0]);
    return false;
  }
  out->shape = {count, dims[1], dims[2], dims[3]};
  out->raw = bytes.substr(data_start + first * sample, count * sample);
  return true;
}

}  // namespace

int RunInfer(const CommandContext& context, const std::vector<std::string>& args) {
  std::string error;
  auto a = ParseCommandArgs(args, {"data", "data_format", "first", "count", "top"}, &error);
  if (a.has_value()) error = PositionalCountError(*a, 1, 1, "NAME[:VERSION]");
  if (a.has_value() && error.empty() && !a->Has("data")) error = "--data required";
  if (!error.empty()) {
    return context.UsageError(absl::StrCat("infer: ", error, "\n", kUsage));
  }
  ModelTarget target;
  if (!ParseModelTarget(a->positional[0], /*version_required=*/false, &target, &error)) {
    return context.UsageError("infer: " + error);
  }
  int64_t first = 0, count = 1, top = 3;
  for (auto [flag, value] : {std::pair<const char*, int64_t*>{"first", &first}, {"count", &count}, {"top", &top}}) {
    if (a->Has(flag) && (!absl::SimpleAtoi(a->Get(flag), value) || *value < (std::string(flag) == "first" ? 0 : 1))) {
      const char* wanted = std::string(flag) == "first" ? "an image index (0, 1, ...)" : "a count (1, 2, ...)";
      return context.UsageError(absl::StrCat("infer: --", flag, ": \"", a->Get(flag), "\" is not ", wanted));
    }
  }
  std::error_code file_error;
  if (!std::filesystem::is_regular_file(a->Get("data"), file_error)) {
    return context.UsageError(absl::StrCat("infer: --data: ", a->Get("data"), " is not a readable file"));
  }
  std::ifstream in(a->Get("data"), std::ios::binary);
  if (!in) return context.UsageError(absl::StrCat("infer: --data: cannot read ", a->Get("data")));
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string format = DatasetFormatOf(a->Get("data"), "data", a->Get("data_format"), &error);
  Images images;
  bool read = false;
  if (format == "cifar10") {
    read = ReadCifar(bytes, first, count, &images, &error);
  } else if (format == "npy") {
    read = ReadNpy(bytes, first, count, &images, &error);
  }
  if (!read) return context.UsageError("infer: " + error);

  inference::ModelInferRequest request;
  request.set_model_name(target.name);
  request.set_model_version(target.version);
  request.set_id(absl::StrCat("quantctl-", first));
  auto* input = request.add_inputs();
  input->set_name("input");
  input->set_datatype(images.datatype);
  for (int64_t d : images.shape) input->add_shape(d);
  request.add_raw_input_contents(images.raw);
  auto* output = request.add_outputs();
  output->set_name("output");
  (*output->mutable_parameters())["classification"].set_int64_param(top);

  auto stub = inference::GRPCInferenceService::NewStub(context.channel);
  grpc::ClientContext call;
  context.PrepareCall(call);
  inference::ModelInferResponse response;
  grpc::Status status = stub->ModelInfer(&call, request, &response);
  if (!status.ok()) return context.RpcFailed("infer", status);
  if (response.outputs_size() != 1 || response.raw_output_contents_size() != 1 ||
      response.outputs(0).datatype() != "BYTES" || response.outputs(0).shape_size() != 2) {
    *context.err << "quantctl: infer: unexpected response (" << response.outputs_size() << " outputs)\n";
    return kExitFailure;
  }
  // BYTES: per element a 4-byte little-endian length, then "score:index[:label]".
  const std::string& raw = response.raw_output_contents(0);
  const int64_t k = response.outputs(0).shape(1);
  std::string ran_on;
  if (auto it = response.parameters().find("kernel_engine"); it != response.parameters().end()) {
    // The FP32 source model of a version (NAME.fp32) reports "fp32".
    const std::string& engine = it->second.string_param();
    ran_on = engine == "fp32" ? " (FP32)" : absl::StrCat(" (int8 on ", engine, ")");
  }
  std::string text = absl::StrFormat("%s version %s%s", response.model_name(), response.model_version(), ran_on);
  size_t at = 0;
  for (int64_t n = 0; n < count; ++n) {
    absl::StrAppend(&text, "\nimage ", first + n);
    if (n < static_cast<int64_t>(images.labels.size()) && images.labels[n] < 10) {
      absl::StrAppend(&text, " (", kCifarLabels[images.labels[n]], ")");
    }
    absl::StrAppend(&text, ":");
    for (int64_t j = 0; j < k && at + 4 <= raw.size(); ++j) {
      uint32_t size = 0;
      std::memcpy(&size, raw.data() + at, 4);
      std::vector<std::string> parts = absl::StrSplit(raw.substr(at + 4, size), ':');
      at += 4 + size;
      absl::StrAppend(&text, absl::StrFormat("  %s", parts.size() >= 3 ? parts[2] : parts.size() >= 2 ? parts[1] : "?"));
      if (!parts.empty()) absl::StrAppend(&text, " ", parts[0]);
    }
  }
  context.Print(response, text);
  return kExitOk;
}

}  // namespace quantd::cli
