#include "server/inference_conversion.h"

#include <cmath>
#include <cstring>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace quantd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

worker::ServedModelInfo Model() {
  worker::ServedModelInfo info;
  info.name = "tiny";
  info.input_shape = {1, 2, 2};
  info.labels = {"zero", "one", "two"};
  return info;
}

inference::ModelInferRequest Request(const std::string& datatype, std::vector<int64_t> shape) {
  inference::ModelInferRequest request;
  auto* input = request.add_inputs();
  input->set_name("input");
  input->set_datatype(datatype);
  for (int64_t d : shape) input->add_shape(d);
  return request;
}

// The elements of a BYTES tensor: each a 4-byte little-endian length, then its bytes.
std::vector<std::string> BytesElements(const std::string& raw) {
  std::vector<std::string> elements;
  for (size_t at = 0; at + 4 <= raw.size();) {
    uint32_t size = 0;
    std::memcpy(&size, raw.data() + at, 4);
    elements.push_back(raw.substr(at + 4, size));
    at += 4 + size;
  }
  return elements;
}

TEST(ParseModelVersionTest, EmptyIsNewestAndOnlyPositiveNumbersPass) {
  EXPECT_EQ(*ParseModelVersion("", "model_version"), 0);
  EXPECT_EQ(*ParseModelVersion("12", "model_version"), 12);
  // Any version number int64 holds is one (one that is not published is
  // NOT_FOUND later, not a malformed version).
  EXPECT_EQ(*ParseModelVersion("9223372036854775807", "model_version"), INT64_MAX);
  for (const char* bad : {"0", "-1", "v1", "1.5", "latest", "9223372036854775808", "01", "+1"}) {
    absl::StatusOr<int64_t> v = ParseModelVersion(bad, "model_version");
    EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(v.status().message(), HasSubstr("model_version")) << bad;
  }
}

TEST(InferQueueTimeoutTest, MicrosecondsAsInt64OrUint64AndZeroOrAbsentMeansNoLimit) {
  inference::ModelInferRequest request;
  EXPECT_EQ(*InferQueueTimeout(request), absl::InfiniteDuration());
  auto& timeout = (*request.mutable_parameters())["timeout"];
  timeout.set_int64_param(0);
  EXPECT_EQ(*InferQueueTimeout(request), absl::InfiniteDuration());
  timeout.set_int64_param(2500);
  EXPECT_EQ(*InferQueueTimeout(request), absl::Microseconds(2500));
  timeout.set_uint64_param(7);  // Triton's clients may send either integer type
  EXPECT_EQ(*InferQueueTimeout(request), absl::Microseconds(7));
  inference::InferParameter negative, huge, text, fraction;
  negative.set_int64_param(-1);
  huge.set_uint64_param(uint64_t{1} << 63);
  text.set_string_param("100");
  fraction.set_double_param(1.5);
  for (const inference::InferParameter& bad : {negative, huge, text, fraction}) {
    timeout = bad;
    absl::StatusOr<absl::Duration> parsed = InferQueueTimeout(request);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad.DebugString();
    EXPECT_THAT(parsed.status().message(), HasSubstr("parameters[timeout]")) << bad.DebugString();
  }
}

TEST(DecodeInferInputTest, RawUint8AndTypedFp32GiveTheSamePixels) {
  inference::ModelInferRequest raw = Request("UINT8", {2, 1, 2, 2});
  raw.add_raw_input_contents(std::string("\x00\x01\x02\xff\x10\x20\x30\x40", 8));
  absl::StatusOr<DecodedBatch> a = DecodeInferInput(raw, Model(), 8);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->batch, 2);
  EXPECT_THAT(a->pixels, ElementsAre(0, 1, 2, 255, 16, 32, 48, 64));

  inference::ModelInferRequest typed = Request("FP32", {2, 1, 2, 2});
  for (float v : {0, 1, 2, 255, 16, 32, 48, 64}) typed.mutable_inputs(0)->mutable_contents()->add_fp32_contents(v);
  absl::StatusOr<DecodedBatch> b = DecodeInferInput(typed, Model(), 8);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->pixels, b->pixels);

  inference::ModelInferRequest raw_fp32 = Request("FP32", {1, 1, 2, 2});
  const float values[4] = {0.5f, -1.0f, 3.0f, 4.0f};
  raw_fp32.add_raw_input_contents(std::string(reinterpret_cast<const char*>(values), sizeof(values)));
  EXPECT_THAT(DecodeInferInput(raw_fp32, Model(), 8)->pixels, ElementsAre(0.5f, -1.0f, 3.0f, 4.0f));
}

