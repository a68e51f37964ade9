// Winograd F(2x2, 3x3) and F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks", 2016), written once over simd/vec.h for every target.
//
// An R x R block of outputs of a 3x3 convolution is computed from the T x T input tile d under
// it (T = R + 2):   y = A^T [ (G g G^T) (.) (B^T d B) ] A     (.) = elementwise, summed over
// input channels in the transformed domain, where it is T*T independent GEMMs, one per position
// xi of the tile:  M[xi][k][t] = sum_c U[xi][k][c] * V[xi][c][t]   (t = tile).
// F(2x2): 16 multiplies per 4 outputs and channel pair instead of 36 (2.25x fewer):
//     B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
//     A^T = [1 1 1 0; 0 1 -1 -1]
// F(4x4): 36 per 16 outputs instead of 144 (4x fewer), larger transforms:
//     B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
//     G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
//     A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
// F(2x2)'s entries are 0, +-1, +-0.5: its rounding error stays close to the direct sum's.
// F(4x4)'s (up to 8 in A, 5 in B) lose more float32 accuracy; tests/test_conv_winograd.py
// bounds both against torch's own float32 error (see the accuracy test there for the numbers).
//
// Layout: tiles in vector lanes. Work is split in blocks of `bt` tiles (a multiple of the
// vector's L lanes), numbered over the whole batch in raster order (tile t = (n, th, tw), output
// rows R th.., columns R tw..); a block is a list of segments, runs of tiles from one tile row,
// each within one L-lane vector. Per block, on one thread, everything stays in L2:
//   1. input transform  x -> V[xi][C][bt]: per row of the tile, the T column phases of the
//      segment's tiles from load_range (zero padding and tensor edges: lanes outside the row are
//      never read) and even/odd lane picks, B^T along the row, then B^T down the T rows
//   2. T*T GEMMs         U[xi] (K x C) @ V[xi] -> M[xi][Kpad][bt]   (kMR x 2 vector register tiles)
//   3. output transform  M -> y (+ bias), interleaving each tile's R columns back (large outputs:
//                        streaming stores, see kStreamBytes).
// Lanes of no tile (a partial last block) hold zeros in V. Odd output sizes: the last tile row /
// column reads zero padding and its extra outputs are not stored. Each output is computed by
// one fixed sequence of operations whatever thread runs its block, so results do not depend on
// the thread count.
#include "cpu/winograd.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/parallel.h"
#include "cpu/kernels.h"

#include "simd/vec.h"

PYCNN_TARGET_BEGIN  // this target's instructions from here to PYCNN_TARGET_END

