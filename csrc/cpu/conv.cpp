// conv2d by im2col + GEMM, and its two gradients (conv_transpose2d's forward is the input one).
//
// Per sample and group g (Cg = C/groups input channels, Kg = K/groups outputs, P = OH*OW):
//   forward        y_g  [Kg, P]        = W_g [Kg, Cg*kh*kw] @ col_g [Cg*kh*kw, P]
//   input grad     col_g               = W_g^T @ gy_g, then col2im(col) -> gx
//   weight grad    gW_g               += gy_g @ col_g^T          (summed over the batch)
// col is im2col(x) for one sample: all groups stacked, C*kh*kw rows of P columns. The forward
// and the weight gradient never write it: their GEMMs pack B straight from x (implicit im2col,
// gemm_custom.h), so each x value goes once into the packed panels instead of through a column
// matrix bigger than L2. The input gradient still writes columns, one sample per workspace slot,
// then col2im (a plain permutation when kernel == stride, as in conv_transpose2d 2x2 s2). The
// weight (the GEMM's A for every sample) is packed once per call. A pointwise conv (1x1,
// stride 1, no padding) uses x itself as its column matrix.
//
// Threads: forward and input gradient give each thread whole samples (the GEMM runs single-
// threaded inside, no sync per sample); leftover samples run one at a time with the GEMM's own
// parallelism. The weight gradient (groups == 1, C >= threads) gives each thread a run of input
// channels, i.e. its own columns of gW, and each thread walks the whole batch in order: one
// parallel region per call, and every gW element is summed in the same order whatever the
// thread count (per-thread partial sums over samples would change the rounding with it). Other
// weight gradients go sample by sample with the parallelism inside im2col and the GEMM. col2im
// is a scatter, but each input channel plane belongs to one thread and is summed in a fixed
// order: deterministic.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#include "common/cpu_tuning.h"
#include "common/parallel.h"
#include "cpu/kernels.h"
#include "cpu/gemm_custom.h"

namespace pycnn::cpu {
namespace {

// Experiment switch (kept on: measured faster); off = the explicit im2col path.
constexpr bool g_implicit_im2col = true;

int64_t ceil_div_nonneg(int64_t a, int64_t b) { return a <= 0 ? 0 : (a + b - 1) / b; }

// Output columns ow whose input column ow*sw + off lies in [0, W): [lo, hi) within [0, OW).
struct ColumnRange {
  int64_t lo, hi;
};
// (ow >= ceil(-off/sw) gives w >= 0; ow < ceil((W-off)/sw) gives ow*sw < W-off, so w < W.)
ColumnRange valid_columns(int64_t off, int64_t W, int64_t sw, int64_t OW) {
  const int64_t hi = std::min(OW, ceil_div_nonneg(W - off, sw));
  return {std::min(hi, ceil_div_nonneg(-off, sw)), hi};
}

// col[(c*kh + i)*kw + j][oh*OW + ow] = x[c][oh*sh - ph + i*dh][ow*sw - pw + j*dw], 0 outside,
// for channels [c0, c1) of one sample x [C, H, W].
template <typename T>
void im2col(const Conv2dShape& s, const T* x, int64_t c0, int64_t c1, T* col) {
  const int64_t P = s.OH * s.OW;
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t i = 0; i < s.kh; ++i) {
      for (int64_t j = 0; j < s.kw; ++j) {
        T* row = col + ((c * s.kh + i) * s.kw + j) * P;
        const int64_t off = j * s.dw - s.pw;
        const ColumnRange r = valid_columns(off, s.W, s.sw, s.OW);
        for (int64_t oh = 0; oh < s.OH; ++oh) {
          T* dst = row + oh * s.OW;
          const int64_t h = oh * s.sh - s.ph + i * s.dh;
          if (h < 0 || h >= s.H) {
            std::fill(dst, dst + s.OW, T(0));
            continue;
          }
          const T* src = x + (c * s.H + h) * s.W;  // src[ow * sw + off] for ow in [lo, hi)
          std::fill(dst, dst + r.lo, T(0));
          if (s.sw == 1) {
            if (r.hi > r.lo) std::memcpy(dst + r.lo, src + r.lo + off, sizeof(T) * (r.hi - r.lo));
          } else {
            for (int64_t ow = r.lo; ow < r.hi; ++ow) dst[ow] = src[ow * s.sw + off];
          }
          std::fill(dst + r.hi, dst + s.OW, T(0));
        }
      }
    }
  }
}

