#include "worker/engine/runtime/int8_kernels.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "worker/engine/base/cpu_features.h"

namespace quantd::engine {
namespace {

// A uint8 view of a 1-byte quantized tensor's storage (no copy).
at::Tensor RawBytes(const at::Tensor& q) {
  return at::from_blob(q.data_ptr(), q.sizes(), q.strides(), at::TensorOptions().dtype(at::kByte));
}

// One channel plane into contiguous codes, compiled for the best vector ISA
// (nearbyint becomes a rounding instruction instead of a libm call).
__attribute__((target_clones("avx512f", "avx2", "default")))
void QuantizePlane(const float* __restrict plane, int64_t hw, float inv_scale, float zp, uint8_t* __restrict out) {
  for (int64_t p = 0; p < hw; ++p) {
    // 0 first: NaN compares false, so it becomes 0, not an undefined cast.
    const float v = std::min(std::max(0.0f, zp + std::nearbyint(plane[p] * inv_scale)), 255.0f);
    out[p] = static_cast<uint8_t>(v);
  }
}

// Planes [c][hw] -> pixels [hw][c]; the channel count is a compile-time
// constant for the common image case so the loop unrolls.
template <int64_t kChannels>
void InterleaveFixed(const uint8_t* __restrict planes, int64_t hw, uint8_t* __restrict out) {
  for (int64_t p = 0; p < hw; ++p) {
    for (int64_t ch = 0; ch < kChannels; ++ch) out[p * kChannels + ch] = planes[ch * hw + p];
  }
}

void Interleave(const uint8_t* __restrict planes, int64_t c, int64_t hw, uint8_t* __restrict out) {
  if (c == 3) return InterleaveFixed<3>(planes, hw, out);
  if (c == 1) return InterleaveFixed<1>(planes, hw, out);
  for (int64_t p = 0; p < hw; ++p) {
    for (int64_t ch = 0; ch < c; ++ch) out[p * c + ch] = planes[ch * hw + p];
  }
}

// The operands of LibTorch's quint8 add, as its kernel prepares them.
struct AddParams {
  float a_scale, a_premul;  // premul = scale * -zero_point, for a fused multiply-add
  float b_scale, b_premul;
  float inverse_scale;
  int32_t zero_point;
  bool relu;
};

// The vectorized path: dequantize = fma(scale, q, premul); requantize =
// round-half-even(min(x * inverse_scale, 2^31 - 128)) + zero point (int32,
// wrapping), saturated to 0..255.
inline uint8_t AddVectorFormula(uint8_t qa, uint8_t qb, const AddParams& p) {
  const float da = std::fma(p.a_scale, static_cast<float>(qa), p.a_premul);
  const float db = std::fma(p.b_scale, static_cast<float>(qb), p.b_premul);
  float c = da + db;
  if (p.relu) c = std::max(c, 0.0f);
  const float t = std::min(c * p.inverse_scale, 2147483520.0f);
  const auto r = static_cast<int32_t>(static_cast<uint32_t>(static_cast<int32_t>(std::nearbyint(t))) +
                                      static_cast<uint32_t>(p.zero_point));
  return static_cast<uint8_t>(std::min(std::max(r, 0), 255));
}

// GCC 12 flags the "undefined" vectors inside its own AVX-512 intrinsics.
#pragma GCC diagnostic push
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"
// Returns how many leading elements it did (a multiple of 16).
__attribute__((target("avx512f,fma"))) int64_t AddAvx512(const uint8_t* a, const uint8_t* b, uint8_t* out,
                                                          int64_t n, const AddParams& p) {
  const __m512 a_scale = _mm512_set1_ps(p.a_scale), a_premul = _mm512_set1_ps(p.a_premul);
  const __m512 b_scale = _mm512_set1_ps(p.b_scale), b_premul = _mm512_set1_ps(p.b_premul);
  const __m512 inverse_scale = _mm512_set1_ps(p.inverse_scale);
  const __m512 limit = _mm512_set1_ps(2147483520.0f);
  const __m512 zero = _mm512_setzero_ps();
  const __m512i zero_point = _mm512_set1_epi32(p.zero_point);
  const __m512i lo = _mm512_setzero_si512(), hi = _mm512_set1_epi32(255);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 qa = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i))));
    const __m512 qb = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i))));
    __m512 c = _mm512_add_ps(_mm512_fmadd_ps(a_scale, qa, a_premul), _mm512_fmadd_ps(b_scale, qb, b_premul));
    if (p.relu) c = _mm512_max_ps(c, zero);
    const __m512 t = _mm512_min_ps(_mm512_mul_ps(c, inverse_scale), limit);
    __m512i r = _mm512_add_epi32(_mm512_cvtps_epi32(t), zero_point);
    r = _mm512_min_epi32(_mm512_max_epi32(r, lo), hi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm512_cvtepi32_epi8(r));
  }
  return i;
}