namespace pycnn::cpu::PYCNN_ISA {
namespace {

using V = vec<float>;
constexpr int L = kLanesOf<float>;
// GEMM register tile: MR output channels x kNV vectors of tiles (accumulators MR * kNV, plus
// kNV loads and a broadcast): 6 x 2 on 16-register targets (15 registers), 12 x 2 on 32, or
// 8 x 2 there where 12-row tiles compute over 1.4 rows per output channel (K = 16 computed 24
// rows: a third of the GEMM for nothing). Each output sums over the channels in the same order whatever the tile, so
// the choice changes no bit. Measured (AVX-512 Xeon, 2 threads, alternating processes, ms, 12
// rows -> 8): 16 -> 16 14x14 N48 (Mask R-CNN's mask head) 0.52-0.58 -> 0.43-0.49, 32 -> 16 0.98
// -> 0.76-0.84, 33 -> 16 0.89-1.06 -> 0.64-0.78, 16 -> 16 32x32 N32 1.03-1.25 -> 0.81-0.97; but
// where 12 rows pad less, 8 lost: 128 -> 128 14x14 N16 2.85-3.44 -> 3.61-4.12, 64 -> 64 32x32
// N32 7.7-9.3 -> 8.7-9.9 (more row blocks: V is read once per block).
constexpr int kNV = 2;
constexpr int kMR = kRegisters >= 32 ? 12 : 6;
constexpr int kMRSmall = kRegisters >= 32 ? 8 : 6;
// Tiles per forward block: at least two vectors (one register tile); 16 on 4-lane targets.
constexpr int64_t kBlockTiles = std::max<int64_t>(kNV * L, 16);
// Outputs of at least this many bytes are written with streaming stores (vec.h store_stream).
// Why: each block writes R rows of every output channel, short runs on K pages at once, and
// where those lines are not in cache each plain store first reads its line from memory. In a
// training step they are not: the fresh output buffers are memory the step's saved activations
// pushed out of L3. Measured (AVX2 AMD EPYC, 2 threads, ResNet-20 N32 training step, in-process
// A/B, three runs): streaming outputs >= 1 MiB (the 16- and 32-channel layers) 0.790 / 0.765 /
// 0.796 of torch's step time against 0.831 / 0.805 / 0.830 without; also streaming the 512 KiB
// outputs of the 64-channel layers was no better. The same stores in the direct forward and in
// batch norm's output measured no difference (their long sequential runs prefetch well).
constexpr int64_t kStreamBytes = int64_t(1) << 20;
// Tiles per weight-gradient block (the reduction length of its per-block GEMMs).
constexpr int64_t kGradTiles = std::max<int64_t>(2 * L, 32);
constexpr int64_t kMaxTiles = std::max(kBlockTiles, kGradTiles);
// Below this many input or output channels the transforms cost more than the multiplies they
// save (measured on AVX-512 with the previous F(2x2) kernel: 3 -> 16 channels 32x32 slower than
// direct, 4 -> 16 faster).
constexpr int64_t kMinChannels = 4;
// The weight gradient puts input channels in the vector lanes: with 4 of them slower than the
// dot-product kernel, with 8 faster (measured with the previous AVX-512 kernel).
constexpr int64_t kMinGradChannels = 8;

// p + e elements, as an address only (it may lie outside the tensor: load_range never reads the
// lanes outside its range).
PYCNN_INLINE const float* shifted(const float* p, int64_t e) {
  return reinterpret_cast<const float*>(reinterpret_cast<uintptr_t>(p) + e * int64_t(sizeof(float)));
}

struct TileGrid {
  int64_t per_row, rows, per_image, total;
  TileGrid(const Conv2dShape& s, int64_t R)
      : per_row((s.OW + R - 1) / R), rows((s.OH + R - 1) / R), per_image(per_row * rows), total(s.N * per_row * rows) {}
};

// Tiles [lane, lane + count) of a block are tiles [tw0, tw0 + count) of tile row th of sample n.
struct Segment {
  int64_t n, th, tw0, count, lane;
};

int64_t block_segments(const TileGrid& g, int64_t first_tile, int64_t bt, Segment* seg) {
  int64_t nseg = 0;
  for (int64_t lane = 0; lane < bt && first_tile + lane < g.total;) {
    const int64_t t = first_tile + lane, n = t / g.per_image, rem = t % g.per_image;
    const int64_t th = rem / g.per_row, tw0 = rem % g.per_row;
    const int64_t count = std::min({L - lane % L, g.per_row - tw0, g.total - t});
    seg[nseg++] = {n, th, tw0, count, lane};
    lane += count;
  }
  return nseg;
}

// One vector load of a row piece: lanes [lo, hi) (clamped to [0, L)); `full` when that is every
// lane (a plain load), none when lo >= hi (no memory touched). Worked out once per segment,
// outside the channel loop. A partial range whose whole vector lies inside the tensor is a plain
// load with the other lanes zeroed by a select (AVX2's masked load, vmaskmovps, took a quarter
// of the forward's time on AMD Zen); only at the tensor's ends does it take load_range.
struct LoadSpec {
  int64_t lo, hi;
  bool full, none;
  vmask<float> keep;
  LoadSpec() = default;
  LoadSpec(int64_t l, int64_t h) : lo(std::clamp<int64_t>(l, 0, L)), hi(std::clamp<int64_t>(h, 0, L)) {
    full = lo == 0 && hi == L;
    none = lo >= hi;
    const vmask<float> idx = lane_index<float>();
    keep = (idx >= int32_t(lo)) & (idx < int32_t(hi));
  }
};
// The tensor a reader reads: [begin, end) as addresses.
struct Bounds {
  uintptr_t begin, end;
};
PYCNN_INLINE V load_spec(const float* p, const LoadSpec& ls, const Bounds& b) {
  if (ls.full) return load(p);
  if (ls.none) return zero<float>();
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a >= b.begin && a + sizeof(V) <= b.end) return select(ls.keep, load(p), zero<float>());
  return load_range(p, ls.lo, ls.hi);
}

// Where one segment reads a row's column phases. Lane l (of its L-lane vector, l in [l0, l0 +
// count)) of phase j is column R (tw0 + l - l0) + j - pad = base + R l + j. Run u (u = 0: phases
// 0..R-1, u = 1: phases R, R+1) loads R vectors at base + u R, elements [lo, hi): those of the
// segment's lanes whose column lies inside [0, width).
template <int R>
struct PhaseReader {
  int64_t base;
  LoadSpec ld[2][R];  // run u, vector v
  PhaseReader() = default;
  PhaseReader(const Segment& sg, int64_t width, int64_t pad) {
    const int64_t l0 = sg.lane % L;
    base = R * (sg.tw0 - l0) - pad;
    for (int u = 0; u < 2; ++u) {
      const int64_t b = base + u * R;
      const int64_t lo = std::max<int64_t>(R * l0, -b), hi = std::min<int64_t>(R * (l0 + sg.count), width - b);
      for (int v = 0; v < R; ++v) ld[u][v] = LoadSpec(lo - v * L, hi - v * L);
    }
  }
};

// ph[j] (+)= phase j of the row (its column 0 at `row`) in the segment's lanes, j < NP
// (NP = R + 2, or R for the gradient's halo-free 2x2 blocks). add: accumulate into ph (a vector
// shared by several segments) rather than assign.
template <int R, int NP>
PYCNN_INLINE void read_phases(const PhaseReader<R>& pr, const Bounds& bd, const float* row, bool add, V* ph) {
  V out[R + 2];
#pragma GCC unroll 2
  for (int u = 0; u < (NP > R ? 2 : 1); ++u) {
    const float* p = shifted(row, pr.base + u * R);
    if constexpr (R == 2) {
      const V a = load_spec(p, pr.ld[u][0], bd), b = load_spec(shifted(p, L), pr.ld[u][1], bd);
      out[2 * u] = even_lanes(a, b);
      out[2 * u + 1] = odd_lanes(a, b);
    } else {
      const V a = load_spec(p, pr.ld[u][0], bd), b = load_spec(shifted(p, L), pr.ld[u][1], bd);
      const V c = load_spec(shifted(p, 2 * L), pr.ld[u][2], bd);
      const V d = load_spec(shifted(p, 3 * L), pr.ld[u][3], bd);
      const V e0 = even_lanes(a, b), o0 = odd_lanes(a, b), e1 = even_lanes(c, d), o1 = odd_lanes(c, d);
      out[4 * u] = even_lanes(e0, e1);      // columns 4l (+ 4 u)
      out[4 * u + 1] = even_lanes(o0, o1);  // 4l + 1
      if (u == 0) {
        out[2] = odd_lanes(e0, e1);  // 4l + 2
        out[3] = odd_lanes(o0, o1);  // 4l + 3
      }
    }
  }
#pragma GCC unroll 6
  for (int j = 0; j < NP; ++j) ph[j] = add ? ph[j] + out[j] : out[j];
}

// r = B^T d (T = R + 2 values).
template <int R>
PYCNN_INLINE void input_1d(const V* d, V* r) {
  if constexpr (R == 2) {
    r[0] = d[0] - d[2];
    r[1] = d[1] + d[2];
    r[2] = d[2] - d[1];
    r[3] = d[1] - d[3];
  } else {
    const V m4 = broadcast(-4.0f), m5 = broadcast(-5.0f), p4 = broadcast(4.0f);
    const V t0 = fma(m4, d[2], d[4]), t1 = fma(m4, d[1], d[3]);  // d4 - 4 d2, d3 - 4 d1
    const V t2 = d[4] - d[2], t3 = (d[3] - d[1]) + (d[3] - d[1]);  // d4 - d2, 2 (d3 - d1)
    r[0] = fma(p4, d[0], fma(m5, d[2], d[4]));
    r[1] = t0 + t1;
    r[2] = t0 - t1;
    r[3] = t2 + t3;
    r[4] = t2 - t3;
    r[5] = fma(p4, d[1], fma(m5, d[3], d[5]));
  }
}

// o = A^T m (R values from T).
template <int R>
PYCNN_INLINE void output_1d(const V* m, V* o) {
  if constexpr (R == 2) {
    o[0] = (m[0] + m[1]) + m[2];
    o[1] = (m[1] - m[2]) - m[3];
  } else {
    const V a = m[1] + m[2], b = m[1] - m[2], c = m[3] + m[4], d = m[3] - m[4];
    o[0] = (m[0] + a) + c;
    o[1] = fma(broadcast(2.0f), d, b);
    o[2] = fma(broadcast(4.0f), c, a);
    o[3] = fma(broadcast(8.0f), d, b) + m[5];
  }
}

// The segments [first, last) of a block that fill lanes [L g, L g + L) (first == last: none).
struct LaneGroup {
  int64_t first, last;
};

int64_t lane_groups(const Segment* seg, int64_t nseg, int64_t bt, LaneGroup* groups) {
  const int64_t ng = bt / L;
  for (int64_t g = 0; g < ng; ++g) groups[g] = {0, 0};
  for (int64_t q = 0; q < nseg; ++q) {
    LaneGroup& grp = groups[seg[q].lane / L];
    if (grp.first == grp.last) grp.first = q;
    grp.last = q + 1;
  }
  return ng;
}

// V[xi][c][lane] = (B^T d B)[xi] for the tiles of one block (lanes of no tile: 0), channels
// [0, C).
template <int R>
void transform_input(const Conv2dShape& s, const float* x, const Segment* seg, int64_t nseg, int64_t bt,
                     float* v) {
  constexpr int T = R + 2;
  const int64_t plane = s.H * s.W, xi_stride = s.C * bt;
  const Bounds bd{reinterpret_cast<uintptr_t>(x), reinterpret_cast<uintptr_t>(x + s.N * s.C * plane)};
  LaneGroup groups[kMaxTiles / 4];
  const int64_t ng = lane_groups(seg, nseg, bt, groups);
  PhaseReader<R> readers[L];
  for (int64_t gi = 0; gi < ng; ++gi) {
    const LaneGroup grp = groups[gi];
    for (int64_t q = grp.first; q < grp.last; ++q) readers[q - grp.first] = PhaseReader<R>(seg[q], s.W, s.pw);
    // One segment (maps at least L tiles wide): its rows' validity once, outside the channels.
    const bool single = grp.last - grp.first == 1;
    bool row_ok[T];
    for (int i = 0; i < T; ++i) {
      const int64_t h = single ? R * seg[grp.first].th - s.ph + i : 0;
      row_ok[i] = h >= 0 && h < s.H;
    }
    const float* x0 = single ? x + seg[grp.first].n * s.C * plane + (R * seg[grp.first].th - s.ph) * s.W : nullptr;
    for (int64_t c = 0; c < s.C; ++c) {
      V hr[T][T];  // B^T along input row i of the tiles, phase j
#pragma GCC unroll 6
      for (int i = 0; i < T; ++i) {
        V ph[T];
        if (single) {
          if (row_ok[i]) {
            read_phases<R, T>(readers[0], bd, shifted(x0, c * plane + i * s.W), false, ph);
          } else {
#pragma GCC unroll 6
            for (int j = 0; j < T; ++j) ph[j] = zero<float>();
          }
        } else {
#pragma GCC unroll 6
          for (int j = 0; j < T; ++j) ph[j] = zero<float>();
          bool add = false;
          for (int64_t q = grp.first; q < grp.last; ++q) {
            const Segment& sg = seg[q];
            const int64_t h = R * sg.th - s.ph + i;
            if (h < 0 || h >= s.H) continue;
            read_phases<R, T>(readers[q - grp.first], bd, x + (sg.n * s.C + c) * plane + h * s.W, add, ph);
            add = true;
          }
        }
        input_1d<R>(ph, hr[i]);
      }
      float* d = v + c * bt + L * gi;
#pragma GCC unroll 6
      for (int j = 0; j < T; ++j) {
        V col[T], out[T];
#pragma GCC unroll 6
        for (int i = 0; i < T; ++i) col[i] = hr[i][j];
        input_1d<R>(col, out);
#pragma GCC unroll 6
        for (int i = 0; i < T; ++i) store(d + (i * T + j) * xi_stride, out[i]);
      }
    }
  }
}

// m[r][0 .. kNV L) = sum_c a[c][r] * v[c][0 .. kNV L) for r < MR: one register tile.
template <int MR>
void gemm_tile(int64_t C, const float* a, const float* v, int64_t ldv, float* m, int64_t ldm) {
  V acc[MR][kNV];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int u = 0; u < kNV; ++u) acc[r][u] = zero<float>();
  for (int64_t c = 0; c < C; ++c, a += MR, v += ldv) {
    V b[kNV];
#pragma GCC unroll 2
    for (int u = 0; u < kNV; ++u) b[u] = load(v + u * L);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      const V av = broadcast(a[r]);
#pragma GCC unroll 2
      for (int u = 0; u < kNV; ++u) acc[r][u] = fma(av, b[u], acc[r][u]);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int u = 0; u < kNV; ++u) store(m + r * ldm + u * L, acc[r][u]);
}