// col[r][pa : pb] of one sample x [C, H, W] (r = (c*kh + i)*kw + j, the channel counted from the
// start of x), written to dst[0], dst[stride], ...: one row of im2col without the column matrix.
// Used by the implicit-im2col GEMM packers below; produces exactly im2col's values.
template <typename T>
void im2col_row(const Conv2dShape& s, const T* x, int64_t r, int64_t pa, int64_t pb, T* dst,
                int64_t stride) {
  const int64_t taps = s.kh * s.kw;
  const int64_t c = r / taps, i = (r % taps) / s.kw, j = r % s.kw;
  const int64_t off = j * s.dw - s.pw;
  const ColumnRange valid = valid_columns(off, s.W, s.sw, s.OW);
  int64_t oh = pa / s.OW, ow = pa % s.OW;
  for (int64_t p = pa; p < pb; ++oh, ow = 0) {
    const int64_t seg_end = std::min(s.OW, ow + (pb - p));  // this output row's part of [pa, pb)
    const int64_t h = oh * s.sh - s.ph + i * s.dh;
    T* d = dst + (p - pa) * stride - ow * stride;  // d[ow' * stride] for ow' in [ow, seg_end)
    if (h < 0 || h >= s.H) {
      for (int64_t q = ow; q < seg_end; ++q) d[q * stride] = T(0);
    } else {
      const T* src = x + (c * s.H + h) * s.W + off;  // src[ow' * sw] for ow' in [lo, hi)
      const int64_t lo = std::max(ow, valid.lo), hi = std::min(seg_end, valid.hi);
      int64_t q = ow;
      for (; q < std::min(lo, seg_end); ++q) d[q * stride] = T(0);
      if (stride == 1 && s.sw == 1) {
        if (hi > q) std::memcpy(d + q, src + q, sizeof(T) * (hi - q));
        q = std::max(q, hi);
      } else {
        for (; q < hi; ++q) d[q * stride] = src[q * s.sw];
      }
      for (; q < seg_end; ++q) d[q * stride] = T(0);
    }
    p += seg_end - ow;
  }
}