// The same arithmetic, 8 lanes at a time, for AVX2 CPUs (LibTorch's own AVX2
// kernel computes the same FMA formula).
struct AddAvx2Constants {
  __m256 a_scale, a_premul, b_scale, b_premul, inverse_scale, limit;
  __m256i zero_point;
};

__attribute__((target("avx2,fma"), always_inline)) inline __m256i AddEightAvx2(const uint8_t* a, const uint8_t* b,
                                                                               const AddAvx2Constants& k, bool relu) {
  const __m256 qa = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a))));
  const __m256 qb = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b))));
  __m256 c = _mm256_add_ps(_mm256_fmadd_ps(k.a_scale, qa, k.a_premul), _mm256_fmadd_ps(k.b_scale, qb, k.b_premul));
  if (relu) c = _mm256_max_ps(c, _mm256_setzero_ps());
  const __m256 t = _mm256_min_ps(_mm256_mul_ps(c, k.inverse_scale), k.limit);
  const __m256i r = _mm256_add_epi32(_mm256_cvtps_epi32(t), k.zero_point);
  return _mm256_min_epi32(_mm256_max_epi32(r, _mm256_setzero_si256()), _mm256_set1_epi32(255));
}

// Returns how many leading elements it did (a multiple of 32).
__attribute__((target("avx2,fma"))) int64_t AddAvx2(const uint8_t* a, const uint8_t* b, uint8_t* out, int64_t n,
                                                     const AddParams& p) {
  AddAvx2Constants k;
  k.a_scale = _mm256_set1_ps(p.a_scale);
  k.a_premul = _mm256_set1_ps(p.a_premul);
  k.b_scale = _mm256_set1_ps(p.b_scale);
  k.b_premul = _mm256_set1_ps(p.b_premul);
  k.inverse_scale = _mm256_set1_ps(p.inverse_scale);
  k.limit = _mm256_set1_ps(2147483520.0f);
  k.zero_point = _mm256_set1_epi32(p.zero_point);
  // packus works within 128-bit lanes: this puts the 32 bytes back in order.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i words01 = _mm256_packus_epi32(AddEightAvx2(a + i, b + i, k, p.relu),
                                                AddEightAvx2(a + i + 8, b + i + 8, k, p.relu));
    const __m256i words23 = _mm256_packus_epi32(AddEightAvx2(a + i + 16, b + i + 16, k, p.relu),
                                                AddEightAvx2(a + i + 24, b + i + 24, k, p.relu));
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(words01, words23), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), bytes);
  }
  return i;
}

__attribute__((target("avx2"))) void ReluAvx2(const uint8_t* in, uint8_t* out, int64_t n, uint8_t zero_point) {
  const __m256i floor = _mm256_set1_epi8(static_cast<char>(zero_point));
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                        _mm256_max_epu8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i)), floor));
  }
  for (; i < n; ++i) out[i] = std::max(in[i], zero_point);
}