TEST(DecodeInferInputTest, EachMistakeNamesItsField) {
  auto error = [](const inference::ModelInferRequest& request) {
    absl::StatusOr<DecodedBatch> decoded = DecodeInferInput(request, Model(), 4);
    EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(decoded.status().message());
  };
  EXPECT_THAT(error(inference::ModelInferRequest()), HasSubstr("inputs:"));
  EXPECT_THAT(error(Request("INT32", {1, 1, 2, 2})), HasSubstr("inputs[0].datatype"));
  EXPECT_THAT(error(Request("UINT8", {1, 3, 2, 2})), HasSubstr("inputs[0].shape"));
  EXPECT_THAT(error(Request("UINT8", {1, 2, 2})), HasSubstr("inputs[0].shape"));
  EXPECT_THAT(error(Request("UINT8", {0, 1, 2, 2})), HasSubstr("batch size 0"));
  EXPECT_THAT(error(Request("UINT8", {5, 1, 2, 2})), HasSubstr("--max_batch_size 4"));
  inference::ModelInferRequest short_raw = Request("UINT8", {1, 1, 2, 2});
  short_raw.add_raw_input_contents("abc");
  EXPECT_THAT(error(short_raw), HasSubstr("raw_input_contents[0]: 3 bytes"));
  inference::ModelInferRequest few = Request("FP32", {1, 1, 2, 2});
  few.mutable_inputs(0)->mutable_contents()->add_fp32_contents(1);
  EXPECT_THAT(error(few), HasSubstr("fp32_contents: 1 values"));
  inference::ModelInferRequest big = Request("UINT8", {1, 1, 2, 2});
  for (uint32_t v : {1u, 2u, 300u, 4u}) big.mutable_inputs(0)->mutable_contents()->add_uint_contents(v);
  EXPECT_THAT(error(big), HasSubstr("uint_contents[2]: 300"));
  inference::ModelInferRequest nan = Request("FP32", {1, 1, 2, 2});
  for (float v : {1.0f, std::nanf(""), 2.0f, 3.0f}) nan.mutable_inputs(0)->mutable_contents()->add_fp32_contents(v);
  EXPECT_THAT(error(nan), HasSubstr("NaN"));
  // Values in another field than the datatype's are refused, not ignored.
  inference::ModelInferRequest mixed = Request("UINT8", {1, 1, 2, 2});
  for (uint32_t v : {1u, 2u, 3u, 4u}) mixed.mutable_inputs(0)->mutable_contents()->add_uint_contents(v);
  mixed.mutable_inputs(0)->mutable_contents()->add_fp32_contents(1.0f);
  EXPECT_THAT(error(mixed), HasSubstr("inputs[0].contents.fp32_contents: 1 values, but a UINT8 input takes only "
                                      "uint_contents"));
  inference::ModelInferRequest wrong = Request("FP32", {1, 1, 2, 2});
  for (uint32_t v : {1u, 2u, 3u, 4u}) wrong.mutable_inputs(0)->mutable_contents()->add_uint_contents(v);
  EXPECT_THAT(error(wrong), HasSubstr("inputs[0].contents.uint_contents: 4 values, but a FP32 input takes only "
                                      "fp32_contents"));
  // Values whose quantization overflows (LibTorch read 1.9e19 as 0) are refused
  // for an int8 model; its FP32 source takes them.
  inference::ModelInferRequest huge = Request("FP32", {1, 1, 2, 2});
  for (float v : {1.0f, 1.9e19f, 2.0f, 3.0f}) huge.mutable_inputs(0)->mutable_contents()->add_fp32_contents(v);
  EXPECT_THAT(error(huge), HasSubstr("inputs[0]: value 1 is 1.9e+19 (an int8 model takes values within +-1e12"));
  worker::ServedModelInfo fp32 = Model();
  fp32.fp32 = true;
  EXPECT_TRUE(DecodeInferInput(huge, fp32, 4).ok());
  inference::ModelInferRequest large = Request("FP32", {1, 1, 2, 2});
  for (float v : {1.0f, -1e12f, 2.0f, 3.0f}) large.mutable_inputs(0)->mutable_contents()->add_fp32_contents(v);
  EXPECT_TRUE(DecodeInferInput(large, Model(), 4).ok());
  inference::ModelInferRequest renamed = Request("UINT8", {1, 1, 2, 2});
  renamed.mutable_inputs(0)->set_name("pixels");
  renamed.add_raw_input_contents(std::string(4, '\0'));
  EXPECT_THAT(error(renamed), HasSubstr("inputs[0].name: \"pixels\" is not an input of tiny"));
}

