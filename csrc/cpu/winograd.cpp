// Winograd F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//
// A 2x2 block of outputs of a 3x3 convolution is computed from the 4x4 input tile d under it:
//     y = A^T [ (G g G^T) (.) (B^T d B) ] A          (.) = elementwise, per input channel summed
// so the 36 multiply-adds per 2x2 outputs and channel pair become 16 (2.25x fewer). The sum over
// input channels happens in the transformed domain, where it is 16 independent GEMMs, one per
// position xi of the 4x4 tile:  M[xi][k][t] = sum_c U[xi][k][c] * V[xi][c][t]  (t = tile).
//     B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
//     A^T = [1 1 1 0; 0 1 -1 -1]
// All transform entries are 0, +-1 or +-0.5, so the rounding error stays close to the direct
// sum's (measured: ~2e-7 of the output's largest value, like torch's float32 kernels); the
// larger F(4x4, 3x3) tiles save more multiplies but their transforms (entries up to 5) lose
// more float32 accuracy.
//
// Work is split in blocks of kTiles tiles, numbered over the whole batch in raster order (tile t
// = (n, th, tw), outputs rows 2th..2th+1, columns 2tw..2tw+1); a block is a list of segments,
// runs of tiles from one tile row. Per block, on one thread, everything stays in L2:
//   1. input transform  x -> V[16][C][kTiles]   (rows read with masked loads, split into even/odd
//                                                 columns for the horizontal pass, then the vertical)
//   2. 16 GEMMs          U[xi] (K x C) @ V[xi] -> M[16][K][kTiles]   (8 x 32 register tiles)
//   3. output transform  M -> y (+ bias), interleaving the two columns of each tile back.
// Odd output sizes: the last tile row / column reads zero padding and its extra outputs are not
// stored. Each output is computed by one fixed sequence of operations whatever thread runs its
// block, so results do not depend on the thread count.
#include "cpu/winograd.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/cpu_tuning.h"
#include "common/parallel.h"

#include "simd/vec.h"