__attribute__((target("avx512f,avx512bw"))) void ReluAvx512Bw(const uint8_t* in, uint8_t* out, int64_t n, uint8_t zero_point) {
  const __m512i floor = _mm512_set1_epi8(static_cast<char>(zero_point));
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    _mm512_storeu_si512(out + i, _mm512_max_epu8(_mm512_loadu_si512(in + i), floor));
  }
  for (; i < n; ++i) out[i] = std::max(in[i], zero_point);
}

// Three channel planes of one image quantized straight into pixel-major
// bytes, 16 pixels per step: the same float arithmetic as QuantizePlane, then
// one byte permute to interleave. With `rgbx` every pixel gets a fourth byte,
// `fill`. Returns how many pixels it did.
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) int64_t QuantizeRgbAvx512Vbmi(
    const float* image, int64_t hw, float inv_scale, float zp, bool rgbx, uint8_t fill, uint8_t* out) {
  const __m512 v_inv = _mm512_set1_ps(inv_scale), v_zp = _mm512_set1_ps(zp);
  const __m512 v_lo = _mm512_setzero_ps(), v_hi = _mm512_set1_ps(255.0f);
  const int stride = rgbx ? 4 : 3;
  alignas(64) uint8_t order[64] = {};
  for (int p = 0; p < 16; ++p) {
    for (int ch = 0; ch < stride; ++ch) order[p * stride + ch] = static_cast<uint8_t>(ch * 16 + p);
  }
  const __mmask64 store = rgbx ? ~__mmask64{0} : (__mmask64{1} << 48) - 1;
  const __m128i v_fill = _mm_set1_epi8(static_cast<char>(fill));
  const __m512i v_order = _mm512_load_si512(order);
#define QUANTD_CODES(plane)                                                                                \
  _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(_mm512_min_ps(                                                   \
      _mm512_max_ps(_mm512_add_ps(v_zp, _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(plane), v_inv), \
                                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)), \
                    v_lo),                                                                                  \
      v_hi)))
  int64_t p = 0;
  for (; p + 16 <= hw; p += 16) {
    __m512i planes = _mm512_castsi128_si512(QUANTD_CODES(image + p));
    planes = _mm512_inserti32x4(planes, QUANTD_CODES(image + hw + p), 1);
    planes = _mm512_inserti32x4(planes, QUANTD_CODES(image + 2 * hw + p), 2);
    planes = _mm512_inserti32x4(planes, v_fill, 3);
    _mm512_mask_storeu_epi8(out + p * stride, store, _mm512_permutexvar_epi8(v_order, planes));
  }
  return p;
}
#undef QUANTD_CODES
#pragma GCC diagnostic pop