TEST(DecodeInferInputTest, AHugeClaimedBatchWithoutItsDataAllocatesNothing) {
  // 2^31 samples of 4 floats would be 32 GiB: the missing data is reported
  // before any buffer is sized from the shape.
  const int64_t huge = int64_t{1} << 31;
  for (const char* datatype : {"UINT8", "FP32"}) {
    inference::ModelInferRequest raw = Request(datatype, {huge, 1, 2, 2});
    raw.add_raw_input_contents("abcd");
    absl::StatusOr<DecodedBatch> decoded = DecodeInferInput(raw, Model(), huge);
    EXPECT_THAT(decoded.status().message(), HasSubstr("raw_input_contents[0]: 4 bytes")) << datatype;
    inference::ModelInferRequest typed = Request(datatype, {huge, 1, 2, 2});
    decoded = DecodeInferInput(typed, Model(), huge);
    EXPECT_THAT(decoded.status().message(), HasSubstr("_contents: 0 values")) << datatype;
  }
}

TEST(CheckInferOutputsTest, BadOutputRequestsFailBeforeThePass) {
  inference::ModelInferRequest request;
  EXPECT_EQ(*CheckInferOutputs(request, Model()), 0);
  auto* wanted = request.add_outputs();
  wanted->set_name("output");
  (*wanted->mutable_parameters())["classification"].set_int64_param(5);
  worker::ServedModelInfo scores = Model();
  scores.output_shape = {3};
  EXPECT_EQ(*CheckInferOutputs(request, scores), 5);  // capped at the classes when encoding
  worker::ServedModelInfo maps = Model();
  maps.output_shape = {3, 4, 4};
  absl::Status not_scores = CheckInferOutputs(request, maps).status();
  EXPECT_EQ(not_scores.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(not_scores.message(), HasSubstr("outputs[0].parameters[classification]: needs [N, classes] scores"));
  (*wanted->mutable_parameters())["classification"].set_string_param("top");
  EXPECT_THAT(CheckInferOutputs(request, scores).status().message(),
              HasSubstr("outputs[0].parameters[classification]: an integer k >= 1"));
  wanted->set_name("logits");
  EXPECT_THAT(CheckInferOutputs(request, scores).status().message(), HasSubstr("outputs[0].name"));
}

TEST(EncodeInferOutputsTest, ScoresAreRawFp32AndClassificationIsTopKStrings) {
  engine::ServingOutput output;
  output.shape = {2, 3};
  output.values = {0.1f, 0.7f, 0.2f, 0.9f, 0.05f, 0.05f};
  inference::ModelInferResponse scores;
  ASSERT_TRUE(EncodeInferOutputs(inference::ModelInferRequest(), Model(), output, &scores).ok());
  EXPECT_EQ(scores.outputs(0).datatype(), "FP32");
  EXPECT_THAT(scores.outputs(0).shape(), ElementsAre(2, 3));
  ASSERT_EQ(scores.raw_output_contents(0).size(), 6 * sizeof(float));
  EXPECT_EQ(std::memcmp(scores.raw_output_contents(0).data(), output.values.data(), 6 * sizeof(float)), 0);

  inference::ModelInferRequest request;
  auto* wanted = request.add_outputs();
  wanted->set_name("output");
  (*wanted->mutable_parameters())["classification"].set_int64_param(2);
  inference::ModelInferResponse top;
  ASSERT_TRUE(EncodeInferOutputs(request, Model(), output, &top).ok());
  EXPECT_EQ(top.outputs(0).datatype(), "BYTES");
  EXPECT_THAT(top.outputs(0).shape(), ElementsAre(2, 2));
  const std::vector<std::string> entries = BytesElements(top.raw_output_contents(0));
  EXPECT_THAT(entries, ElementsAre("0.700000:1:one", "0.200000:2:two", "0.900000:0:zero", "0.050000:1:one"));

  wanted->set_name("logits");
  inference::ModelInferResponse unknown;
  absl::Status status = EncodeInferOutputs(request, Model(), output, &unknown);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("outputs[0].name"));
}

// A NaN score (an FP32 model that overflowed) ranks last wherever it sits.
TEST(EncodeInferOutputsTest, ClassificationRanksNanLast) {
  engine::ServingOutput output;
  output.shape = {2, 3};
  const float nan = std::nanf("");
  output.values = {nan, 0.1f, 0.5f, 0.1f, nan, 0.5f};
  inference::ModelInferRequest request;
  auto* wanted = request.add_outputs();
  wanted->set_name("output");
  (*wanted->mutable_parameters())["classification"].set_int64_param(3);
  inference::ModelInferResponse top;
  ASSERT_TRUE(EncodeInferOutputs(request, Model(), output, &top).ok());
  const std::vector<std::string> entries = BytesElements(top.raw_output_contents(0));
  EXPECT_THAT(entries, ElementsAre("0.500000:2:two", "0.100000:1:one", "nan:0:zero",  //
                                   "0.500000:2:two", "0.100000:0:zero", "nan:1:one"));
}

}  // namespace
}  // namespace quantd
