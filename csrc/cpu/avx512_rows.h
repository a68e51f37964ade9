// Small AVX-512 float helpers of the convolution kernels (conv.cpp, winograd.cpp).
#pragma once
#include <algorithm>
#include <cstdint>

#include "common/cpu_tuning.h"

#if PYCNN_X86_DISPATCH
#include <immintrin.h>

namespace pycnn::cpu {

// Lanes [lo, hi) of 16 (clamped to [0, 16)).
inline __mmask16 lane_range(int64_t lo, int64_t hi) {  // integer work only: no target needed
  lo = std::clamp<int64_t>(lo, 0, 16), hi = std::clamp<int64_t>(hi, lo, 16);
  return static_cast<__mmask16>(((1u << hi) - 1) & ~((1u << lo) - 1));
}

// d[u] = src[u + shift] for u in [lo, hi), 0 for the rest of [0, SW): 16 columns per masked
// load + store (memcpy and two fills cost ~3 calls per 8-float row of an 8x8 map). Masked-off
// lanes are never read, so their addresses may lie outside x (hence uintptr).
PYCNN_TARGET_AVX512 inline void stage_row_f32(const float* src, int64_t shift, int64_t lo, int64_t hi, int64_t SW,
                                              float* d) {
  const uintptr_t base = reinterpret_cast<uintptr_t>(src);
  for (int64_t u = 0; u < SW; u += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(lane_range(lo - u, hi - u),
                                           reinterpret_cast<const float*>(base + (u + shift) * int64_t(sizeof(float))));
    _mm512_mask_storeu_ps(d + u, lane_range(0, SW - u), v);
  }
}

// Lane t = row[first + t * sw] for t in [lo, hi), 0 elsewhere; sw is 1 or 2 (stride-2 convs:
// 32 consecutive floats, only the even ones loaded, then compacted by one permute). Lanes and
// elements outside [lo, hi) are never read, so `row + first` may point outside the tensor.
PYCNN_TARGET_AVX512 PYCNN_ALWAYS_INLINE __m512 load_row_strided(const float* row, int64_t first, int64_t lo, int64_t hi,
                                                               int64_t sw) {
  const uintptr_t p = reinterpret_cast<uintptr_t>(row) + first * int64_t(sizeof(float));
  auto bits = [](int64_t a, int64_t b) {  // bits [a, b) of 32, clamped
    a = std::clamp<int64_t>(a, 0, 32), b = std::clamp<int64_t>(b, a, 32);
    return ((1ull << b) - 1) & ~((1ull << a) - 1);
  };
  if (sw == 1) return _mm512_maskz_loadu_ps(static_cast<__mmask16>(bits(lo, hi)), reinterpret_cast<const float*>(p));
  const uint64_t m = bits(2 * lo, 2 * hi) & 0x55555555ull;  // the even elements 2t of live lanes t
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  return _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(static_cast<__mmask16>(m), reinterpret_cast<const float*>(p)), even,
                                _mm512_maskz_loadu_ps(static_cast<__mmask16>(m >> 16), reinterpret_cast<const float*>(p) + 16));
}

// dst[t * dstride + i] = src[i * sstride + t] for i < 16, t < nout (<= 16): a 16 x 16 transpose
// in registers (unpack pairs of rows, then pairs of pairs, then gather the 128-bit lanes).
PYCNN_TARGET_AVX512 PYCNN_ALWAYS_INLINE void transpose16_f32(const float* src, int64_t sstride, float* dst,
                                                           int64_t dstride, int64_t nout) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * sstride);
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // r[4i + m]: within each 128-bit lane L, column 4L + m of rows 4i .. 4i+3.
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 v_even = _mm512_shuffle_f32x4(r[m], r[4 + m], 0x88), v_odd = _mm512_shuffle_f32x4(r[m], r[4 + m], 0xdd);
    const __m512 w_even = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0x88), w_odd = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0xdd);
    t[m] = _mm512_shuffle_f32x4(v_even, w_even, 0x88);       // column m      (lane 0)
    t[8 + m] = _mm512_shuffle_f32x4(v_even, w_even, 0xdd);   // column 8 + m  (lane 2)
    t[4 + m] = _mm512_shuffle_f32x4(v_odd, w_odd, 0x88);     // column 4 + m  (lane 1)
    t[12 + m] = _mm512_shuffle_f32x4(v_odd, w_odd, 0xdd);    // column 12 + m (lane 3)
  }
  for (int64_t c = 0; c < nout; ++c) _mm512_storeu_ps(dst + c * dstride, t[c]);
}

}  // namespace pycnn::cpu
#endif