namespace pycnn::cpu::PYCNN_ISA {

#if PYCNN_LEGACY_AVX512  // being ported to simd/vec.h
namespace {

constexpr int64_t kTiles = 32;  // tiles per block: two 16-lane vectors
constexpr int64_t kMR = 8;      // output channels per GEMM register tile (8 x 2 vectors = 16 zmm)
// Below this many input or output channels the transforms cost more than the multiplies they
// save. Measured (1 thread, N32, forward ms, Winograd vs direct): 3 -> 16 channels 32x32 0.45 vs
// 0.39; 4 -> 16 0.44 vs 0.47; 16 -> 4 0.66 vs 0.92; 4 -> 4 16x16 0.09 vs 0.12.
constexpr int64_t kMinChannels = 4;
// The weight gradient puts input channels in the vector lanes (16 per tile): with 4 of them it
// was slower than the dot-product kernel (4 -> 16 32x32: 1.16 vs 0.71 ms), with 8 faster
// (8 -> 8 8x8: 0.11 vs 0.16 ms).
constexpr int64_t kMinGradChannels = 8;

struct TileGrid {
  int64_t per_row, rows, per_image, total;
  explicit TileGrid(const Conv2dShape& s)
      : per_row((s.OW + 1) / 2), rows((s.OH + 1) / 2), per_image(per_row * rows), total(s.N * per_row * rows) {}
};

// Tiles [lane, lane + count) of a block are tiles [tw0, tw0 + count) of tile row th of sample n.
// A segment stays within one 16-lane vector (the transforms work a vector at a time).
struct Segment {
  int64_t n, th, tw0, count, lane;
};

int64_t block_segments(const TileGrid& g, int64_t first_tile, Segment* seg) {
  int64_t nseg = 0;
  for (int64_t lane = 0; lane < kTiles && first_tile + lane < g.total;) {
    const int64_t t = first_tile + lane, n = t / g.per_image, rem = t % g.per_image;
    const int64_t th = rem / g.per_row, tw0 = rem % g.per_row;
    const int64_t count = std::min({16 - lane % 16, g.per_row - tw0, g.total - t});
    seg[nseg++] = {n, th, tw0, count, lane};
    lane += count;
  }
  return nseg;
}

// U[xi][mb][c][m] = (G w[mb*kMR + m][c] G^T)[xi], zero for output channels past K: the kMR
// values one GEMM step broadcasts are adjacent. Computed in double (then rounded once).
std::vector<float> transform_weights(const Conv2dShape& s, const float* w) {
  const int64_t mblocks = (s.K + kMR - 1) / kMR;
  std::vector<float> u(size_t(16 * mblocks * s.C * kMR), 0.0f);
  // Threads over output channels (each k writes its own entries): 512 x 512 channels is 262K
  // little transforms, milliseconds on one core.
  parallel_for(s.K, 8, [&](int64_t k0, int64_t k1) {
  for (int64_t k = k0; k < k1; ++k)
    for (int64_t c = 0; c < s.C; ++c) {
      const float* g = w + (k * s.C + c) * 9;
      double t[4][3];  // G g
      for (int j = 0; j < 3; ++j) {
        const double a = g[j], b = g[3 + j], e = g[6 + j];
        t[0][j] = a, t[1][j] = 0.5 * (a + b + e), t[2][j] = 0.5 * (a - b + e), t[3][j] = e;
      }
      for (int i = 0; i < 4; ++i) {
        const double a = t[i][0], b = t[i][1], e = t[i][2];
        const double row[4] = {a, 0.5 * (a + b + e), 0.5 * (a - b + e), e};  // (G g) G^T
        for (int j = 0; j < 4; ++j)
          u[size_t((((i * 4 + j) * mblocks + k / kMR) * s.C + c) * kMR + k % kMR)] = float(row[j]);
      }
    }
  });
  return u;
}

// The segments of a block that fill lanes [16 v, 16 v + 16): [first, last).
struct LaneGroup {
  int64_t first, last;
  bool one_row() const { return last - first == 1; }
  // The group's lanes that hold tiles (all 16 but in a block's last, partial vector).
  __mmask16 tile_lanes(const Segment* seg) const {
    return lane_range(0, seg[last - 1].lane % 16 + seg[last - 1].count);
  }
};

int64_t lane_groups(const Segment* seg, int64_t nseg, LaneGroup* groups) {
  int64_t ng = 0;
  for (int64_t q = 0; q < nseg; ++q) {
    if (q == 0 || seg[q].lane / 16 != seg[q - 1].lane / 16) groups[ng++] = {q, q};
    groups[ng - 1].last = q + 1;
  }
  return ng;
}

// Where one segment's tiles read their 4 column phases j: x columns col0 + 2 t' + j for its
// t'-th tile. The columns [col0, col0 + 32) come in two masked loads (the masks are the zero
// padding); phase j of the segment's lanes is then one permute of those two vectors.
struct RowPicker {
  int64_t col0;
  __mmask16 load[2], lanes;
  __m512i idx;  // lane l: 2 (l - first lane) (+ j for phase j)
};

PYCNN_TARGET_AVX512 RowPicker row_picker(const Segment& sg, int64_t width, int64_t col_pad) {
  RowPicker r;
  r.col0 = 2 * sg.tw0 - col_pad;
  r.load[0] = lane_range(-r.col0, width - r.col0);
  r.load[1] = lane_range(-r.col0 - 16, width - r.col0 - 16);
  const int64_t l0 = sg.lane % 16;
  r.lanes = lane_range(l0, l0 + sg.count);
  r.idx = _mm512_sub_epi32(_mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
                           _mm512_set1_epi32(int(2 * l0)));
  return r;
}

// ph[j] (j < phases) takes, in this segment's lanes, column phase j of the row that starts at
// `row` (its column 0): two masked loads, then one permute per phase.
template <int phases>
PYCNN_TARGET_AVX512 PYCNN_ALWAYS_INLINE void pick_phases(const RowPicker& pk, const float* row, __m512* ph) {
  // Masked-off lanes are never read, so the addresses may lie outside the tensor (hence uintptr).
  const float* r = reinterpret_cast<const float*>(reinterpret_cast<uintptr_t>(row) + pk.col0 * int64_t(sizeof(float)));
  const __m512 a = _mm512_maskz_loadu_ps(pk.load[0], r), b = _mm512_maskz_loadu_ps(pk.load[1], r + 16);
#pragma GCC unroll 4
  for (int j = 0; j < phases; ++j)
    ph[j] = _mm512_mask_mov_ps(ph[j], pk.lanes, _mm512_permutex2var_ps(a, _mm512_add_epi32(pk.idx, _mm512_set1_epi32(j)), b));
}

// V[xi][c][lane] = (B^T d B)[xi] for the tiles of one block, channels [0, C).
// Per 16-lane vector of tiles and input row i: the row's 4 column phases (tile tw reads columns
// 2tw + j - pw, j = 0..3) as even-index picks from masked loads straight from x, then B^T along
// the row; then B^T down the 4 rows, in registers, and the 16 results stored to V. A vector of
// one tile row (maps 32+ wide) picks each phase from its own two loads; a vector of several
// short rows (16x16 and 8x8 maps) loads each row once and places its tiles with masked permutes.
PYCNN_TARGET_AVX512 void transform_input(const Conv2dShape& s, const float* x, const Segment* seg, int64_t nseg,
                                         float* v) {
  const int64_t plane = s.H * s.W, xi_stride = s.C * kTiles;
  LaneGroup groups[kTiles / 16];
  const int64_t ng = lane_groups(seg, nseg, groups);
  RowPicker pick[16];
  for (int64_t gi = 0; gi < ng; ++gi) {
    const LaneGroup& grp = groups[gi];
    const Segment& s0 = seg[grp.first];
    const bool wide = grp.one_row() && s0.count == 16;  // 34 columns: one load pair per phase
    __mmask16 m[4][2];  // wide: phase j, vector: lanes whose column lies inside [0, W)
    const int64_t col0 = 2 * s0.tw0 - s.pw;
    for (int j = 0; j < 4; ++j)
      for (int u = 0; u < 2; ++u) m[j][u] = lane_range(-(col0 + j + 16 * u), s.W - (col0 + j + 16 * u));
    for (int64_t q = grp.first; q < grp.last && !wide; ++q) pick[q - grp.first] = row_picker(seg[q], s.W, s.pw);
    const __mmask16 store = grp.tile_lanes(seg);
    for (int64_t c = 0; c < s.C; ++c) {
      __m512 hr[4][4];  // B^T along input row i, phase j
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        __m512 ph[4];
        if (wide) {
          const int64_t h = 2 * s0.th - s.ph + i;
          if (h < 0 || h >= s.H) {
            hr[i][0] = hr[i][1] = hr[i][2] = hr[i][3] = _mm512_setzero_ps();
            continue;
          }
          // Masked-off lanes are never read, so the addresses may lie outside x (hence uintptr).
          const uintptr_t r = reinterpret_cast<uintptr_t>(x + (s0.n * s.C + c) * plane + h * s.W) +
                              col0 * int64_t(sizeof(float));
          const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
#pragma GCC unroll 4
          for (int j = 0; j < 4; ++j) {
            const float* p = reinterpret_cast<const float*>(r + j * sizeof(float));
            ph[j] = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(m[j][0], p), even,
                                           _mm512_maskz_loadu_ps(m[j][1], p + 16));
          }
        } else {
          ph[0] = ph[1] = ph[2] = ph[3] = _mm512_setzero_ps();
          for (int64_t q = grp.first; q < grp.last; ++q) {
            const Segment& sg = seg[q];
            const int64_t h = 2 * sg.th - s.ph + i;
            if (h < 0 || h >= s.H) continue;
            pick_phases<4>(pick[q - grp.first], x + (sg.n * s.C + c) * plane + h * s.W, ph);
          }
        }
        hr[i][0] = _mm512_sub_ps(ph[0], ph[2]);
        hr[i][1] = _mm512_add_ps(ph[1], ph[2]);
        hr[i][2] = _mm512_sub_ps(ph[2], ph[1]);
        hr[i][3] = _mm512_sub_ps(ph[1], ph[3]);
      }
      float* d = v + c * kTiles + 16 * gi;
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        _mm512_mask_storeu_ps(d + j * xi_stride, store, _mm512_sub_ps(hr[0][j], hr[2][j]));
        _mm512_mask_storeu_ps(d + (4 + j) * xi_stride, store, _mm512_add_ps(hr[1][j], hr[2][j]));
        _mm512_mask_storeu_ps(d + (8 + j) * xi_stride, store, _mm512_sub_ps(hr[2][j], hr[1][j]));
        _mm512_mask_storeu_ps(d + (12 + j) * xi_stride, store, _mm512_sub_ps(hr[1][j], hr[3][j]));
      }
    }
  }
}