// U[xi][mb][c][m] = (G w[mb*MR + m][c] G^T)[xi], zero for output channels past K: the MR
// values one GEMM step broadcasts are adjacent. Computed in double, then rounded once.
template <int R, int MR>
std::vector<float> transform_weights(const Conv2dShape& s, const float* w, int64_t mblocks) {
  constexpr int T = R + 2;
  static constexpr double G2[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  static constexpr double G4[6][3] = {{1.0 / 4, 0, 0},
                                      {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                      {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                      {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                      {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                      {0, 0, 1}};
  const double(*G)[3] = R == 2 ? G2 : G4;
  std::vector<float> u(size_t(T * T * mblocks * s.C * MR), 0.0f);
  // Threads over output channels (each k writes its own entries).
  parallel_for(s.K, 8, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k)
      for (int64_t c = 0; c < s.C; ++c) {
        const float* g = w + (k * s.C + c) * 9;
        double e[T][T];  // (G g) G^T
        if constexpr (R == 2) {
          // G applied to a column (a, b, c) is (a, (a + b + c) / 2, (a - b + c) / 2, c): a few adds
          // and halvings instead of the general products below (this runs for every weight on
          // every forward and input-gradient call).
          auto apply_g = [](double a, double b, double c, double* out) {
            out[0] = a, out[1] = 0.5 * (a + b + c), out[2] = 0.5 * (a - b + c), out[3] = c;
          };
          double gg[3][T];  // gg[j][i] = (G g)[i][j]
          for (int j = 0; j < 3; ++j) apply_g(g[j], g[3 + j], g[6 + j], gg[j]);
          for (int i = 0; i < T; ++i) apply_g(gg[0][i], gg[1][i], gg[2][i], e[i]);
        } else {
          double t[T][3];  // G g
          for (int i = 0; i < T; ++i)
            for (int j = 0; j < 3; ++j) t[i][j] = G[i][0] * g[j] + G[i][1] * g[3 + j] + G[i][2] * g[6 + j];
          for (int i = 0; i < T; ++i)
            for (int j = 0; j < T; ++j) e[i][j] = t[i][0] * G[j][0] + t[i][1] * G[j][1] + t[i][2] * G[j][2];
        }
        for (int i = 0; i < T; ++i)
          for (int j = 0; j < T; ++j)
            u[size_t((((i * T + j) * mblocks + k / MR) * s.C + c) * MR + k % MR)] = float(e[i][j]);
      }
  });
  return u;
}

// d[0 .. n) = src[0 .. n) (src readable up to a whole vector past n); stream: store_stream_first.
PYCNN_INLINE void copy_short(const float* src, int64_t n, float* d, bool stream) {
  if (stream) {
    for (int64_t u = 0; u < n; u += L) store_stream_first(d + u, load(src + u), n - u);
  } else {
    for (int64_t u = 0; u < n; u += L) store_first(d + u, load(src + u), n - u);
  }
}

// y tiles of one block from M[xi][Kpad][bt], + bias.
template <int R>
void transform_output(const Conv2dShape& s, const float* mt, int64_t kpad, int64_t bt, const float* bias,
                      const Segment* seg, int64_t nseg, bool stream, float* y) {
  constexpr int T = R + 2;
  // Row r of tile l's outputs at out[r][R l ..]: the rows as y stores them (+ L: copy_short
  // reads whole vectors).
  alignas(64) float out[R][R * kMaxTiles + L];
  const int64_t xi_stride = kpad * bt;
  const int64_t lanes = seg[nseg - 1].lane + seg[nseg - 1].count;
  for (int64_t k = 0; k < s.K; ++k) {
    const V b = broadcast(bias ? bias[k] : 0.0f);
    for (int64_t l = 0; l < lanes; l += L) {
      const float* m = mt + k * bt + l;
      V rows[T][R];  // A^T along each tile row i
#pragma GCC unroll 6
      for (int i = 0; i < T; ++i) {
        V mi[T];
#pragma GCC unroll 6
        for (int j = 0; j < T; ++j) mi[j] = load(m + (i * T + j) * xi_stride);
        output_1d<R>(mi, rows[i]);
      }
      V yv[R][R];  // output row r, column q
#pragma GCC unroll 4
      for (int q = 0; q < R; ++q) {
        V col[T], o[R];
#pragma GCC unroll 6
        for (int i = 0; i < T; ++i) col[i] = rows[i][q];
        output_1d<R>(col, o);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) yv[r][q] = o[r] + b;
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        float* o = out[r] + R * l;
        if constexpr (R == 2) {
          store(o, interleave_lo(yv[r][0], yv[r][1]));
          store(o + L, interleave_hi(yv[r][0], yv[r][1]));
        } else {
          const V e = interleave_lo(yv[r][0], yv[r][2]), f = interleave_lo(yv[r][1], yv[r][3]);
          const V g = interleave_hi(yv[r][0], yv[r][2]), h = interleave_hi(yv[r][1], yv[r][3]);
          store(o, interleave_lo(e, f));
          store(o + L, interleave_hi(e, f));
          store(o + 2 * L, interleave_lo(g, h));
          store(o + 3 * L, interleave_hi(g, h));
        }
      }
    }
    for (int64_t q = 0; q < nseg; ++q) {
      const Segment& sg = seg[q];
      const int64_t ncols = std::min(R * sg.count, s.OW - R * sg.tw0);
      float* d = y + ((sg.n * s.K + k) * s.OH + R * sg.th) * s.OW + R * sg.tw0;
      for (int64_t r = 0; r < R && R * sg.th + r < s.OH; ++r)
        copy_short(out[r] + R * sg.lane, ncols, d + r * s.OW, stream);
    }
  }
}

bool winograd_shape(const Conv2dShape& s) {
  return s.groups == 1 && s.kh == 3 && s.kw == 3 && s.sh == 1 && s.sw == 1 && s.dh == 1 && s.dw == 1 &&
         s.C >= kMinChannels && s.K >= kMinChannels;
}

// F(4x4) where its saved multiplies pay for its larger transforms and edge waste (see
// winograd_forward_kernel), when switched on (conv_winograd4x4_mode: off by default).
bool use_f4x4(const Conv2dShape& s) {
  const int mode = conv_winograd4x4_mode();
  if (mode == 2) return true;
  return mode == 1 && s.OH >= 12 && s.OW >= 12 && s.C >= 16 && s.K >= 16;
}

template <int R, int MR>
void forward(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) {
  constexpr int NX = (R + 2) * (R + 2);
  const TileGrid grid(s, R);
  if (grid.total == 0) return;
  const int64_t mblocks = (s.K + MR - 1) / MR, kpad = mblocks * MR;
  const std::vector<float> u = transform_weights<R, MR>(s, w, mblocks);
  const int64_t bt = kBlockTiles;
  const int64_t blocks = (grid.total + bt - 1) / bt;
  // Only rows of whole cache lines (OW a multiple of 16 floats): a 14- or 28-float row leaves
  // partly written lines behind each streaming store, which memory completes by reading them
  // (AVX2 AMD EPYC, 2 threads, N46 14x14, 16 -> 32 channels: 1.16 ms streamed, 0.60 not).
  const bool stream = s.N * s.K * s.OH * s.OW * int64_t(sizeof(float)) >= kStreamBytes &&
                      s.OW * int64_t(sizeof(float)) % 64 == 0;
  parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    // Per thread, kept across calls (a fresh buffer per call is page faults and a zero fill).
    // Every element is rewritten per block before it is read.
    thread_local std::vector<float> scratch;
    const size_t need = size_t(NX * (s.C + kpad) * bt);
    if (scratch.size() < need) scratch.resize(need);
    float* v = scratch.data();
    float* mt = v + NX * s.C * bt;
    Segment seg[kMaxTiles];
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t nseg = block_segments(grid, blk * bt, bt, seg);
      transform_input<R>(s, x, seg, nseg, bt, v);
      for (int64_t xi = 0; xi < NX; ++xi)
        for (int64_t mb = 0; mb < mblocks; ++mb)
          for (int64_t nb = 0; nb < bt; nb += kNV * L)
            gemm_tile<MR>(s.C, u.data() + (xi * mblocks + mb) * s.C * MR, v + xi * s.C * bt + nb, bt,
                          mt + (xi * kpad + mb * MR) * bt + nb, bt);
      transform_output<R>(s, mt, kpad, bt, bias, seg, nseg, stream, y);
    }
    if (stream) stream_fence();  // before the region's end hands y on
  });
}

