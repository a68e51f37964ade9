// conv2d by im2col + GEMM, and its two gradients (conv_transpose2d's forward is the input one).
//
// Per sample and group g (Cg = C/groups input channels, Kg = K/groups outputs, P = OH*OW):
//   forward        y_g  [Kg, P]        = W_g [Kg, Cg*kh*kw] @ col_g [Cg*kh*kw, P]
//   input grad     col_g               = W_g^T @ gy_g, then col2im(col) -> gx
//   weight grad    gW_g               += gy_g @ col_g^T          (summed over the batch)
// Float (every target, written once over simd/vec.h; double keeps the plain GEMM path above as
// the reference): forward_kernel picks Winograd (winograd.cpp) where it takes the shape, else the
// direct kernel for one group and stride 1 (every ResNet 3x3 stride-1 layer, and through it the
// stride-1 input gradient) or strided with horizontal stride <= 2 where output rows are whole
// vectors or the input has at most 32 channels (ResNet's stride-2 3x3 layers, conv_transpose2d
// 2x2 s2's input gradient) (conv2d_forward_direct_f32: no GEMM panels at all), else the GEMM with
// vectorised implicit im2col (pack_im2col_vec). The float weight gradient with one group is a
// batch of dot products (weight_grad_dot) instead of a GEMM over transposed columns.
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
// thread count (per-thread partial sums over samples would change the rounding with it); the
// float dot-product form splits the same way, whatever C and the thread count. Other
// weight gradients go sample by sample with the parallelism inside im2col and the GEMM. col2im
// is a scatter, but each input channel plane belongs to one thread and is summed in a fixed
// order: deterministic.
#include <algorithm>
#include <array>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common/cpu_tuning.h"
#include "common/parallel.h"
#include "cpu/kernels.h"
#include "cpu/gemm_custom.h"
#include "cpu/winograd.h"
#include "simd/vec.h"

PYCNN_TARGET_BEGIN  // this target's instructions from here to PYCNN_TARGET_END