// LibTorch computes an element with the vectorized formula unless it falls in
// the tail of a range its TensorIterator hands to one thread (ranges are split
// as at::parallel_for does past GRAIN_SIZE elements; the tail is what is left
// after whole 64- or 128-byte steps, by CPU capability). The vector path needs
// AVX2 kernels (an FMA dequantize); ATEN_CPU_CAPABILITY=default turns them off.
// So: covered when every range is a multiple of 128 elements.
bool VectorizedAddCovers(int64_t n) {
  static const bool avx2_kernels = [] {
    const char* forced = std::getenv("ATEN_CPU_CAPABILITY");
    const bool vector_capability = forced == nullptr || std::string(forced) == "avx2" || std::string(forced) == "avx512";
    return vector_capability && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  if (!avx2_kernels) return false;
  constexpr int64_t kStep = 128;
  constexpr int64_t kGrain = 32768;  // at::internal::GRAIN_SIZE
  const int64_t threads = at::get_num_threads();
  if (n < kGrain || threads == 1) return n % kStep == 0;
  const int64_t teams = std::min(threads, (n + kGrain - 1) / kGrain);
  const int64_t chunk = (n + teams - 1) / teams;
  const int64_t last = n - (teams - 1) * chunk;
  return chunk % kStep == 0 && last > 0 && last % kStep == 0;
}

// Dense in one of the two layouts the int8 runtime produces.
std::optional<at::MemoryFormat> DenseLayout(const at::Tensor& t) {
  if (t.is_contiguous()) return at::MemoryFormat::Contiguous;
  if (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  return std::nullopt;
}

bool IsQuint8PerTensor(const at::Tensor& t) {
  return t.is_quantized() && t.scalar_type() == at::kQUInt8 && t.qscheme() == at::kPerTensorAffine;
}

}  // namespace

at::Tensor AddInt8(const at::Tensor& a, const at::Tensor& b, double scale, int64_t zero_point, bool relu) {
  if (!IsQuint8PerTensor(a) || !IsQuint8PerTensor(b) || a.sizes() != b.sizes()) return at::Tensor();
  const auto layout = DenseLayout(a);
  // Both in one layout and, for 4-D tensors, one the tensor is unambiguously in
  // (TensorIterator then walks memory in order, as here).
  if (!layout || DenseLayout(b) != layout || a.strides() != b.strides()) return at::Tensor();
  if (!VectorizedAddCovers(a.numel())) return at::Tensor();
  AddParams p;
  p.a_scale = static_cast<float>(a.q_scale());
  p.b_scale = static_cast<float>(b.q_scale());
  p.a_premul = p.a_scale * -static_cast<float>(a.q_zero_point());
  p.b_premul = p.b_scale * -static_cast<float>(b.q_zero_point());
  p.inverse_scale = 1.0f / static_cast<float>(scale);
  p.zero_point = static_cast<int32_t>(zero_point);
  p.relu = relu;
  at::Tensor out = at::_empty_affine_quantized(a.sizes(), at::TensorOptions().dtype(at::kQUInt8), scale, zero_point,
                                               a.suggest_memory_format());
  if (out.strides() != a.strides()) return at::Tensor();
  const auto* pa = reinterpret_cast<const uint8_t*>(a.data_ptr());
  const auto* pb = reinterpret_cast<const uint8_t*>(b.data_ptr());
  auto* po = reinterpret_cast<uint8_t*>(out.data_ptr());
  const int64_t n = a.numel();
  int64_t i = CpuHasAvx512() ? AddAvx512(pa, pb, po, n, p) : CpuHasAvx2Fma() ? AddAvx2(pa, pb, po, n, p) : 0;
  for (; i < n; ++i) po[i] = AddVectorFormula(pa[i], pb[i], p);
  return out;
}

at::Tensor ReluInt8(const at::Tensor& q) {
  if (!IsQuint8PerTensor(q) || !DenseLayout(q)) return at::Tensor();
  at::Tensor out = at::_empty_affine_quantized(q.sizes(), at::TensorOptions().dtype(at::kQUInt8), q.q_scale(),
                                               q.q_zero_point(), q.suggest_memory_format());
  if (out.strides() != q.strides()) return at::Tensor();
  const auto zero_point = static_cast<uint8_t>(std::min<int64_t>(std::max<int64_t>(q.q_zero_point(), 0), 255));
  const auto* in = reinterpret_cast<const uint8_t*>(q.data_ptr());
  auto* po = reinterpret_cast<uint8_t*>(out.data_ptr());
  if (CpuHasAvx512Bw()) {
    ReluAvx512Bw(in, po, q.numel(), zero_point);
  } else if (CpuHasAvx2Fma()) {
    ReluAvx2(in, po, q.numel(), zero_point);
  } else {
    for (int64_t i = 0; i < q.numel(); ++i) po[i] = std::max(in[i], zero_point);
  }
  return out;
}

int64_t QuantizedCode(double value, double scale, int64_t zero_point, bool is_signed) {
  const float inv_scale = 1.0f / static_cast<float>(scale);
  float steps = std::nearbyint(static_cast<float>(value) * inv_scale);
  // Past any code either way (and in range for the cast, which is undefined
  // for infinity): the clamp below decides. NaN reads as the zero point.
  steps = std::isnan(steps) ? 0.0f : std::clamp(steps, -65536.0f, 65536.0f);
  const int64_t code = zero_point + static_cast<int64_t>(steps);
  return is_signed ? std::min<int64_t>(std::max<int64_t>(code, -128), 127)
                   : std::min<int64_t>(std::max<int64_t>(code, 0), 255);
}

at::Tensor ClampInt8(const at::Tensor& q, std::optional<double> min, std::optional<double> max) {
  const bool is_signed = q.scalar_type() == at::kQInt8;
  if (!q.is_quantized() || q.qscheme() != at::kPerTensorAffine || (!is_signed && q.scalar_type() != at::kQUInt8) ||
      !DenseLayout(q)) {
    return at::Tensor();
  }
  at::Tensor out = at::_empty_affine_quantized(q.sizes(), at::TensorOptions().dtype(q.scalar_type()), q.q_scale(),
                                               q.q_zero_point(), q.suggest_memory_format());
  if (out.strides() != q.strides()) return at::Tensor();
  const int64_t lo = min ? QuantizedCode(*min, q.q_scale(), q.q_zero_point(), is_signed) : (is_signed ? -128 : 0);
  const int64_t hi = max ? QuantizedCode(*max, q.q_scale(), q.q_zero_point(), is_signed) : (is_signed ? 127 : 255);
  const int64_t n = q.numel();
  if (is_signed) {
    const auto* in = reinterpret_cast<const int8_t*>(q.data_ptr());
    auto* po = reinterpret_cast<int8_t*>(out.data_ptr());
    for (int64_t i = 0; i < n; ++i) po[i] = static_cast<int8_t>(std::min<int64_t>(std::max<int64_t>(in[i], lo), hi));
  } else {
    const auto* in = reinterpret_cast<const uint8_t*>(q.data_ptr());
    auto* po = reinterpret_cast<uint8_t*>(out.data_ptr());
    const auto l = static_cast<uint8_t>(lo), h = static_cast<uint8_t>(hi);
    for (int64_t i = 0; i < n; ++i) po[i] = std::min(std::max(in[i], l), h);
  }
  return out;
}

at::Tensor QuantizeToChannelsLast(const at::Tensor& x_in, double scale, int64_t zero_point, int64_t channels) {
  if (x_in.dim() != 4 || x_in.scalar_type() != at::kFloat || (channels != 0 && channels < x_in.size(1))) {
    return at::quantize_per_tensor(x_in, scale, zero_point, at::kQUInt8);
  }
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  const int64_t c_out = channels == 0 ? c : channels;
  at::Tensor q = at::_empty_affine_quantized({n, c_out, x.size(2), x.size(3)}, at::TensorOptions().dtype(at::kQUInt8),
                                             scale, zero_point, at::MemoryFormat::ChannelsLast);
  const float* src = x.data_ptr<float>();
  uint8_t* dst = reinterpret_cast<uint8_t*>(q.data_ptr());
  // LibTorch's quantize_val: zero_point + nearbyint(x * (1.0f / float(scale))), clamped.
  const float inv_scale = 1.0f / static_cast<float>(scale);
  const float zp = static_cast<float>(zero_point);
  const auto fill = static_cast<uint8_t>(std::min<int64_t>(std::max<int64_t>(zero_point, 0), 255));  // the code of 0.0
  if (c == 3 && (c_out == 3 || c_out == 4) && hw % 16 == 0 && CpuHasAvx512Vbmi()) {
    for (int64_t b = 0; b < n; ++b) {
      QuantizeRgbAvx512Vbmi(src + b * c * hw, hw, inv_scale, zp, c_out == 4, fill, dst + b * c_out * hw);
    }
    return q;
  }
  std::vector<uint8_t> planes(static_cast<size_t>(c_out * hw), fill);
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t ch = 0; ch < c; ++ch) QuantizePlane(src + (b * c + ch) * hw, hw, inv_scale, zp, planes.data() + ch * hw);
    Interleave(planes.data(), c_out, hw, dst + b * c_out * hw);
  }
  return q;
}