// m[r][0..kTiles) = sum_c a[c][r] * v[c][0..kTiles) for r < kMR: one 8 x 32 register tile.
PYCNN_TARGET_AVX512 void gemm_tile(int64_t C, const float* a, const float* v, float* m) {
  __m512 acc[kMR][2];
#pragma GCC unroll 8
  for (int r = 0; r < kMR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t c = 0; c < C; ++c, a += kMR, v += kTiles) {
    const __m512 b0 = _mm512_loadu_ps(v), b1 = _mm512_loadu_ps(v + 16);
#pragma GCC unroll 8
    for (int r = 0; r < kMR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r]);
      acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kMR; ++r) {
    _mm512_storeu_ps(m + r * kTiles, acc[r][0]);
    _mm512_storeu_ps(m + r * kTiles + 16, acc[r][1]);
  }
}

// d[0..n) = src[0..n), n <= 64.
PYCNN_TARGET_AVX512 PYCNN_ALWAYS_INLINE void copy_short(const float* src, int64_t n, float* d) {
  for (int64_t u = 0; u < n; u += 16) {
    const __mmask16 m = lane_range(0, n - u);
    _mm512_mask_storeu_ps(d + u, m, _mm512_maskz_loadu_ps(m, src + u));
  }
}

// y tiles of one block from M[16][Kpad][kTiles] (Kpad = K rounded up to kMR), + bias.
PYCNN_TARGET_AVX512 void transform_output(const Conv2dShape& s, const float* mt, int64_t kpad, const float* bias,
                                          const Segment* seg, int64_t nseg, float* y) {
  // Tile l's two outputs of a row sit at [2l, 2l + 1] of out[row]: the rows as y stores them.
  alignas(64) float out[2][2 * kTiles];
  const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi_idx = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const int64_t xi_stride = kpad * kTiles;
  const int64_t lanes = seg[nseg - 1].lane + seg[nseg - 1].count;
  for (int64_t k = 0; k < s.K; ++k) {
    const __m512 b = _mm512_set1_ps(bias ? bias[k] : 0.0f);
    for (int64_t l = 0; l < lanes; l += 16) {
      const float* m = mt + k * kTiles + l;
      __m512 col0[4], col1[4];  // A^T applied along each tile row i: (m_i0 + m_i1 + m_i2, m_i1 - m_i2 - m_i3)
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        const __m512 m0 = _mm512_loadu_ps(m + (i * 4 + 0) * xi_stride), m1 = _mm512_loadu_ps(m + (i * 4 + 1) * xi_stride);
        const __m512 m2 = _mm512_loadu_ps(m + (i * 4 + 2) * xi_stride), m3 = _mm512_loadu_ps(m + (i * 4 + 3) * xi_stride);
        col0[i] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
        col1[i] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
      }
      const __m512 y00 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(col0[0], col0[1]), col0[2]), b);
      const __m512 y01 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(col1[0], col1[1]), col1[2]), b);
      const __m512 y10 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(col0[1], col0[2]), col0[3]), b);
      const __m512 y11 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(col1[1], col1[2]), col1[3]), b);
      _mm512_store_ps(out[0] + 2 * l, _mm512_permutex2var_ps(y00, lo_idx, y01));
      _mm512_store_ps(out[0] + 2 * l + 16, _mm512_permutex2var_ps(y00, hi_idx, y01));
      _mm512_store_ps(out[1] + 2 * l, _mm512_permutex2var_ps(y10, lo_idx, y11));
      _mm512_store_ps(out[1] + 2 * l + 16, _mm512_permutex2var_ps(y10, hi_idx, y11));
    }
    for (int64_t q = 0; q < nseg; ++q) {
      const Segment& sg = seg[q];
      const int64_t ncols = std::min(2 * sg.count, s.OW - 2 * sg.tw0);
      float* d = y + ((sg.n * s.K + k) * s.OH + 2 * sg.th) * s.OW + 2 * sg.tw0;
      copy_short(out[0] + 2 * sg.lane, ncols, d);
      if (2 * sg.th + 1 < s.OH) copy_short(out[1] + 2 * sg.lane, ncols, d + s.OW);
    }
  }
}

}  // namespace