// ---- weight gradient (F(2x2)) ---------------------------------------------------------------
// With U = G w G^T the forward is linear in U, so dL/dU[xi] = sum over tiles of
// (A gy_t A^T)[xi] * V_t[xi] and dL/dw = G^T dL/dU G:
//   1. per block: V as in the forward, and Gy[xi][k][lane] = (A g A^T)[xi] for the 2x2 block g
//      of gy under each tile (A = [1 0; 1 1; 1 -1; 0 -1]); V transposed to VT[xi][lane][c]
//   2. P[xi][k][c] += sum over the block's tiles of Gy[xi][k][t] * VT[xi][t][c]: a GEMM with
//      the tiles as its reduction (c in lanes, Gy broadcast)
//   3. once: gw[k][c] = G^T P[.][k][c] G.
// The batch's blocks are cut into a fixed number of chunks (from the shape alone), each summed
// into its own P, and the chunks are added in order: the result does not depend on threads.

// Gy[xi][k][lane] for the tiles of one block (gy outside the output reads as 0; lanes of no
// tile: 0).
void transform_grad(const Conv2dShape& s, const float* gy, const Segment* seg, int64_t nseg, int64_t bt, float* gt) {
  const int64_t xi_stride = s.K * bt;
  const Bounds bd{reinterpret_cast<uintptr_t>(gy), reinterpret_cast<uintptr_t>(gy + s.N * s.K * s.OH * s.OW)};
  LaneGroup groups[kMaxTiles / 4];
  const int64_t ng = lane_groups(seg, nseg, bt, groups);
  PhaseReader<2> readers[L];
  for (int64_t gi = 0; gi < ng; ++gi) {
    const LaneGroup grp = groups[gi];
    for (int64_t q = grp.first; q < grp.last; ++q) readers[q - grp.first] = PhaseReader<2>(seg[q], s.OW, 0);
    for (int64_t k = 0; k < s.K; ++k) {
      V g[2][2];  // output row, column of each tile's 2x2 block of gy
      g[0][0] = g[0][1] = g[1][0] = g[1][1] = zero<float>();
      for (int64_t q = grp.first; q < grp.last; ++q) {
        const Segment& sg = seg[q];
        for (int64_t row = 0; row < 2 && 2 * sg.th + row < s.OH; ++row)
          read_phases<2, 2>(readers[q - grp.first], bd, gy + ((sg.n * s.K + k) * s.OH + 2 * sg.th + row) * s.OW, true,
                            g[row]);
      }
      const V z = zero<float>();
      // A g: rows (g0, g0 + g1, g0 - g1, -g1) of the 2-row block; then the same along each row.
      const V rows[4][2] = {{g[0][0], g[0][1]},
                            {g[0][0] + g[1][0], g[0][1] + g[1][1]},
                            {g[0][0] - g[1][0], g[0][1] - g[1][1]},
                            {z - g[1][0], z - g[1][1]}};
      float* d = gt + k * bt + L * gi;
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        const V a = rows[i][0], b = rows[i][1];
        store(d + (i * 4 + 0) * xi_stride, a);
        store(d + (i * 4 + 1) * xi_stride, a + b);
        store(d + (i * 4 + 2) * xi_stride, a - b);
        store(d + (i * 4 + 3) * xi_stride, z - b);
      }
    }
  }
}