at::Tensor ZeroPadInt8(const at::Tensor& q, const std::vector<int64_t>& pad) {
  const bool simple = q.qscheme() == at::kPerTensorAffine && q.element_size() == 1 && pad.size() % 2 == 0 &&
                      static_cast<int64_t>(pad.size()) / 2 <= q.dim() &&
                      std::all_of(pad.begin(), pad.end(), [](int64_t p) { return p >= 0; });
  const int64_t zero_point = q.q_zero_point();
  if (!simple) {
    at::Tensor padded = at::constant_pad_nd(q.int_repr(), pad, zero_point);
    return at::_make_per_tensor_quantized_tensor(padded, q.q_scale(), zero_point);
  }
  std::vector<int64_t> sizes = q.sizes().vec();
  for (size_t i = 0; i < pad.size() / 2; ++i) {
    const size_t dim = sizes.size() - 1 - i;
    sizes[dim] += pad[2 * i] + pad[2 * i + 1];
  }
  // A tensor that is both (e.g. [N, C, 1, 1]) is read, and padded, as NCHW.
  const bool channels_last = q.dim() == 4 && !q.is_contiguous() && q.is_contiguous(at::MemoryFormat::ChannelsLast);
  const at::MemoryFormat out_format = channels_last ? at::MemoryFormat::ChannelsLast
                                      : q.is_contiguous() ? at::MemoryFormat::Contiguous
                                                          : q.suggest_memory_format();
  at::Tensor out = at::_empty_affine_quantized(sizes, at::TensorOptions().dtype(q.scalar_type()), q.q_scale(),
                                               zero_point, out_format);
  uint8_t* dst = reinterpret_cast<uint8_t*>(out.data_ptr());
  const uint8_t* src = reinterpret_cast<const uint8_t*>(q.data_ptr());
  if (pad.size() == 4 && q.dim() == 4 && (channels_last || q.is_contiguous())) {
    // Rows are contiguous runs in both layouts: write each output row once,
    // fill and copied interior side by side.
    const int64_t n = q.size(0), c = q.size(1), h = q.size(2), w = q.size(3);
    const int64_t left = pad[0], right = pad[1], top = pad[2], h2 = sizes[2];
    const int64_t unit = channels_last ? c : 1;                // bytes per pixel in a row
    const int64_t planes = channels_last ? n : n * c;          // independent [h][w(*c)] planes
    const int fill = static_cast<int>(zero_point);
    const auto row_out = static_cast<size_t>((left + w + right) * unit);
    for (int64_t plane = 0; plane < planes; ++plane) {
      for (int64_t y = 0; y < h2; ++y) {
        uint8_t* row = dst + (plane * h2 + y) * static_cast<int64_t>(row_out);
        const int64_t src_y = y - top;
        if (src_y < 0 || src_y >= h) {
          std::memset(row, fill, row_out);
          continue;
        }
        std::memset(row, fill, static_cast<size_t>(left * unit));
        std::memcpy(row + left * unit, src + (plane * h + src_y) * w * unit, static_cast<size_t>(w * unit));
        std::memset(row + (left + w) * unit, fill, static_cast<size_t>(right * unit));
      }
    }
    return out;
  }
  at::Tensor bytes = RawBytes(out);
  bytes.fill_(zero_point);  // the int8 code of 0.0
  at::Tensor interior = bytes;
  for (size_t i = 0; i < pad.size() / 2; ++i) {
    const int64_t dim = static_cast<int64_t>(sizes.size() - 1 - i);
    interior = interior.narrow(dim, pad[2 * i], q.size(dim));
  }
  interior.copy_(RawBytes(q));
  return out;
}

}  // namespace quantd::engine