bool winograd_applies(const Conv2dShape& s) {
  return cpu_has_avx512() && s.groups == 1 && s.kh == 3 && s.kw == 3 && s.sh == 1 && s.sw == 1 && s.dh == 1 &&
         s.dw == 1 && s.C >= kMinChannels && s.K >= kMinChannels;
}

namespace {

// ---- weight gradient ------------------------------------------------------------------------
// With U = G w G^T the forward is linear in U, so dL/dU[xi] = sum over tiles of
// (A gy_t A^T)[xi] * V_t[xi] and dL/dw = G^T dL/dU G:
//   1. per block: V as in the forward, and Gy[xi][k][lane] = (A g A^T)[xi] for the 2x2 block g
//      of gy under each tile (A = [1 0; 1 1; 1 -1; 0 -1]); V is transposed to VT[xi][lane][c]
//   2. P[xi][k][c] += sum over the block's tiles of Gy[xi][k][t] * VT[xi][t][c]: a GEMM with
//      the tiles as its reduction, 8 k x 32 c register tiles (c in lanes, Gy broadcast)
//   3. once, in double: gw[k][c] = G^T P[.][k][c] G.
// The batch's blocks are cut into a fixed number of chunks (from the shape alone), each summed
// into its own P, and the chunks are added in order: the result does not depend on threads.

// Gy[xi][k][lane] for the tiles of one block (gy outside the output reads as 0). Per 16-lane
// vector: each segment's two gy rows (2 tiles x 2 columns) in masked loads, the even and odd
// columns placed in its lanes by permutes, then A g A^T in registers.
PYCNN_TARGET_AVX512 void transform_grad(const Conv2dShape& s, const float* gy, const Segment* seg, int64_t nseg,
                                        float* gt) {
  const int64_t xi_stride = s.K * kTiles;
  LaneGroup groups[kTiles / 16];
  const int64_t ng = lane_groups(seg, nseg, groups);
  RowPicker pick[16];
  for (int64_t gi = 0; gi < ng; ++gi) {
    const LaneGroup& grp = groups[gi];
    for (int64_t q = grp.first; q < grp.last; ++q) pick[q - grp.first] = row_picker(seg[q], s.OW, 0);
    const __mmask16 store = grp.tile_lanes(seg);
    for (int64_t k = 0; k < s.K; ++k) {
      __m512 g[2][2];  // output row, column of each tile's 2x2 block of gy
      g[0][0] = g[0][1] = g[1][0] = g[1][1] = _mm512_setzero_ps();
      for (int64_t q = grp.first; q < grp.last; ++q) {
        const Segment& sg = seg[q];
        for (int64_t row = 0; row < 2 && 2 * sg.th + row < s.OH; ++row)
          pick_phases<2>(pick[q - grp.first], gy + ((sg.n * s.K + k) * s.OH + 2 * sg.th + row) * s.OW, g[row]);
      }
      const __m512 zero = _mm512_setzero_ps();
      // A g: rows (g0, g0 + g1, g0 - g1, -g1) of the 2-row block; then the same along each row.
      const __m512 rows[4][2] = {{g[0][0], g[0][1]},
                                 {_mm512_add_ps(g[0][0], g[1][0]), _mm512_add_ps(g[0][1], g[1][1])},
                                 {_mm512_sub_ps(g[0][0], g[1][0]), _mm512_sub_ps(g[0][1], g[1][1])},
                                 {_mm512_sub_ps(zero, g[1][0]), _mm512_sub_ps(zero, g[1][1])}};
      float* d = gt + k * kTiles + 16 * gi;
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        const __m512 a = rows[i][0], b = rows[i][1];
        _mm512_mask_storeu_ps(d + (i * 4 + 0) * xi_stride, store, a);
        _mm512_mask_storeu_ps(d + (i * 4 + 1) * xi_stride, store, _mm512_add_ps(a, b));
        _mm512_mask_storeu_ps(d + (i * 4 + 2) * xi_stride, store, _mm512_sub_ps(a, b));
        _mm512_mask_storeu_ps(d + (i * 4 + 3) * xi_stride, store, _mm512_sub_ps(zero, b));
      }
    }
  }
}