namespace pycnn::cpu::PYCNN_ISA {
namespace {

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


// ---- Float fast paths over the vector layer (simd/vec.h): every target, float only ----------
// (double stays on the plain im2col + GEMM path above: the reference they are tested against.)
constexpr int L = kLanesOf<float>;

// d[0, n) = output columns [ow, ow + n) (n <= L) of one im2col row: lane t is x's input row
// `row` (nullptr: a padding row) at column (ow + t)*sw + off, zero outside the valid columns.
// Lanes outside them are never read (row + ow*sw + off may point outside x).
inline void im2col_piece(const float* row, int64_t sw, int64_t off, ColumnRange valid, int64_t ow, int64_t n,
                         float* d) {
  if (!row) return store_first(d, zero<float>(), n);
  const int64_t tlo = std::clamp<int64_t>(valid.lo - ow, 0, n), thi = std::clamp<int64_t>(valid.hi - ow, 0, n);
  store_first(d, load_row_strided(row, ow * sw + off, tlo, thi, sw), n);
}

// The input row of col row (c, i) for output row oh, or nullptr where it lies in the padding.
inline const float* input_row(const Conv2dShape& s, const float* x, int64_t c, int64_t i, int64_t oh) {
  const int64_t h = oh * s.sh - s.ph + i * s.dh;
  return h < 0 || h >= s.H ? nullptr : x + (c * s.H + h) * s.W;
}

// The forward's implicit-im2col packer (horizontal stride 1 or 2): columns [j0, j1) of col rows
// [p0, p0 + kc) straight into the GEMM's NR-column panels, one load_row_strided + store_first
// per piece (<= L pixels within one output row and one panel). Exactly im2col's values.
// Why: for the small ResNet maps (OW = 8 or 16) the scalar path spends ~20 cycles of set-up and
// a memcpy call per 8-16 floats, as much time as the GEMM itself.
void pack_im2col_vec(const Conv2dShape& s, const float* x, int64_t j0, int64_t j1, int64_t p0, int64_t kc, int NR,
                     float* out) {
  const int64_t taps = s.kh * s.kw;
  const int64_t tail = (j1 - j0) % NR, last_panel = (j1 - j0) / NR;
  for (int64_t k = 0; k < kc; ++k) {
    const int64_t r = p0 + k;
    const int64_t c = r / taps, i = (r % taps) / s.kw, j = r % s.kw;
    const int64_t off = j * s.dw - s.pw;
    const ColumnRange valid = valid_columns(off, s.W, s.sw, s.OW);
    int64_t oh = j0 / s.OW, ow = j0 % s.OW, q = 0, col = 0;
    for (int64_t p = j0; p < j1;) {
      const int64_t n = std::min({s.OW - ow, int64_t(NR) - col, j1 - p, int64_t(L)});
      im2col_piece(input_row(s, x, c, i, oh), s.sw, off, valid, ow, n, out + q * NR * kc + k * NR + col);
      p += n, col += n, ow += n;
      if (col == NR) col = 0, ++q;
      if (ow == s.OW) ow = 0, ++oh;
    }
    if (tail) std::fill(out + last_panel * NR * kc + k * NR + tail, out + last_panel * NR * kc + (k + 1) * NR, 0.0f);
  }
}

// ---- Zero-padded row copies: the staging of the direct forward and of im2col_vec --------------
// Width of a row buffer holding pw zeros, the W input columns (rounded up to whole vectors) and
// zeros as far as `reach` (the first column no load touches).
int64_t padded_width(int64_t pw, int64_t W, int64_t reach) {
  return (std::max(pw + (W + L - 1) / L * L, reach) + L - 1) / L * L;
}

// The input row h of channel plane xc into prow[pw, pw + W) of a zero-margined row buffer (all
// zeros when h is outside the map). Full vectors, the tail loaded masked: what lands past W is
// zeros, so the right margin stays zero.
PYCNN_ALWAYS_INLINE void pad_row(const float* xc, int64_t h, int64_t H, int64_t W, int64_t pw, float* prow) {
  const bool live = h >= 0 && h < H;
  const float* src = xc + (live ? h : 0) * W;
  for (int64_t i = 0; i < W; i += L) store(prow + pw + i, live ? load_first(src + i, W - i) : zero<float>());
}

// d[u] = prow[u*sw + off] for u in [0, SW) (sw 1 or 2) from a padded row: plain loads (stride 2:
// two and a compaction) and whole-vector stores. The last store runs up to L - 1 floats past SW:
// callers stage rows in increasing address order, so that spill lands in a row written later (or
// in the buffer's slack). Masked loads and stores per row edge (vmaskmovps) were ~40 % of the
// stride-2 forward of ResNet's 16 -> 32 layer on AVX2.
PYCNN_ALWAYS_INLINE void stage_padded_row(const float* prow, int64_t off, int64_t SW, int64_t sw, float* d) {
  if (sw == 1) {
    for (int64_t u = 0; u < SW; u += L) store(d + u, load(prow + off + u));
  } else {
    for (int64_t u = 0; u < SW; u += L) {
      const float* q = prow + off + 2 * u;
      store(d + u, even_lanes(load(q), load(q + L)));
    }
  }
}

// im2col of channels [0, C) of one sample (horizontal stride 1 or 2) through a zero-padded copy
// of each channel plane: the rows of every tap are then plain loads (stride 2: two and a
// compaction) and whole-vector stores, with no masks at the padding (masked loads and stores per
// piece made the columns more than half of the stride-2 3x3 weight gradient on AVX2). Writes up
// to L - 1 floats past col + C * kh * kw * OH * OW (the rows go in increasing address order, so
// every other spill lands in a row written after it).
void im2col_vec(const Conv2dShape& s, const float* x, int64_t C, float* col) {
  const int64_t P = s.OH * s.OW, OWv = (s.OW + L - 1) / L * L;
  // Plane rows r = oh*sh + i*dh hold input row r - ph (zeros outside the map).
  const int64_t nrows = (s.OH - 1) * s.sh + (s.kh - 1) * s.dh + 1;
  const int64_t PW = padded_width(s.pw, s.W, (s.kw - 1) * s.dw + s.sw * OWv + L);
  thread_local std::vector<float> plane;
  if (plane.size() < size_t(nrows * PW)) plane.resize(size_t(nrows * PW));
  std::fill(plane.begin(), plane.begin() + nrows * PW, 0.0f);  // the margins (another shape's data)
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t r = 0; r < nrows; ++r) pad_row(x + c * s.H * s.W, r - s.ph, s.H, s.W, s.pw, plane.data() + r * PW);
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < s.kw; ++j) {
        float* row = col + ((c * s.kh + i) * s.kw + j) * P;
        for (int64_t oh = 0; oh < s.OH; ++oh)
          stage_padded_row(plane.data() + (oh * s.sh + i * s.dh) * PW, j * s.dw, s.OW, s.sw, row + oh * s.OW);
      }
  }
}

// ---- Weight gradient as dot products ----------------------------------------------------------
// gw[k][r] = sum over samples n and pixels p of gy[n][k][p] * col_n[r][p]: both operands are
// contiguous along the reduction index p, so instead of transposing the columns into GEMM panels
// (one float per cache line of the panel) each output is an L-lane dot product along p, reduced
// to a scalar at the end. A KT x RT tile keeps KT x RT accumulators and loads KT + RT vectors per
// KT * RT FMAs (kDotK x kDotR: 4 x 4 with 32 registers, 4 x 3 with 16). The lanes run over a group of
// samples (dot_group: ns * P ~ 512) before the reduction, so small maps do not spend more on
// reductions than on FMAs.
// Determinism: every gw element goes through the same arithmetic (lane l sums p = l mod L in
// order over the group's samples, then reduce_add's fixed fold, then += in group order) whatever
// the tile it sits in or the thread that computes it.
constexpr int kDotK = 4, kDotR = kRegisters >= 32 ? 4 : 3;