#if PYCNN_X86_DISPATCH
// The forward packer's hot case (float, horizontal stride 1) with AVX-512 masked loads: the
// columns [j0, j1) of col rows [p0, p0 + kc) straight into the GEMM's NR-column panels. Each
// piece (within one output row and one panel, <= 16 pixels) is one masked load + one masked
// store; lanes whose input column lies in the padding are masked off (masked-off lanes are
// never read, so their addresses may point outside x). Produces exactly im2col's values.
// Why: for the small ResNet maps (OW = 8 or 16) the generic path spends ~20 cycles of set-up
// and a memcpy call per 8-16 floats, as much time as the GEMM itself (napkin: 64ch 8x8,
// 576 rows x 8 pieces x ~20 cycles = 92K cycles vs 147K cycles of FMAs per sample).
PYCNN_TARGET_AVX512 void pack_im2col_f32_avx512(const Conv2dShape& s, const float* x, int64_t j0,
                                                 int64_t j1, int64_t p0, int64_t kc, int NR, float* out) {
  const int64_t taps = s.kh * s.kw;
  const int64_t tail = (j1 - j0) % NR;  // columns of the last panel that are real
  const int64_t last_panel = (j1 - j0) / NR;
  for (int64_t k = 0; k < kc; ++k) {
    const int64_t r = p0 + k;
    const int64_t c = r / taps, i = (r % taps) / s.kw, j = r % s.kw;
    const int64_t off = j * s.dw - s.pw;
    const ColumnRange valid = valid_columns(off, s.W, 1, s.OW);
    const float* plane = x + c * s.H * s.W;
    int64_t oh = j0 / s.OW, ow = j0 % s.OW, q = 0, col = 0;
    for (int64_t p = j0; p < j1;) {
      const int64_t n = std::min(std::min<int64_t>(s.OW - ow, NR - col), std::min<int64_t>(j1 - p, 16));
      float* d = out + q * NR * kc + k * NR + col;
      const int64_t h = oh * s.sh - s.ph + i * s.dh;
      const __mmask16 all = static_cast<__mmask16>((1u << n) - 1);
      if (h < 0 || h >= s.H) {
        _mm512_mask_storeu_ps(d, all, _mm512_setzero_ps());
      } else {
        const int64_t tlo = std::clamp<int64_t>(valid.lo - ow, 0, n);
        const int64_t thi = std::clamp<int64_t>(valid.hi - ow, 0, n);
        const __mmask16 live = static_cast<__mmask16>(((1u << thi) - 1) & ~((1u << tlo) - 1));
        const float* src = reinterpret_cast<const float*>(
            reinterpret_cast<uintptr_t>(plane + h * s.W) + (ow + off) * int64_t(sizeof(float)));
        _mm512_mask_storeu_ps(d, all, _mm512_maskz_loadu_ps(live, src));
      }
      p += n;
      col += n;
      if (col == NR) col = 0, ++q;
      ow += n;
      if (ow == s.OW) ow = 0, ++oh;
    }
    if (tail) std::fill(out + last_panel * NR * kc + k * NR + tail, out + last_panel * NR * kc + (k + 1) * NR, 0.0f);
  }
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

// The weight gradient's packer: op(B)[p][r] = col[r0 + r][p] for panel columns [j0, j1) and
// rows [p0, p0 + kc). The column matrix is read along p (contiguous in x) into a 32 x 128 staging
// tile in L1, then transposed 16 x 16 in registers into the panels: the scalar version wrote one
// float per cache line (panel stride NR = 128 bytes) and was ~60% of the weight gradient's time.
template <typename T>
void pack_im2col_transposed(const Conv2dShape& s, const T* x, int64_t r0, int64_t j0, int64_t j1, int64_t p0,
                            int64_t kc, int NR, T* out);
template <>
PYCNN_TARGET_AVX512 void pack_im2col_transposed<float>(const Conv2dShape& s, const float* x, int64_t r0,
                                                        int64_t j0, int64_t j1, int64_t p0, int64_t kc, int NR,
                                                        float* out) {
  constexpr int64_t KB = 128, kMaxNR = 32;
  alignas(64) float stage[kMaxNR * KB];
  std::memset(stage, 0, sizeof(stage));
  for (int64_t j = j0; j < j1; j += NR, out += NR * kc) {
    const int64_t cols_here = std::min<int64_t>(NR, j1 - j);
    for (int64_t kb = 0; kb < kc; kb += KB) {
      const int64_t kl = std::min(KB, kc - kb);
      for (int64_t jj = 0; jj < NR; ++jj) {
        if (jj < cols_here) im2col_row(s, x, r0 + j + jj, p0 + kb, p0 + kb + kl, stage + jj * KB, 1);
        else std::memset(stage + jj * KB, 0, sizeof(float) * KB);
      }
      for (int64_t t0 = 0; t0 < kl; t0 += 16)
        for (int64_t half = 0; half < NR; half += 16)
          transpose16_f32(stage + half * KB + t0, KB, out + (kb + t0) * NR + half, NR, std::min<int64_t>(16, kl - t0));
    }
  }
}
#endif

// The adjoint of im2col for channels [c0, c1): each gx plane is zeroed, then every column entry
// is added to the pixel it was read from, in (i, j, oh, ow) order.
template <typename T>
void col2im(const Conv2dShape& s, const T* col, int64_t c0, int64_t c1, T* gx) {
  const int64_t P = s.OH * s.OW;
  if (s.kh == s.sh && s.kw == s.sw && s.dh == 1 && s.dw == 1 && s.ph == 0 && s.pw == 0 &&
      s.OH * s.sh == s.H && s.OW * s.sw == s.W) {
    // Kernel == stride, no padding, the taps tile the input exactly (conv_transpose2d 2x2 s2):
    // every gx pixel receives exactly one column entry, so col2im is a permutation. Written in
    // gx order (one output row at a time) with no zero fill and no read-modify-write.
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        for (int64_t i = 0; i < s.kh; ++i) {
          T* dst = gx + (c * s.H + oh * s.sh + i) * s.W;
          for (int64_t j = 0; j < s.kw; ++j) {
            const T* src = col + ((c * s.kh + i) * s.kw + j) * P + oh * s.OW;
            for (int64_t ow = 0; ow < s.OW; ++ow) dst[ow * s.sw + j] = src[ow];
          }
        }
      }
    }
    return;
  }
  for (int64_t c = c0; c < c1; ++c) {
    T* plane = gx + c * s.H * s.W;
    std::fill(plane, plane + s.H * s.W, T(0));
    for (int64_t i = 0; i < s.kh; ++i) {
      for (int64_t j = 0; j < s.kw; ++j) {
        const T* row = col + ((c * s.kh + i) * s.kw + j) * P;
        const int64_t off = j * s.dw - s.pw;
        const ColumnRange r = valid_columns(off, s.W, s.sw, s.OW);
        for (int64_t oh = 0; oh < s.OH; ++oh) {
          const int64_t h = oh * s.sh - s.ph + i * s.dh;
          if (h < 0 || h >= s.H) continue;
          T* dst = plane + h * s.W;  // dst[ow * sw + off] for ow in [lo, hi)
          const T* src = row + oh * s.OW;
          for (int64_t ow = r.lo; ow < r.hi; ++ow) dst[ow * s.sw + off] += src[ow];
        }
      }
    }
  }
}