// p[r][0..16*CV) += sum over t < kTiles of gt[r * kTiles + t] * vt[t * ldv + 0..16*CV), r < rows.
template <int CV>
PYCNN_TARGET_AVX512 void grad_tile(const float* gt, const float* vt, int64_t ldv, int64_t rows, float* p, int64_t ldp) {
  constexpr int KR = 16 / CV;  // 16 accumulators
  __m512 acc[KR][CV];
#pragma GCC unroll 16
  for (int r = 0; r < KR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < CV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t t = 0; t < kTiles; ++t, vt += ldv) {
    __m512 b[CV];
#pragma GCC unroll 2
    for (int v = 0; v < CV; ++v) b[v] = _mm512_loadu_ps(vt + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < KR; ++r) {
      const __m512 a = _mm512_set1_ps(gt[r * kTiles + t]);
#pragma GCC unroll 2
      for (int v = 0; v < CV; ++v) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < KR; ++r) {
    if (r >= rows) break;
#pragma GCC unroll 2
    for (int v = 0; v < CV; ++v) {
      float* o = p + r * ldp + 16 * v;
      _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), acc[r][v]));
    }
  }
}

// P[xi] += Gy[xi] @ V[xi]^T for one block (vt: scratch for the transposed V).
PYCNN_TARGET_AVX512 void accumulate_grad(const Conv2dShape& s, int64_t cpad, const float* v, float* vt, const float* gt,
                                         float* p) {
  for (int64_t xi = 0; xi < 16; ++xi) {
    for (int64_t c = 0; c < s.C; c += 16)
      for (int64_t t = 0; t < kTiles; t += 16)
        transpose16_f32(v + (xi * s.C + c) * kTiles + t, kTiles, vt + (xi * kTiles + t) * cpad + c, cpad, 16);
    const float* vx = vt + xi * kTiles * cpad;
    const float* gx = gt + xi * s.K * kTiles;
    float* px = p + xi * s.K * cpad;
    int64_t c = 0;
    for (; c + 32 <= cpad; c += 32)
      for (int64_t k = 0; k < s.K; k += 8)
        grad_tile<2>(gx + k * kTiles, vx + c, cpad, std::min<int64_t>(8, s.K - k), px + k * cpad + c, cpad);
    for (; c < cpad; c += 16)
      for (int64_t k = 0; k < s.K; k += 16)
        grad_tile<1>(gx + k * kTiles, vx + c, cpad, std::min<int64_t>(16, s.K - k), px + k * cpad + c, cpad);
  }
}