template <int KT, int RT>
void dot_tile(int64_t ns, int64_t P, const float* gy, int64_t gy_sample_stride, const float* col,
              int64_t col_sample_stride, float* gw, int64_t ldw, bool first) {
  vec<float> acc[KT][RT];
  for (int i = 0; i < KT; ++i)
    for (int j = 0; j < RT; ++j) acc[i][j] = zero<float>();
  for (int64_t nl = 0; nl < ns; ++nl) {
    const float* g = gy + nl * gy_sample_stride;
    const float* c = col + nl * col_sample_stride;
    auto step = [&](int64_t p, int64_t n) {  // pixels [p, p + n), n <= L (the rest zero lanes)
      vec<float> cv[RT];
      for (int j = 0; j < RT; ++j) cv[j] = n == L ? load(c + j * P + p) : load_first(c + j * P + p, n);
      for (int i = 0; i < KT; ++i) {
        const vec<float> gv = n == L ? load(g + i * P + p) : load_first(g + i * P + p, n);
        for (int j = 0; j < RT; ++j) acc[i][j] = fma(gv, cv[j], acc[i][j]);
      }
    };
    int64_t p = 0;
    for (; p + L <= P; p += L) step(p, L);
    if (p < P) step(p, P - p);
  }
  for (int i = 0; i < KT; ++i)
    for (int j = 0; j < RT; ++j) {
      const float v = reduce_add(acc[i][j]);
      float* o = gw + i * ldw + j;
      *o = first ? v : *o + v;
    }
}

using DotTileFn = void (*)(int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, bool);
template <int KT, int... R>
constexpr std::array<DotTileFn, kDotR> dot_row(std::integer_sequence<int, R...>) {
  return {dot_tile<KT, R + 1>...};
}
template <int... K>
constexpr std::array<std::array<DotTileFn, kDotR>, kDotK> dot_table(std::integer_sequence<int, K...>) {
  return {dot_row<K + 1>(std::make_integer_sequence<int, kDotR>())...};
}
// dot_tiles[kt - 1][rt - 1]: the kt x rt tile (edges of K and of the column rows).
constexpr auto dot_tiles = dot_table(std::make_integer_sequence<int, kDotK>());

// Samples reduced per lane fold: ~512 pixels of lanes (fixed by P alone: thread-count proof).
// Measured (AVX2, 1 thread, weight gradient GFLOP/s at 512 / 1024 / 2048 pixels): 32ch 16x16
// 35-37 / 32 / 22-30, 64ch 8x8 33-38 / 30 / 15-27, 6 -> 16 5x5 10x10 13-16 / 14 / 8-14 (the
// staged columns leave L2); 256 the same as 512 within the noise.
int64_t dot_group(int64_t P) { return std::max<int64_t>(1, 512 / std::max<int64_t>(P, 1)); }

// gw rows [k0, k1), columns [c0*taps, c1*taps) (input channels [c0, c1), groups == 1) over the
// whole batch. stage: dot_group(P) * (c1 - c0) * taps * P + L floats (none for pointwise convs).
// Each gw element is its own sum (lanes over samples and pixels in order, then one fixed
// reduction), whatever the tiles around it: any split of rows or columns gives the same bits.
void weight_grad_dot(const Conv2dShape& s, const float* x, const float* gy, float* gw, int64_t c0, int64_t c1,
                     int64_t k0, int64_t k1, float* stage) {
  const int64_t P = s.OH * s.OW, taps = s.kh * s.kw, rows = s.col_rows();
  const int64_t r0 = c0 * taps, nrows = (c1 - c0) * taps;
  const int64_t group = dot_group(P);
  const bool pointwise = s.is_pointwise();
  for (int64_t n0 = 0; n0 < s.N; n0 += group) {
    const int64_t ns = std::min(group, s.N - n0);
    // Pointwise: the column rows are x's own channel planes, one sample apart.
    const float* col = pointwise ? x + n0 * s.C * P + r0 * P : stage;
    const int64_t col_stride = pointwise ? s.C * P : nrows * P;
    if (!pointwise) {
      Conv2dShape sub = s;  // channels [c0, c1) as a shape of their own
      sub.C = c1 - c0;
      for (int64_t nl = 0; nl < ns; ++nl) {
        const float* xs = x + ((n0 + nl) * s.C + c0) * s.H * s.W;
        if (s.sw <= 2) im2col_vec(sub, xs, c1 - c0, stage + nl * col_stride);
        else im2col(sub, xs, 0, c1 - c0, stage + nl * col_stride);
      }
    }
    const float* g0 = gy + n0 * s.K * P;
    // gy rows in blocks of ~16 KB (L1-resident while every column-row tile streams past them).
    const int64_t kblock = std::max<int64_t>(kDotK, (4096 / std::max<int64_t>(ns * P, 1)) / kDotK * kDotK);
    for (int64_t kb = k0; kb < k1; kb += kblock) {
      const int64_t ke = std::min(k1, kb + kblock);
      for (int64_t rr = 0; rr < nrows; rr += kDotR) {
        const int64_t rt = std::min<int64_t>(kDotR, nrows - rr);
        for (int64_t k = kb; k < ke; k += kDotK) {
          const int64_t kt = std::min<int64_t>(kDotK, ke - k);
          dot_tiles[kt - 1][rt - 1](ns, P, g0 + k * P, s.K * P, col + rr * P, col_stride, gw + k * rows + r0 + rr,
                                    rows, n0 == 0);
        }
      }
    }
  }
}