// dst[j][i] = src[i][j], i, j < L (log2 L rounds of interleaving rows i and i + L/2: each moves
// one bit of the row index into the column index).
PYCNN_INLINE void transpose_block(const float* src, int64_t lds, float* dst, int64_t ldd) {
  V r[L];
#pragma GCC unroll 16
  for (int i = 0; i < L; ++i) r[i] = load(src + i * lds);
#pragma GCC unroll 4
  for (int w = 1; w < L; w *= 2) {
    V t[L];
#pragma GCC unroll 8
    for (int i = 0; i < L / 2; ++i) {
      t[2 * i] = interleave_lo(r[i], r[i + L / 2]);
      t[2 * i + 1] = interleave_hi(r[i], r[i + L / 2]);
    }
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) r[i] = t[i];
  }
#pragma GCC unroll 16
  for (int i = 0; i < L; ++i) store(dst + i * ldd, r[i]);
}

// p[r][0 .. CV L) += sum over t < bt of gt[r * bt + t] * vt[t * ldv + 0 .. CV L), r < rows
// (KR rows computed: those past `rows` read Gy's padding and are not stored).
template <int CV, int KR>
void grad_tile(const float* gt, int64_t bt, const float* vt, int64_t ldv, int64_t rows, float* p, int64_t ldp) {
  V acc[KR][CV];
#pragma GCC unroll 28
  for (int r = 0; r < KR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < CV; ++v) acc[r][v] = zero<float>();
  for (int64_t t = 0; t < bt; ++t, vt += ldv) {
    V b[CV];
#pragma GCC unroll 2
    for (int v = 0; v < CV; ++v) b[v] = load(vt + L * v);
#pragma GCC unroll 28
    for (int r = 0; r < KR; ++r) {
      const V a = broadcast(gt[r * bt + t]);
#pragma GCC unroll 2
      for (int v = 0; v < CV; ++v) acc[r][v] = fma(a, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 28
  for (int r = 0; r < KR; ++r) {
    if (r >= rows) break;
#pragma GCC unroll 2
    for (int v = 0; v < CV; ++v) {
      float* o = p + r * ldp + L * v;
      store(o, load(o) + acc[r][v]);
    }
  }
}
// Register tiles of the weight gradient: KR output channels x CV vectors of input channels, KR
// = (registers - 4) / CV (12 or 28 accumulators: 14 x 2 and 28 x 1 on 32 registers), or a
// power of two where that computes over 1.4 rows per output channel (K = 16: 28 rows); every row sums
// over the tiles in the same order either way, so the choice changes no bit. Measured (AVX-512
// Xeon, 1 thread, CPU ms, best of 7 x 30 calls, four alternating process pairs): N48 14x14
// 16 -> 16 0.69-1.07 -> 0.58-0.73, 32 -> 16 1.29-1.64 -> 1.02-1.17 (64 -> 64 8x8, unchanged
// code: 1.06-1.58 and 1.02-1.33: the VM's noise).
constexpr int kGradRows2 = (kRegisters - 4) / 2, kGradRows1 = kRegisters - 4;
constexpr int kGradRows2Small = kGradRows2 >= 8 ? 8 : 4, kGradRows1Small = kGradRows1 >= 16 ? 16 : 8;
// Whether a tile of `small` rows should replace one of `rows` for K output channels: where the
// full tile computes over 1.4 rows per channel and the smaller fewer (forward and weight gradient).
bool smaller_tile_pays(int64_t K, int64_t rows, int64_t small) {
  const auto computed = [&](int64_t r) { return (K + r - 1) / r * r; };
  return double(K) / double(computed(rows)) < 0.7 && computed(small) < computed(rows);
}

// P rows [0, K) of CV channel vectors (p, vt: at their first channel) += Gy @ VT, KR rows a tile.
template <int CV, int KR>
void grad_rows(int64_t K, const float* gt, int64_t bt, const float* vt, int64_t ldv, float* p) {
  for (int64_t k = 0; k < K; k += KR)
    grad_tile<CV, KR>(gt + k * bt, bt, vt, ldv, std::min<int64_t>(KR, K - k), p + k * ldv, ldv);
}

// P[xi] += Gy[xi] @ V[xi]^T for one block (vt: scratch for the transposed V).
void accumulate_grad(const Conv2dShape& s, int64_t cpad, int64_t bt, const float* v, float* vt, const float* gt,
                     float* p) {
  const bool small2 = smaller_tile_pays(s.K, kGradRows2, kGradRows2Small);
  const bool small1 = smaller_tile_pays(s.K, kGradRows1, kGradRows1Small);
  for (int64_t xi = 0; xi < 16; ++xi) {
    for (int64_t c = 0; c < s.C; c += L)
      for (int64_t t = 0; t < bt; t += L)
        transpose_block(v + (xi * s.C + c) * bt + t, bt, vt + t * cpad + c, cpad);
    const float* gx = gt + xi * s.K * bt;
    float* px = p + xi * s.K * cpad;
    int64_t c = 0;
    for (; c + 2 * L <= cpad; c += 2 * L)
      small2 ? grad_rows<2, kGradRows2Small>(s.K, gx, bt, vt + c, cpad, px + c)
             : grad_rows<2, kGradRows2>(s.K, gx, bt, vt + c, cpad, px + c);
    for (; c < cpad; c += L)
      small1 ? grad_rows<1, kGradRows1Small>(s.K, gx, bt, vt + c, cpad, px + c)
             : grad_rows<1, kGradRows1>(s.K, gx, bt, vt + c, cpad, px + c);
  }
}

// gw rows [k0, k1) from the summed P: gw[k][c] = G^T P[.][k][c] G,
// G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1].
void finish_rows(const Conv2dShape& s, int64_t cpad, const float* part, int64_t k0, int64_t k1, float* gw) {
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
      float* o = gw + (k * s.C + c) * 9;
      for (int a = 0; a < 3; ++a) {
        const float mid = 0.5f * (q[a][1] + q[a][2]);
        o[a * 3 + 0] = q[a][0] + mid;
        o[a * 3 + 1] = 0.5f * (q[a][1] - q[a][2]);
        o[a * 3 + 2] = mid + q[a][3];
      }
    }
  }
}

}  // namespace