// gw rows [k0, k1) from the summed P (see below).
PYCNN_TARGET_AVX512 void finish_rows(const Conv2dShape& s, int64_t cpad, const float* part, int64_t k0, int64_t k1,
                                     float* gw) {
  std::vector<float> out(size_t(9 * s.C));
  for (int64_t k = k0; k < k1; ++k) {
    const float* pk = part + k * cpad;
    auto P = [&](int i, int j, int64_t c) { return pk[(i * 4 + j) * s.K * cpad + c]; };
    for (int64_t c = 0; c < s.C; ++c) {
      float q[3][4];  // G^T P
      for (int j = 0; j < 4; ++j) {
        const float mid = 0.5f * (P(1, j, c) + P(2, j, c));
        q[0][j] = P(0, j, c) + mid;
        q[1][j] = 0.5f * (P(1, j, c) - P(2, j, c));
        q[2][j] = mid + P(3, j, c);
      }
      for (int a = 0; a < 3; ++a) {
        const float mid = 0.5f * (q[a][1] + q[a][2]);
        out[size_t((a * 3 + 0) * s.C + c)] = q[a][0] + mid;
        out[size_t((a * 3 + 1) * s.C + c)] = 0.5f * (q[a][1] - q[a][2]);
        out[size_t((a * 3 + 2) * s.C + c)] = mid + q[a][3];
      }
    }
    for (int64_t c = 0; c < s.C; ++c)
      for (int t = 0; t < 9; ++t) gw[(k * s.C + c) * 9 + t] = out[size_t(t * s.C + c)];
  }
}

// gw[k][c] = G^T P[.][k][c] G, P the chunks' sum (added in chunk order, into chunk 0),
// G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1]. Vectorised over c.
PYCNN_TARGET_AVX512 void finish_weight_grad(const Conv2dShape& s, int64_t cpad, int64_t chunks, float* part, float* gw) {
  const int64_t per_chunk = 16 * s.K * cpad;
  for (int64_t r = 1; r < chunks; ++r)
    for (int64_t e = 0; e < per_chunk; ++e) part[e] += part[r * per_chunk + e];
  parallel_for(s.K, 8, [&](int64_t k0, int64_t k1) { finish_rows(s, cpad, part, k0, k1, gw); });
}

}  // namespace