// ---- Direct forward (stride 1, one group) -----------------------------------------------------
// y[k][p] = bias[k] + sum over col rows r = (c, i, j) of w[k][r] * x[c][oh + i*dh - ph][ow + j*dw - pw],
// with the B vectors (L output pixels) loaded straight from a staging copy of the input rows a
// band of output rows reads (layouts: see conv2d_forward_direct): rows copied once per band, the
// padding written as zeros there, so the micro-kernel needs no masks and there is no packed B
// panel.
// Why: with M = 16..64 output channels each packed B vector of the GEMM feeds only a few vector
// FMAs, so implicit-im2col packing (kh*kw copies of every x value, a C*kh*kw x P panel) cost
// about as much as the FMAs. Here each x value is copied (band + kh - 1) / band times (x kw for
// the shifted layout). Reading x in place with masked loads was slower (AVX-512: 47 vs 85
// GFLOP/s, 64ch 32x32: channel planes 4 KB apart alias in L1's sets).
// Tile: MR output channels x NV vectors of pixels, MR x NV accumulators: MR = 8 with 32
// registers (16 accumulators), 4 (x 3 vectors) or 6 (x 2) with 16, whichever pads K less (per
// col row NV loads and MR broadcasts for MR NV FMAs). Each output is summed from its bias over
// (c, i, j) in order, whatever thread computes it (deterministic).
constexpr int kDirectNV = 2;
constexpr int kDirectMRSmall = 4;
// The small tile's vectors of pixels: 3 on 16-register targets, so that 12 accumulators (not 8)
// keep the FMA units busy (an FMA's latency is 4-5 cycles at 2 per cycle: 8-10 independent
// sums). Measured (AVX2 AMD EPYC, 2 threads, N32, in-process A/B, NV 2 vs 3): ResNet's stem
// 3 -> 16 32x32 0.68 vs 0.59 and 0.51 vs 0.45 ms, 16 -> 32 3x3 s2 2.26 vs 2.12 and 1.73 vs 1.60 ms,
// 6 -> 16 3x3 14x14 0.38 vs 0.36 ms. 32-register targets keep 2 (not measured there).
constexpr int kDirectNVSmall = kRegisters >= 32 ? 2 : 3;
constexpr int kDirectMRLarge = kRegisters >= 32 ? 8 : 6;

template <int MR, int NV>
void direct_tile(int64_t C, int64_t cstride, int64_t taps, const int64_t* tap_off, const int64_t* pix_off,
                 const float* stage, const float* a,
                 const float* bias, int64_t mrows, float* y, int64_t ldy, int64_t npix) {
  int64_t pix[NV];  // in registers: one offset load per tap, not NV
  for (int v = 0; v < NV; ++v) pix[v] = pix_off[v];
  vec<float> acc[MR][NV];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[m][v] = broadcast(bias && m < mrows ? bias[m] : 0.0f);
  for (int64_t c = 0; c < C; ++c, stage += cstride) {
    for (int64_t t = 0; t < taps; ++t, a += MR) {
      vec<float> b[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) b[v] = load(stage + tap_off[t] + pix[v]);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const vec<float> av = broadcast(a[m]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[m][v] = fma(av, b[v], acc[m][v]);
      }
    }
  }
  // npix (1 .. L*NV): the tile's real pixels; the rest of its lanes are never stored. Unrolled
  // with a guard: a loop to the run-time mrows would index acc by a variable and push the
  // accumulators out of registers for the whole k loop.
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    if (m >= mrows) break;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) store_first(y + m * ldy + L * v, acc[m][v], npix - L * v);
  }
}