// Samples whose columns fit the workspace at once (all of them for pointwise convs).
int64_t workspace_slots(const Conv2dShape& s, int64_t ws_elems, const char* op) {
  if (s.is_pointwise()) return s.N;
  const int64_t per_sample = s.C * s.kh * s.kw * s.OH * s.OW;
  if (per_sample == 0) return s.N;
  if (ws_elems < per_sample)
    throw std::invalid_argument(std::string(op) + ": workspace of " + std::to_string(ws_elems) +
                                " elements is smaller than one sample's columns (" +
                                std::to_string(per_sample) + ")");
  return std::max<int64_t>(1, std::min(s.N, ws_elems / per_sample));
}

// Runs sample_fn(n, col, inner_parallel) for every sample n, col being a one-sample slot of the
// workspace. The batch goes in chunks of `lanes` samples, one slot and one thread per lane:
// lane t works through its own run of N / lanes samples. Samples left over run one at a
// time with the parallelism inside (im2col over channels, the GEMM's own threads).
template <typename T, typename F>
void for_samples(int64_t N, int64_t slots, T* ws, int64_t per_sample, F&& sample_fn) {
  const int64_t lanes = std::min<int64_t>(get_num_threads(), slots);
  const int64_t per_lane = lanes > 1 ? N / lanes : 0;
  if (per_lane > 0) {
    parallel_for(lanes, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t)
        for (int64_t n = t * per_lane; n < (t + 1) * per_lane; ++n) sample_fn(n, ws + t * per_sample, false);
    });
  }
  for (int64_t n = lanes * per_lane; n < N; ++n) sample_fn(n, ws, true);
}

}  // namespace

template <typename T>
void conv2d_forward(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y, T* ws,
                    int64_t ws_elems) {
  const int64_t P = s.OH * s.OW, G = s.groups, Kg = s.K_per_group();
  const int64_t rows = s.col_rows();
  if (s.N == 0 || s.K == 0 || P == 0) return;
  const bool pointwise = s.is_pointwise();
  const int64_t per_sample = pointwise ? 0 : s.C * s.kh * s.kw * P;
  const int64_t slots = workspace_slots(s, ws_elems, "conv2d_forward");
  // Implicit im2col (columns built inside the GEMM's B packing) unless the conv is pointwise.
  const bool implicit = !pointwise && g_implicit_im2col;
  // The weight is the GEMM's A for every sample: pack it once per call (per group).
  const int64_t wpacked_per_group = implicit ? gemm_packed_a_size<T>(Kg, rows) : 0;
  std::vector<T> wpacked(size_t(wpacked_per_group * G));
  for (int64_t g = 0; g < G && implicit; ++g)
    gemm_pack_a<T>(false, Kg, rows, w + g * Kg * rows, rows, wpacked.data() + g * wpacked_per_group);

  auto sample = [&](int64_t n, T* col, bool inner_parallel) {
    const T* xs = x + n * s.C * s.H * s.W;
    T* ys = y + n * s.K * P;
    if (!pointwise && !implicit) {
      if (inner_parallel)
        parallel_for(s.C, 1, [&](int64_t c0, int64_t c1) { im2col(s, xs, c0, c1, col); });
      else
        im2col(s, xs, 0, s.C, col);
    }
    const T* cols = pointwise ? xs : col;
    for (int64_t g = 0; g < G; ++g) {
      if (implicit) {
        // Columns packed straight from x: panel rows are col rows r, panel columns pixels.
        const T* xg = xs + g * s.C_per_group() * s.H * s.W;
        PackBPanel<T> pack = [&](int64_t j0, int64_t j1, int64_t p0, int64_t kc, int NR, T* out) {
#if PYCNN_X86_DISPATCH
          if constexpr (std::is_same_v<T, float>) {
            if (s.sw == 1 && cpu_has_avx512()) {
              pack_im2col_f32_avx512(s, xg, j0, j1, p0, kc, NR, out);
              return;
            }
          }
#endif
          // One im2col row segment [j0, j1) per k row (into an L1-resident staging row), then
          // cut into the panels: per-call set-up once per row, not once per row and panel.
          constexpr int64_t kStage = 4096;
          alignas(64) T stage[kStage];
          const int64_t npan = (j1 - j0 + NR - 1) / NR;
          for (int64_t jb = j0; jb < j1; jb += kStage) {
            const int64_t je = std::min(j1, jb + kStage);
            for (int64_t k = 0; k < kc; ++k) {
              im2col_row(s, xg, p0 + k, jb, je, stage, 1);
              for (int64_t q = (jb - j0) / NR; q < npan && j0 + q * NR < je; ++q) {
                const int64_t a = j0 + q * NR, n = std::min<int64_t>(NR, je - a);
                T* dst = out + q * NR * kc + k * NR;
                std::memcpy(dst, stage + (a - jb), sizeof(T) * n);
                std::fill(dst + n, dst + NR, T(0));
              }
            }
          }
        };
        gemm_custom_b<T>(false, Kg, P, rows, T(1), w + g * Kg * rows, rows, pack, T(0), ys + g * Kg * P, P,
                         wpacked.data() + g * wpacked_per_group);
      } else {
        gemm<T>(false, false, Kg, P, rows, T(1), w + g * Kg * rows, rows, cols + g * rows * P, P, T(0),
                ys + g * Kg * P, P);
      }
    }
    if (bias) {
      for (int64_t k = 0; k < s.K; ++k) {
        T* plane = ys + k * P;
        const T b = bias[k];
        for (int64_t p = 0; p < P; ++p) plane[p] += b;
      }
    }
  };
  for_samples(s.N, slots, ws, per_sample, sample);
}