bool conv2d_backward_weight_winograd_f32(const Conv2dShape& s, const float* x, const float* gy, float* gw) {
  if (!winograd_applies(s) || s.C < kMinGradChannels) return false;
  const TileGrid grid(s);
  const int64_t blocks = (grid.total + kTiles - 1) / kTiles;
  const int64_t cpad = (s.C + 15) / 16 * 16;
  const int64_t chunks = std::clamp<int64_t>(blocks / 4, 1, 8);
  // Every block adds into its chunk's P (16 K x C matrices), so P must stay near the core: with
  // 512 x 512 channels (16 MiB) this path was 1.0-1.6x the dot-product kernel, with 256 x 256
  // (4 MiB) 0.46-1.0x, with 128 x 128 and below ~0.45x (measured, N 2-32, 7x7 to 56x56 maps).
  // All chunks' P together stay within 16 MiB.
  const int64_t p_bytes = 16 * s.K * cpad * int64_t(sizeof(float));
  if (p_bytes > (int64_t(4) << 20) || chunks * p_bytes > (int64_t(16) << 20)) return false;
  // Each chunk zeroes its own P (no value-initialisation of the whole buffer first).
  const std::unique_ptr<float[]> part(new float[size_t(chunks * 16 * s.K * cpad)]);
  parallel_for(chunks, 1, [&](int64_t r0, int64_t r1) {
    thread_local std::vector<float> scratch;
    // V (+16 rows: the transposes read whole 16-channel groups), VT, Gy (+16 rows: a register
    // tile reads all its 8 or 16 rows of Gy, also those past K, whose sums are never stored).
    const size_t nv = size_t((16 * s.C + 16) * kTiles), nvt = size_t(16 * kTiles * cpad);
    const size_t ng = size_t((16 * s.K + 16) * kTiles);
    if (scratch.size() < nv + nvt + ng) scratch.resize(nv + nvt + ng);
    float* v = scratch.data();
    float* vt = v + nv;
    float* gt = vt + nvt;
    Segment seg[kTiles];
    for (int64_t r = r0; r < r1; ++r) {
      float* p = part.get() + r * 16 * s.K * cpad;
      std::fill(p, p + 16 * s.K * cpad, 0.0f);
      const int64_t b_end = blocks * (r + 1) / chunks;
      for (int64_t blk = blocks * r / chunks; blk < b_end; ++blk) {
        const int64_t nseg = block_segments(grid, blk * kTiles, seg);
        // A partial block (the last): lanes of no tile must hold zeros in both operands.
        if (seg[nseg - 1].lane + seg[nseg - 1].count < kTiles) {
          std::fill(v, v + nv, 0.0f);
          std::fill(gt, gt + ng, 0.0f);
        }
        transform_input(s, x, seg, nseg, v);
        transform_grad(s, gy, seg, nseg, gt);
        accumulate_grad(s, cpad, v, vt, gt, p);
      }
    }
  });
  finish_weight_grad(s, cpad, chunks, part.get(), gw);
  return true;
}

bool conv2d_forward_winograd_f32(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) {
  if (!winograd_applies(s)) return false;
  const TileGrid grid(s);
  if (grid.total == 0) return true;
  const int64_t mblocks = (s.K + kMR - 1) / kMR, kpad = mblocks * kMR;
  const std::vector<float> u = transform_weights(s, w);
  const int64_t blocks = (grid.total + kTiles - 1) / kTiles;
  parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    // Per thread, kept across calls (a fresh buffer per call is page faults and a zero fill).
    thread_local std::vector<float> scratch;
    const size_t need = size_t(16 * (s.C + kpad) * kTiles);
    if (scratch.size() < need) scratch.resize(need);
    float* v = scratch.data();
    float* mt = v + 16 * s.C * kTiles;
    Segment seg[kTiles];
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t nseg = block_segments(grid, blk * kTiles, seg);
      transform_input(s, x, seg, nseg, v);
      for (int64_t xi = 0; xi < 16; ++xi)
        for (int64_t mb = 0; mb < mblocks; ++mb)
          gemm_tile(s.C, u.data() + (xi * mblocks + mb) * s.C * kMR, v + xi * s.C * kTiles,
                    mt + (xi * kpad + mb * kMR) * kTiles);
      transform_output(s, mt, kpad, bias, seg, nseg, y);
    }
  });
  return true;
}

#else
const char* winograd_forward_kernel(const Conv2dShape&) { return nullptr; }
bool conv2d_forward_winograd_f32(const Conv2dShape&, const float*, const float*, const float*, float*) { return false; }
bool conv2d_backward_weight_winograd_f32(const Conv2dShape&, const float*, const float*, float*) { return false; }
#endif

}  // namespace pycnn::cpu::PYCNN_ISA