// Where the direct forward applies: one group, not pointwise, horizontal stride 1 or 2 (what
// stage_padded_row reads), any vertical stride (both staging layouts of conv2d_forward_direct).
// Where it pays: see forward_kernel.
bool direct_forward_applies(const Conv2dShape& s) { return s.groups == 1 && !s.is_pointwise() && s.sw <= 2; }

template <int MR, int NV>
void conv2d_forward_direct(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) {
  const int64_t taps = s.kh * s.kw, rows = s.C * taps, P = s.OH * s.OW;
  const int64_t mblocks = (s.K + MR - 1) / MR;
  // wp[mb][r][m] = w[mb*MR + m][r], rows past K zero: the broadcasts of one col row are adjacent.
  std::vector<float> wp(size_t(mblocks * rows * MR), 0.0f);
  for (int64_t k = 0; k < s.K; ++k)
    for (int64_t r = 0; r < rows; ++r) wp[size_t(((k / MR) * rows + r) * MR + k % MR)] = w[k * rows + r];
  // Two staging layouts for a band of output rows [oh0, oh1), which reads the (band-1)*sh +
  // (kh-1)*dh + 1 input rows from oh0*sh - ph (rows_for):
  //  rows:    OW % L == 0. sw copies (column phases) stage[c][f][q][u] = x[c][oh0*sh - ph + q][u*sw + f - pw],
  //           SW = OW + (kw-1)*dw / sw columns: each x row once (split by phase), its padding
  //           once; tap j reads phase j*dw % sw from column ow + j*dw / sw, and a vector never
  //           crosses an output row.
  //  shifted: other OW. kw * sh copies, each exactly OW wide: copy (j, f) holds the input rows of
  //           row phase f, stage[c][j][f][k][ow] = x[c][(oh0 + k)*sh + f - ph][ow*sw + j*dw - pw],
  //           so tap (i, j) of output pixel p reads copy (j, i*dh % sh) at p + (i*dh / sh)*OW,
  //           and L consecutive output pixels (crossing output rows) are L consecutive floats.
  // The band grows while the staging stays under ~48 KB (L1 + a little; read once per MR block).
  const bool shifted = s.OW % L != 0;
  const int64_t SW = shifted ? s.OW : s.OW + (s.kw - 1) * s.dw / s.sw;
  const int64_t copies = shifted ? s.kw * s.sh : s.sw;
  auto rows_for = [&](int64_t b) { return (b - 1) * s.sh + (s.kh - 1) * s.dh + 1; };
  // Rows per copy: all the band reads (rows layout), or its rows of one phase (shifted).
  auto copy_rows = [&](int64_t b) { return shifted ? b + (s.kh - 1) * s.dh / s.sh : rows_for(b); };
  // Channel copies an odd number of cache lines apart: a power-of-two stride put every 4th
  // channel in the same L1 sets.
  auto cstride_for = [&](int64_t b) {
    const int64_t lines = (copies * copy_rows(b) * SW + 15) / 16;
    return (lines | 1) * 16;
  };
  // At least NV*L pixels per band where the rows are shorter (a full tile; with one 7-pixel row
  // per band a 24-pixel tile computed 70 % padding).
  int64_t band = 1;
  while (band * s.OW < NV * L && band < s.OH) band *= 2;
  while (band * 2 <= s.OH && s.C * cstride_for(band * 2) * 4 <= 48 * 1024) band *= 2;
  if (shifted && s.C * cstride_for(s.OH) * 4 <= 64 * 1024) band = s.OH;  // whole small maps
  band = std::min(band, s.OH);
  const int64_t bands = (s.OH + band - 1) / band;
  const int64_t R = copy_rows(band);
  // Padded input rows per band: shifted copies read row k*sh + f for k < R (some past the band's
  // last row, never read by a tap: padding them keeps the loop plain).
  const int64_t RP = shifted ? R * s.sh : R;
  const int64_t cstride = cstride_for(band);
  const int64_t plane = s.H * s.W;
  const int64_t SWv = (SW + L - 1) / L * L;  // staged columns written, whole vectors
  const int64_t reach = shifted ? s.sw * SWv + (s.kw - 1) * s.dw + L : s.sw * SWv + s.sw - 1 + L;
  const int64_t PW = padded_width(s.pw, s.W, reach);
  parallel_for(s.N * bands, 1, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> stage;
    // + NV*L: the shifted layout's last vector may read past the band's pixels (never stored).
    if (stage.size() < size_t(s.C * cstride + NV * L)) stage.resize(size_t(s.C * cstride + NV * L));
    // One channel's RP input rows, zero-padded: pw zeros, the row (rounded up to whole vectors),
    // then zeros as far as the staging loads reach (stride 2 reads 2L floats per vector).
    std::vector<float> padded(size_t(RP * PW), 0.0f);
    // Vector v of a tile at tap (i, j) reads stage + tap_off[i*kw + j] + pix_off[v].
    std::vector<int64_t> tap_off(static_cast<size_t>(taps));
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < s.kw; ++j)
        tap_off[i * s.kw + j] = shifted ? ((j * s.sh + i * s.dh % s.sh) * R + i * s.dh / s.sh) * SW
                                        : (j * s.dw % s.sw * R + i * s.dh) * SW + j * s.dw / s.sw;
    int64_t pix_off[NV];
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t n = task / bands, oh0 = (task % bands) * band;
      const int64_t oh1 = std::min(s.OH, oh0 + band);
      const float* xs = x + n * s.C * plane;
      const int64_t rq = copy_rows(oh1 - oh0);  // rows of each copy this band fills
      for (int64_t c = 0; c < s.C; ++c) {
        for (int64_t q = 0; q < (shifted ? rq * s.sh : rq); ++q)
          pad_row(xs + c * plane, oh0 * s.sh - s.ph + q, s.H, s.W, s.pw, padded.data() + q * PW);
        // Row q of copy jc: staged column u reads padded column u*sw + jc (rows layout), or
        // padded row q*sh + f at column u*sw + j*dw (shifted, jc = j*sh + f).
        for (int64_t jc = 0; jc < copies; ++jc)
          for (int64_t q = 0; q < rq; ++q) {
            const int64_t prow = shifted ? q * s.sh + jc % s.sh : q, off = shifted ? jc / s.sh * s.dw : jc;
            stage_padded_row(padded.data() + prow * PW, off, SW, s.sw, stage.data() + c * cstride + (jc * R + q) * SW);
          }
      }
      const int64_t npix = (oh1 - oh0) * s.OW;
      for (int64_t p0 = 0; p0 < npix; p0 += L * NV) {
        for (int64_t v = 0; v < NV; ++v) {
          // A vector past the band's pixels re-reads the first one (its lanes are never stored).
          const int64_t pv = p0 + L * v < npix ? p0 + L * v : p0;
          pix_off[v] = shifted ? pv : pv / s.OW * s.sh * SW + pv % s.OW;
        }
        float* ys = y + n * s.K * P + oh0 * s.OW + p0;
        for (int64_t mb = 0; mb < mblocks; ++mb)
          direct_tile<MR, NV>(s.C, cstride, taps, tap_off.data(), pix_off, stage.data(), wp.data() + mb * rows * MR,
                          bias ? bias + mb * MR : nullptr, std::min<int64_t>(MR, s.K - mb * MR), ys + mb * MR * P, P,
                          std::min<int64_t>(L * NV, npix - p0));
      }
    }
  });
}