template <typename T>
void conv2d_backward_input(const Conv2dShape& s, const T* gy, const T* w, T* gx, T* ws,
                           int64_t ws_elems) {
  const int64_t P = s.OH * s.OW, G = s.groups, Kg = s.K_per_group();
  const int64_t rows = s.col_rows();
  if (s.N == 0 || s.C * s.H * s.W == 0) return;
  const bool pointwise = s.is_pointwise();
  const int64_t per_sample = pointwise ? 0 : s.C * s.kh * s.kw * P;
  const int64_t slots = workspace_slots(s, ws_elems, "conv2d_backward_input");
  // w^T is the GEMM's A for every sample: pack it once per call (per group).
  const int64_t wpacked_per_group = gemm_packed_a_size<T>(rows, Kg);
  std::vector<T> wpacked(size_t(wpacked_per_group * G));
  for (int64_t g = 0; g < G; ++g)
    gemm_pack_a<T>(true, rows, Kg, w + g * Kg * rows, rows, wpacked.data() + g * wpacked_per_group);

  auto sample = [&](int64_t n, T* col, bool inner_parallel) {
    const T* gys = gy + n * s.K * P;
    T* gxs = gx + n * s.C * s.H * s.W;
    T* cols = pointwise ? gxs : col;  // pointwise: the columns are gx itself
    for (int64_t g = 0; g < G; ++g) {
      const T* b = gys + g * Kg * P;  // [Kg, P], row-major: panels are row pieces
      PackBPanel<T> pack = [&](int64_t j0, int64_t j1, int64_t p0, int64_t kc, int NR, T* out) {
        for (int64_t j = j0; j < j1; j += NR, out += NR * kc) {
          const int64_t n = std::min<int64_t>(NR, j1 - j);
          for (int64_t k = 0; k < kc; ++k) {
            std::memcpy(out + k * NR, b + (p0 + k) * P + j, sizeof(T) * n);
            std::fill(out + k * NR + n, out + (k + 1) * NR, T(0));
          }
        }
      };
      gemm_custom_b<T>(true, rows, P, Kg, T(1), w + g * Kg * rows, rows, pack, T(0), cols + g * rows * P, P,
                       wpacked.data() + g * wpacked_per_group);
    }
    if (!pointwise) {
      if (inner_parallel)
        parallel_for(s.C, 1, [&](int64_t c0, int64_t c1) { col2im(s, col, c0, c1, gxs); });
      else
        col2im(s, col, 0, s.C, gxs);
    }
  };
  for_samples(s.N, slots, ws, per_sample, sample);
}