// F(2x2) everywhere the shape qualifies. F(4x4) only when switched on (its float32 error measured
// 7-10x torch's on ResNet layers, F(2x2)'s 0.3-0.5x): then where the maps are at least 12x12 and
// both channel counts at least 16. Measured (AVX2, 2 threads, N32, forward, F(4x4) vs F(2x2) on a
// shared, loaded machine): 64ch 32x32 26.5 vs 35.8 ms, 32ch 16x16 1.18 vs 1.71, 16ch 32x32 1.33
// vs 2.04; 8x8 maps gave no reliable difference there, so they keep F(2x2).
const char* winograd_forward_kernel(const Conv2dShape& s) {
  if (!conv_winograd_enabled() || !winograd_shape(s)) return nullptr;
  return use_f4x4(s) ? "winograd4x4" : "winograd";
}

bool conv2d_forward_winograd_f32(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) {
  const char* kernel = winograd_forward_kernel(s);
  if (!kernel) return false;
  const bool small = kMRSmall != kMR && smaller_tile_pays(s.K, kMR, kMRSmall);  // see kMRSmall
  if (kernel[8] == '4') small ? forward<4, kMRSmall>(s, x, w, bias, y) : forward<4, kMR>(s, x, w, bias, y);
  else small ? forward<2, kMRSmall>(s, x, w, bias, y) : forward<2, kMR>(s, x, w, bias, y);
  return true;
}