// The direct forward with the register tile that pads K least (ties: the larger tile).
void conv2d_forward_direct_f32(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) {
  auto padded = [&](int64_t mr) { return (s.K + mr - 1) / mr * mr; };
  if (padded(kDirectMRSmall) < padded(kDirectMRLarge))
    conv2d_forward_direct<kDirectMRSmall, kDirectNVSmall>(s, x, w, bias, y);
  else
    conv2d_forward_direct<kDirectMRLarge, kDirectNV>(s, x, w, bias, y);
}

// Where the direct forward beats the implicit-im2col GEMM. Measured (AVX2, 1 thread, CPU time,
// GFLOP/s direct vs GEMM, noise +-30% on this shared VM): stride 1 always, e.g. 3 -> 16 32x32
// 22-26 vs 12-18, 16 -> 16 32x32 25-42 vs 20-23, 32 -> 32 16x16 53-58 vs 35-37, 64 -> 64 8x8
// 54-59 vs 46-47, 6 -> 16 5x5 10x10 18-25 vs 8-13 (1 -> 6 5x5 28x28 even). Horizontal stride 2
// with more than one tap, since the staging reads zero-padded row copies (2026-12-01; 1 thread,
// N32, ms direct vs GEMM): ResNet's 32 -> 64 3x3 s2 16x16 (OW 8) 1.29 vs 1.63, 8 -> 16 3x3 s2
// 16x16 0.105 vs 0.161, 64 -> 128 3x3 s2 16x16 equal; 16 -> 32 3x3 s2 32x32 (OW 16) 1.59 vs 2.08
// for the masked staging it replaced. Not 1x1 s2 (0.56 vs 0.47: one tap, the staging is as much
// work as the FMAs). Strided shapes whose output rows are not whole vectors (the shifted layout:
// kw * sh copies of every row) where the input has at most 32 channels (1 thread, ms direct vs
// GEMM, torch in brackets): 16 -> 16 3x3 s2 14x14 N64 (Mask R-CNN's MaskIoU head) 0.65-0.73 vs
// 1.48-2.63 (0.46-0.53), 32 -> 32 3x3 s2 30x30 N16 2.03-2.11 vs 2.99-4.85 (1.08-1.17), 32 -> 64
// 3x3 s2 14x14 N32 1.38-1.44 vs 2.10-3.22 (0.98-0.99), 32 -> 64 3x3 s2 28x28 N16 about the same;
// with more channels the GEMM wins (64 -> 128 3x3 s2 56x56 N8 20.8 vs 15.6, 128 -> 256 3x3 s2
// 28x28 N8 20.4 vs 14.9; 256 -> 512 14x14 equal), except kernel == stride (64 -> 32 2x2 s2
// 28x28 N16: 2.30 vs 3.00), which is left to the GEMM with the rest.
bool direct_forward_pays(const Conv2dShape& s) {
  return (s.sh == 1 && s.sw == 1) || (s.kh * s.kw > 1 && (s.OW % L == 0 || s.C <= 32));
}