template <typename T>
void conv2d_backward_weight(const Conv2dShape& s, const T* x, const T* gy, T* gw, T* gb, T* ws,
                            int64_t ws_elems) {
  const int64_t P = s.OH * s.OW, G = s.groups, Kg = s.K_per_group();
  const int64_t rows = s.col_rows();
  if (gb) channel_sum<T>(s.N, s.K, P, gy, gb);
  if (!gw) return;
  if (s.N == 0 || P == 0) {  // an empty sum
    std::fill(gw, gw + s.K * rows, T(0));
    return;
  }
  // One sample at a time, its columns built right before the GEMM that reads them (they are
  // still in cache); the sum runs in batch order so the result does not depend on threads.
  workspace_slots(s, ws_elems, "conv2d_backward_weight");  // checks the workspace holds a sample
  const bool pointwise = s.is_pointwise();
  const int64_t taps = s.kh * s.kw;
  const int threads = get_num_threads();
  if (G == 1 && s.C >= threads && threads > 1) {
    // Each thread owns a run of input channels, i.e. the gw columns [c0*taps, c1*taps), and walks
    // the whole batch for them: im2col of its channels into its rows of the one-sample workspace,
    // then a single-threaded GEMM into its columns of gw. One parallel region per call instead of
    // ~9 per sample (im2col + 2 per k block of the inner-parallel GEMM), and every gw element is
    // still summed over samples in batch order and over P in the GEMM's k order (with alpha = 1
    // and beta in {0, 1} a tile's position does not change its arithmetic): thread-count proof.
    parallel_for(s.C, 1, [&](int64_t c0, int64_t c1) {
      const int64_t r0 = c0 * taps, nrows = (c1 - c0) * taps;
      for (int64_t n = 0; n < s.N; ++n) {
        const T* xs = x + n * s.C * s.H * s.W;
        const T beta = n == 0 ? T(0) : T(1);
        if (pointwise) {
          gemm<T>(false, true, s.K, nrows, P, T(1), gy + n * s.K * P, P, xs + r0 * P, P, beta, gw + r0, rows);
          continue;
        }
        // Implicit im2col: op(B)[p][r] = col[r0 + r][p], panel column jj is col row r0 + j0 + jj.
        PackBPanel<T> pack = [&](int64_t j0, int64_t j1, int64_t p0, int64_t kc, int NR, T* out) {
#if PYCNN_X86_DISPATCH
          if constexpr (std::is_same_v<T, float>) {
            if (NR % 16 == 0 && NR <= 32 && cpu_has_avx512()) {
              pack_im2col_transposed<float>(s, xs, r0, j0, j1, p0, kc, NR, out);
              return;
            }
          }
#endif
          for (int64_t j = j0; j < j1; j += NR, out += NR * kc) {
            const int64_t cols_here = std::min<int64_t>(NR, j1 - j);
            for (int64_t jj = 0; jj < cols_here; ++jj) im2col_row(s, xs, r0 + j + jj, p0, p0 + kc, out + jj, NR);
            for (int64_t k = 0; k < kc; ++k) std::fill(out + k * NR + cols_here, out + (k + 1) * NR, T(0));
          }
        };
        gemm_custom_b<T>(false, s.K, nrows, P, T(1), gy + n * s.K * P, P, pack, beta, gw + r0, rows);
      }
    });
    return;
  }
  for (int64_t n = 0; n < s.N; ++n) {
    const T* xs = x + n * s.C * s.H * s.W;
    if (!pointwise) parallel_for(s.C, 1, [&](int64_t c0, int64_t c1) { im2col(s, xs, c0, c1, ws); });
    const T* cols = pointwise ? xs : ws;
    const T beta = n == 0 ? T(0) : T(1);  // the first sample overwrites gw (never read)
    for (int64_t g = 0; g < G; ++g)
      gemm<T>(false, true, Kg, rows, P, T(1), gy + n * s.K * P + g * Kg * P, P, cols + g * rows * P, P, beta,
              gw + g * Kg * rows, rows);
  }
}

#define PYCNN_INSTANTIATE(T)                                                                           \
  template void conv2d_forward<T>(const Conv2dShape&, const T*, const T*, const T*, T*, T*, int64_t); \
  template void conv2d_backward_input<T>(const Conv2dShape&, const T*, const T*, T*, T*, int64_t);    \
  template void conv2d_backward_weight<T>(const Conv2dShape&, const T*, const T*, T*, T*, T*, int64_t);
PYCNN_INSTANTIATE(float)
PYCNN_INSTANTIATE(double)

}  // namespace pycnn::cpu
