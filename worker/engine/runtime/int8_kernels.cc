#include "worker/engine/runtime/int8_kernels.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

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
    const float v = std::min(std::max(zp + std::nearbyint(plane[p] * inv_scale), 0.0f), 255.0f);
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

}  // namespace

at::Tensor QuantizeToChannelsLast(const at::Tensor& x_in, double scale, int64_t zero_point) {
  if (x_in.dim() != 4 || x_in.scalar_type() != at::kFloat) {
    return at::quantize_per_tensor(x_in, scale, zero_point, at::kQUInt8);
  }
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  at::Tensor q = at::_empty_affine_quantized(x.sizes(), at::TensorOptions().dtype(at::kQUInt8), scale, zero_point,
                                             at::MemoryFormat::ChannelsLast);
  const float* src = x.data_ptr<float>();
  uint8_t* dst = reinterpret_cast<uint8_t*>(q.data_ptr());
  // LibTorch's quantize_val: zero_point + nearbyint(x * (1.0f / float(scale))), clamped.
  const float inv_scale = 1.0f / static_cast<float>(scale);
  const float zp = static_cast<float>(zero_point);
  std::vector<uint8_t> planes(static_cast<size_t>(c * hw));
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t ch = 0; ch < c; ++ch) QuantizePlane(src + (b * c + ch) * hw, hw, inv_scale, zp, planes.data() + ch * hw);
    Interleave(planes.data(), c, hw, dst + b * c * hw);
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
  at::Tensor out = at::_empty_affine_quantized(sizes, at::TensorOptions().dtype(q.scalar_type()), q.q_scale(),
                                               zero_point, q.suggest_memory_format());
  uint8_t* dst = reinterpret_cast<uint8_t*>(out.data_ptr());
  const uint8_t* src = reinterpret_cast<const uint8_t*>(q.data_ptr());
  const bool channels_last = q.dim() == 4 && q.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (pad.size() == 4 && (channels_last || q.is_contiguous())) {
    // Rows of the input are contiguous runs in both layouts: memset the fill,
    // then copy each row into place.
    std::memset(dst, static_cast<int>(zero_point), static_cast<size_t>(out.numel()));
    const int64_t n = q.size(0), c = q.size(1), h = q.size(2), w = q.size(3);
    const int64_t left = pad[0], top = pad[2], w2 = sizes[3], h2 = sizes[2];
    if (channels_last) {
      for (int64_t b = 0; b < n; ++b) {
        for (int64_t y = 0; y < h; ++y) {
          std::memcpy(dst + ((b * h2 + y + top) * w2 + left) * c, src + (b * h + y) * w * c, static_cast<size_t>(w * c));
        }
      }
    } else {
      for (int64_t plane = 0; plane < n * c; ++plane) {
        for (int64_t y = 0; y < h; ++y) {
          std::memcpy(dst + (plane * h2 + y + top) * w2 + left, src + (plane * h + y) * w, static_cast<size_t>(w));
        }
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