bool conv2d_backward_weight_winograd_f32(const Conv2dShape& s, const float* x, const float* gy, float* gw) {
  if (!conv_winograd_enabled() || !winograd_shape(s) || s.C < kMinGradChannels) return false;
  const TileGrid grid(s, 2);
  if (grid.total == 0) return false;
  const int64_t bt = kGradTiles;
  const int64_t blocks = (grid.total + bt - 1) / bt;
  const int64_t cpad = (s.C + L - 1) / L * L;
  const int64_t chunks = std::clamp<int64_t>(blocks / 4, 1, 8);
  // Every block adds into its chunk's P (16 K x C matrices), so P must stay near the core: with
  // 512 x 512 channels (16 MiB) this path was 1.0-1.6x the dot-product kernel, with 256 x 256
  // (4 MiB) 0.46-1.0x, with 128 x 128 and below ~0.45x (measured with the previous AVX-512
  // kernel, N 2-32, 7x7 to 56x56 maps). All chunks' P together stay within 16 MiB.
  const int64_t p_elems = 16 * s.K * cpad;
  const int64_t p_bytes = p_elems * int64_t(sizeof(float));
  if (p_bytes > (int64_t(4) << 20) || chunks * p_bytes > (int64_t(16) << 20)) return false;
  // Each chunk zeroes its own P (no value-initialisation of the whole buffer first).
  const std::unique_ptr<float[]> part(new float[size_t(chunks * p_elems)]);
  parallel_for(chunks, 1, [&](int64_t r0, int64_t r1) {
    thread_local std::vector<float> scratch;
    // V (+L rows: the transposes read whole L-channel groups), VT, Gy (+kGradRows1 rows: a
    // register tile reads all its rows of Gy, also those past K, whose sums are never stored).
    // The padding rows are zeroed once; everything else is rewritten per block.
    const size_t nv = size_t((16 * s.C + L) * bt), nvt = size_t(bt * cpad);
    const size_t ng = size_t((16 * s.K + kGradRows1) * bt);
    if (scratch.size() < nv + nvt + ng) scratch.assign(nv + nvt + ng, 0.0f);
    float* v = scratch.data();
    float* vt = v + nv;
    float* gt = vt + nvt;
    std::fill(v + 16 * s.C * bt, v + nv, 0.0f);
    std::fill(gt + 16 * s.K * bt, gt + ng, 0.0f);
    Segment seg[kMaxTiles];
    for (int64_t r = r0; r < r1; ++r) {
      float* p = part.get() + r * p_elems;
      std::fill(p, p + p_elems, 0.0f);
      const int64_t b_end = blocks * (r + 1) / chunks;
      for (int64_t blk = blocks * r / chunks; blk < b_end; ++blk) {
        const int64_t nseg = block_segments(grid, blk * bt, bt, seg);
        transform_input<2>(s, x, seg, nseg, bt, v);
        transform_grad(s, gy, seg, nseg, bt, gt);
        accumulate_grad(s, cpad, bt, v, vt, gt, p);
      }
    }
  });
  float* sum = part.get();
  // The chunks added in chunk order, each element on its own (the threads split the elements:
  // the same sums as one thread, and no longer a serial pass of up to 8 x 256 KiB per call).
  parallel_for(p_elems, 4096, [&](int64_t e0, int64_t e1) {
    for (int64_t r = 1; r < chunks; ++r)
      for (int64_t e = e0; e < e1; ++e) sum[e] += sum[r * p_elems + e];
  });
  parallel_for(s.K, 8, [&](int64_t k0, int64_t k1) { finish_rows(s, cpad, sum, k0, k1, gw); });
  return true;
}

}  // namespace pycnn::cpu::PYCNN_ISA

PYCNN_TARGET_END