// The kernel conv2d_forward runs: the one place that picks it (conv2d_forward_algorithm reports
// it). Winograd where winograd.cpp takes the shape, else the direct kernel where it applies and
// pays, else implicit-im2col GEMM (pointwise: x is the column matrix). Double: GEMM only.
enum class ForwardKernel { winograd, direct, im2col_gemm, pointwise_gemm };

ForwardKernel forward_kernel(const Conv2dShape& s, bool is_float) {
  if (is_float && winograd_forward_kernel(s)) return ForwardKernel::winograd;
  if (is_float && direct_forward_applies(s) && direct_forward_pays(s)) return ForwardKernel::direct;
  return s.is_pointwise() ? ForwardKernel::pointwise_gemm : ForwardKernel::im2col_gemm;
}
}  // namespace

// The forward with `slots` one-sample column slots in ws (unused, may be null: the columns of
// the GEMM kernels are implicit).
template <typename T>
void conv2d_forward_slots(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y, T* ws,
                          int64_t slots) {
  const int64_t P = s.OH * s.OW, G = s.groups, Kg = s.K_per_group();
  const int64_t rows = s.col_rows();
  if (s.N == 0 || s.K == 0 || P == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    switch (forward_kernel(s, true)) {
      case ForwardKernel::winograd:
        if (conv2d_forward_winograd_f32(s, x, w, bias, y)) return;
        break;
      case ForwardKernel::direct: conv2d_forward_direct_f32(s, x, w, bias, y); return;
      default: break;
    }
  }
  const bool pointwise = s.is_pointwise();
  // Implicit im2col (columns built inside the GEMM's B packing) unless the conv is pointwise.
  const bool implicit = !pointwise;
  // The weight is the GEMM's A for every sample: pack it once per call (per group).
  const int64_t wpacked_per_group = implicit ? gemm_packed_a_size<T>(Kg, rows) : 0;
  std::vector<T> wpacked(size_t(wpacked_per_group * G));
  for (int64_t g = 0; g < G && implicit; ++g)
    gemm_pack_a<T>(false, Kg, rows, w + g * Kg * rows, rows, wpacked.data() + g * wpacked_per_group);

  auto sample = [&](int64_t n, T*, bool) {
    const T* xs = x + n * s.C * s.H * s.W;
    T* ys = y + n * s.K * P;
    for (int64_t g = 0; g < G; ++g) {
      if (implicit) {
        // Columns packed straight from x: panel rows are col rows r, panel columns pixels.
        const T* xg = xs + g * s.C_per_group() * s.H * s.W;
        PackBPanel<T> pack = [&](int64_t j0, int64_t j1, int64_t p0, int64_t kc, int NR, T* out) {
          if constexpr (std::is_same_v<T, float>) {
            if (s.sw <= 2) return pack_im2col_vec(s, xg, j0, j1, p0, kc, NR, out);
          }
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
        gemm<T>(false, false, Kg, P, rows, T(1), w + g * Kg * rows, rows, xs + g * rows * P, P, T(0),
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
  for_samples(s.N, slots, ws, 0, sample);
}

template <typename T>
void conv2d_forward(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y, T* ws,
                    int64_t ws_elems) {
  if (s.N == 0 || s.K == 0 || s.OH * s.OW == 0) return;
  const int64_t slots = workspace_slots(s, ws_elems, "conv2d_forward");
  conv2d_forward_slots(s, x, w, bias, y, ws, slots);
}

const char* conv2d_forward_algorithm(const Conv2dShape& s, bool is_float) {
  static const char* const names[] = {"winograd", "direct", "im2col_gemm", "pointwise_gemm"};
  const ForwardKernel k = forward_kernel(s, is_float);
  return k == ForwardKernel::winograd ? winograd_forward_kernel(s) : names[int(k)];
}

// Stride 1, one group: the input gradient is a forward conv of gy with the kernel transposed
// (w'[c][k]) and flipped, padded by (k-1)*d - p: gx[c][h][w] = sum gy[k][h+ph-i*dh][w+pw-j*dw] *
// w[k][c][i][j], and i' = kh-1-i turns h + ph - i*dh into h - ph' + i'*dh. Through the forward's
// implicit im2col this skips the column matrix and col2im's scatter-add (at 2 threads the
// 16-channel 32x32 layer spent ~0.6 ms more than the forward in them: 590 KB of columns per
// sample per thread through L2). Returns false when the shape does not qualify.
template <typename T>
bool conv2d_backward_input_as_forward(const Conv2dShape& s, const T* gy, const T* w, T* gx) {
  if constexpr (!std::is_same_v<T, float>) {
    return false;
  } else {
    const int64_t ph2 = (s.kh - 1) * s.dh - s.ph, pw2 = (s.kw - 1) * s.dw - s.pw;
    if (s.groups != 1 || s.sh != 1 || s.sw != 1 || s.is_pointwise() || ph2 < 0 || pw2 < 0) return false;
    // Measured (AVX2, 1 thread, N32 / N64, ratio to torch, input gradient as forward vs GEMM +
    // col2im): 16ch 32x32 0.60-0.66 vs 1.01, 32ch 16x16 1.08-1.31 vs 1.42, 64ch 8x8 1.42 vs 1.11
    // (noise +-30% on this shared VM), but few channels on either side lose: 1 -> 6 5x5 1.32 vs
    // 0.41-0.48, 6 -> 16 5x5 3.34 vs 1.58 (the direct tile pads 1 or 6 output rows to 4 or 6 and
    // the taps run over 6 channels). Shapes the Winograd forward takes always qualify.
    Conv2dShape t = s;
    t.C = s.K, t.H = s.OH, t.W = s.OW;
    t.K = s.C, t.OH = s.H, t.OW = s.W;
    t.ph = ph2, t.pw = pw2;
    if ((s.C < 16 || s.K < 16) && winograd_forward_kernel(t) == nullptr) return false;
    const int64_t taps = s.kh * s.kw;
    std::vector<float> wt(size_t(s.C * s.K * taps));  // w'[c][k][i'][j'] = w[k][c][kh-1-i'][kw-1-j']
    for (int64_t k = 0; k < s.K; ++k)
      for (int64_t c = 0; c < s.C; ++c)
        for (int64_t q = 0; q < taps; ++q) wt[(c * s.K + k) * taps + q] = w[(k * s.C + c) * taps + (taps - 1 - q)];
    conv2d_forward_slots<float>(t, gy, wt.data(), nullptr, gx, nullptr, t.N);
    return true;
  }
}

template <typename T>
void conv2d_backward_input(const Conv2dShape& s, const T* gy, const T* w, T* gx, T* ws,
                           int64_t ws_elems) {
  const int64_t P = s.OH * s.OW, G = s.groups, Kg = s.K_per_group();
  const int64_t rows = s.col_rows();
  if (s.N == 0 || s.C * s.H * s.W == 0) return;
  workspace_slots(s, ws_elems, "conv2d_backward_input");  // the caller's workspace is checked either way
  if (P > 0 && s.K > 0 && conv2d_backward_input_as_forward(s, gy, w, gx)) return;
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
  if constexpr (std::is_same_v<T, float>) {
    if (conv_winograd_enabled() && conv2d_backward_weight_winograd_f32(s, x, gy, gw)) return;
    if (G == 1) {
      // Dot-product form (see weight_grad_dot), taken whatever the thread count so that the
      // result does not depend on it; each thread owns a run of input channels (gw columns), or,
      // with fewer input channels than threads (a network's first layer: LeNet's 1 -> 6 ran on
      // one of 2 threads), a run of output channels (gw rows), each thread building the columns
      // of all the channels.
      auto part = [&](int64_t c0, int64_t c1, int64_t k0, int64_t k1) {
        // Kept per thread across calls: a fresh 300-600 KB vector per call was a zero fill plus
        // ~100 page faults of a new mmap each time.
        thread_local std::vector<float> stage;
        // + L: im2col_vec's last row may write up to L - 1 floats past the columns
        const size_t need = s.is_pointwise() ? 0 : size_t(std::min(dot_group(P), s.N) * (c1 - c0) * taps * P + L);
        if (stage.size() < need) stage.resize(need);
        weight_grad_dot(s, x, gy, gw, c0, c1, k0, k1, stage.data());
      };
      const int64_t ktiles = (s.K + kDotK - 1) / kDotK;
      if (s.C < threads && ktiles > 1)
        parallel_for(ktiles, 1, [&](int64_t t0, int64_t t1) { part(0, s.C, t0 * kDotK, std::min(s.K, t1 * kDotK)); });
      else
        parallel_for(s.C, 1, [&](int64_t c0, int64_t c1) { part(c0, c1, 0, s.K); });
      return;
    }
  }
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

}  // namespace pycnn::cpu::PYCNN_ISA

PYCNN_TARGET_END
