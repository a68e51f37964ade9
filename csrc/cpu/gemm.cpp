// GEMM: C = alpha * op(A) @ op(B) + beta * C, packed and cache-blocked (Goto/BLIS scheme) around
// a register-blocked micro-kernel written once over the vector layer (csrc/simd/vec.h), its
// register tile chosen per target: AVX-512 12x32 floats (32 registers of 16), AVX2 6x16 (16 of
// 8), NEON 8x12 (32 of 4), generic 4x8 (SSE2: 16 of 4).
//
// Napkin math (this dev machine: AMD EPYC Zen 4, 2 cores, ~3.5 GHz boost):
//   Zen 4 has two 256-bit FMA pipes; a 512-bit FMA occupies both, so one core retires
//   16 float FMAs = 32 FLOP per cycle (16 FLOP/cycle in double) -> ~110 GFLOP/s per core in
//   float, ~220 GFLOP/s for the 2 cores (measured: ~100 GFLOP/s on one core for K=64 shapes).
//   1024^3 float GEMM = 2 * 1024^3 = 2.15 GFLOP -> ~10 ms at peak. Memory is not the limit:
//   the three matrices are 12 MB, each read about once per block pass.
//   AVX-512 micro-kernel 12x32 (float): per k step 2 vector loads of B + 12 broadcasts of A
//   feed 24 FMAs into 24 zmm accumulators (of 32), i.e. 48+128 bytes per 24 cycles from L1/L2,
//   far below the 64 B/cycle L1 bandwidth; 24 independent accumulators hide the 4-cycle FMA
//   latency. An 8x32 variant (16 accumulators) is used when M is a small multiple of 8, where
//   12-row tiles would compute padding rows (M = 64: 72 rows, 11% waste). Blocks: the packed A block (MC x KC = 192 x 512 floats = 384 KB) stays in L2
//   (1 MB), one packed B micro-panel (KC x NR = 512 x 32 floats = 64 KB) streams from L2.
//   KC 512 rather than 256 (measured on the quiet machine, 1 thread, 1024^3: AVX-512 88 -> 96
//   GFLOP/s): each k block is one more read-modify-write pass over C, whose rows at a 4 KB
//   stride (ldc = 1024) alias in L1; k blocks are also made even (K = 576 -> 2 x 288).
//   A B micro-panel is reused across the MC/MR micro-panels of A; the packed B block (KC x NC) sits in L3.
//
// Threads: after the B block is packed (in parallel), the MC x NC block of C is cut into
// (row block, column group) tasks handed out in contiguous runs, so each thread packs each A
// block it touches once. Nested calls (from inside a parallel_for) run single-threaded.
// Results do not depend on the thread count: every C element is summed over k in the same
// order whichever thread computes it.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include "common/cpu_tuning.h"
#include "common/parallel.h"
#include "cpu/kernels.h"
#include "cpu/gemm_custom.h"
#include "simd/vec.h"

PYCNN_TARGET_BEGIN  // this target's instructions from here to PYCNN_TARGET_END

namespace pycnn::cpu::PYCNN_ISA {
namespace {

// c (an MR x NR tile, row stride ldc) = alpha * a_panel @ b_panel + beta * c; beta == 0: c not
// read. a_panel is packed k-major (a[k * MR + i]), b_panel likewise (b[k * NR + j]).
template <typename T>
using MicroKernel = void (*)(int64_t kc, const T* a, const T* b, T* c, int64_t ldc, T alpha, T beta);

template <typename T>
struct KernelChoice {
  MicroKernel<T> fn;
  int mr, nr;             // register tile
  int64_t mc, kc, nc;     // cache blocks (mc a multiple of mr, nc of nr)
};

// MR rows x NV vectors of C held in registers across the whole k loop: per k step NV loads of
// B and MR broadcasts of A feed MR * NV FMAs.
template <typename T, int MR, int NV>
void microkernel(int64_t kc, const T* a, const T* b, T* c, int64_t ldc, T alpha, T beta) {
  constexpr int L = kLanesOf<T>;
  vec<T> acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = zero<T>();
  for (int64_t k = 0; k < kc; ++k, a += MR, b += NV * L) {
    vec<T> bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = load(b + j * L);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const vec<T> ai = broadcast(a[i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = fma(ai, bv[j], acc[i][j]);
    }
  }
  const vec<T> va = broadcast(alpha);
  if (beta == T(0)) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) store(c + i * ldc + j * L, va * acc[i][j]);
  } else {
    const vec<T> vb = broadcast(beta);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) store(c + i * ldc + j * L, fma(va, acc[i][j], vb * load(c + i * ldc + j * L)));
  }
}

// Fraction of computed rows that are real when M rows are cut into tiles of mr.
[[maybe_unused]] double row_efficiency(int64_t M, int mr) { return double(M) / double((M + mr - 1) / mr * mr); }

template <typename T>
KernelChoice<T> choose_kernel(int64_t M = 0) {
  constexpr int L = kLanesOf<T>;
  constexpr int f = sizeof(T) == 4;  // float: twice the lanes per vector, half the bytes per k
  if constexpr (kVectorBytes == 64) {
    // 12x32 loads less per FMA (14 loads : 24 FMAs vs 10 : 16) but wastes rows when M is a
    // small multiple of 8 (M = 64 output channels: 72 rows computed); take 8x32 then.
    if (M > 0 && row_efficiency(M, 8) > row_efficiency(M, 12) + 0.03)
      return {microkernel<T, 8, 2>, 8, 2 * L, f ? 192 : 96, f ? 512 : 256, f ? 4096 : 2048};
    return {microkernel<T, 12, 2>, 12, 2 * L, f ? 192 : 96, f ? 512 : 256, f ? 4096 : 2048};
  } else if constexpr (kVectorBytes == 32) {
    // 16 registers: 12 accumulators + 2 B vectors + 1 broadcast.
    return {microkernel<T, 6, 2>, 6, 2 * L, f ? 144 : 72, f ? 512 : 256, f ? 4096 : 2048};
  } else if constexpr (kRegisters == 32) {
    // NEON: 24 accumulators + 3 B vectors + broadcasts.
    return {microkernel<T, 8, 3>, 8, 3 * L, f ? 128 : 64, f ? 512 : 256, f ? 4096 : 2048};
  } else {
    return {microkernel<T, 4, 2>, 4, 2 * L, 64, 256, 2048};
  }
}

// Per-thread packing buffers, grown on demand and kept (a GEMM call should not malloc).
template <typename T>
T* scratch(int which, size_t elems) {
  struct Buffer {
    void* p = nullptr;
    size_t bytes = 0;
    ~Buffer() { ::operator delete(p, std::align_val_t(64)); }
  };
  thread_local Buffer buffers[2];
  Buffer& b = buffers[which];
  size_t need = elems * sizeof(T);
  if (b.bytes < need) {
    ::operator delete(b.p, std::align_val_t(64));
    b.p = nullptr;
    b.bytes = 0;
    b.p = ::operator new(need, std::align_val_t(64));
    b.bytes = need;
  }
  return static_cast<T*>(b.p);
}

// r[0..L) (L x L, row t = r[t]) transposed in place: log2(L) rounds of pairing row i with row
// i + L/2 and interleaving them (after the last round vector t holds column t).
template <typename T>
PYCNN_ALWAYS_INLINE void transpose_square(vec<T>* r) {
  constexpr int L = kLanesOf<T>;
  static_assert((L & (L - 1)) == 0, "transpose_square: lanes must be a power of two");
  for (int half = L / 2, round = 1; round < L; round *= 2) {
    vec<T> n[L];
#pragma GCC unroll 16
    for (int i = 0; i < half; ++i) {
      n[2 * i] = interleave_lo(r[i], r[i + half]);
      n[2 * i + 1] = interleave_hi(r[i], r[i + half]);
    }
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) r[i] = n[i];
  }
}

// op(A)[i0 : i0+mc, p0 : p0+kc] into MR-row panels, rows past M zero-filled.
template <typename T>
void pack_a(bool trans, const T* A, int64_t lda, int64_t M, int64_t i0, int64_t mc, int64_t p0,
            int64_t kc, int MR, T* out) {
  for (int64_t ip = 0; ip < mc; ip += MR, out += MR * kc) {
    const int64_t rows = std::min<int64_t>(MR, M - (i0 + ip));
    if (trans) {
      for (int64_t k = 0; k < kc; ++k) {
        const T* src = A + (p0 + k) * lda + i0 + ip;
        for (int64_t i = 0; i < rows; ++i) out[k * MR + i] = src[i];
      }
    } else {
      // A full panel with MR <= L: MR rows x L k loaded as vectors (the rows past MR zero) and
      // transposed in registers, as in pack_b_panel. Otherwise row by row, reading each source
      // row contiguously: walking k across MR rows one element at a time would touch MR lines
      // that alias in L1 whenever lda is a multiple of 1024 floats.
      constexpr int L = kLanesOf<T>;
      int64_t k0 = 0;
      if (rows == MR && MR <= L) {
        const T* src = A + (i0 + ip) * lda + p0;
        for (; k0 + L <= kc; k0 += L) {
          vec<T> r[L];
#pragma GCC unroll 16
          for (int t = 0; t < L; ++t) r[t] = t < MR ? load(src + t * lda + k0) : zero<T>();
          transpose_square<T>(r);
#pragma GCC unroll 16
          for (int t = 0; t < L; ++t) store_first(out + (k0 + t) * MR, r[t], MR);
        }
      }
      for (int64_t i = 0; i < rows; ++i) {
        const T* src = A + (i0 + ip + i) * lda + p0;
        for (int64_t k = k0; k < kc; ++k) out[k * MR + i] = src[k];
      }
    }
    for (int64_t i = rows; i < MR; ++i)
      for (int64_t k = 0; k < kc; ++k) out[k * MR + i] = T(0);
  }
}

// op(B)[p0 : p0+kc, j0 : j0+NR] as one NR-column panel, columns past N zero-filled.
template <typename T>
void pack_b_panel(bool trans, const T* B, int64_t ldb, int64_t N, int64_t j0, int64_t p0,
                  int64_t kc, int NR, T* out) {
  const int64_t cols = std::min<int64_t>(NR, N - j0);
  if (trans) {
    // op(B) = B^T: the panel's columns are rows of B (contiguous in k). L rows x L k at a time
    // are loaded as vectors and transposed in registers (4 rounds of shuffles for 16 lanes
    // against a scalar load and store per element, which made linear's forward, x @ w^T, 10-25 %
    // slower than the same GEMM with B plain: 256 x 256 x 1568 on AVX-512, 2 threads).
    constexpr int L = kLanesOf<T>;
    int64_t j = 0;
    if (NR % L == 0) {
      for (; j + L <= cols; j += L) {
        const T* src = B + (j0 + j) * ldb + p0;
        int64_t k = 0;
        for (; k + L <= kc; k += L) {
          vec<T> r[L];
#pragma GCC unroll 16
          for (int t = 0; t < L; ++t) r[t] = load(src + t * ldb + k);
          transpose_square<T>(r);
#pragma GCC unroll 16
          for (int t = 0; t < L; ++t) store(out + (k + t) * NR + j, r[t]);
        }
        for (; k < kc; ++k)
          for (int t = 0; t < L; ++t) out[k * NR + j + t] = src[t * ldb + k];
      }
    }
    // The columns left (fewer than L, or all when NR is not a multiple of L), one at a time.
    for (; j < cols; ++j) {
      const T* src = B + (j0 + j) * ldb + p0;
      for (int64_t k = 0; k < kc; ++k) out[k * NR + j] = src[k];
    }
    for (int64_t j = cols; j < NR; ++j)
      for (int64_t k = 0; k < kc; ++k) out[k * NR + j] = T(0);
  } else {
    for (int64_t k = 0; k < kc; ++k) {
      const T* src = B + (p0 + k) * ldb + j0;
      T* dst = out + k * NR;
      for (int64_t j = 0; j < cols; ++j) dst[j] = src[j];
      for (int64_t j = cols; j < NR; ++j) dst[j] = T(0);
    }
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// pack_b(j0, j1, p0, kc, NR, out) writes op(B)[p0 : p0+kc, j0 : j1] as consecutive NR-column
// panels of kc x NR each (see PackBPanel in gemm_custom.h).
template <typename T, typename PackB>
void gemm_packed(const KernelChoice<T>& kern, bool trans_a, int64_t M, int64_t N, int64_t K, T alpha,
                 const T* A, int64_t lda, const PackB& pack_b, T beta, T* C, int64_t ldc,
                 const T* a_prepacked = nullptr) {
  const int MR = kern.mr, NR = kern.nr;
  const int threads = get_num_threads();
  // Even row blocks (a ragged last block would idle a thread): the mpanels MR-row micro-panels
  // dealt out to mblocks blocks, so blocks differ by at most one micro-panel. (Blocks of a
  // uniform mc rounded up to MR rows left the last one short: M = 1024, MR = 6: seven blocks
  // of 132 rows and one of 100, so at 2 threads one computed 528 rows and the other 496.)
  const int64_t mblocks = ceil_div(M, kern.mc);
  const int64_t mpanels = ceil_div(M, MR);
  const int64_t mc = ceil_div(mpanels, mblocks) * MR;  // the largest block's rows
  auto block_row = [&](int64_t ib) { return ib * mpanels / mblocks * MR; };
  // Even k blocks too (K = 576 with kc 512 -> 2 x 288, not 512 + 64): each extra k block is
  // one more read-modify-write pass over C.
  const int64_t kc_max = ceil_div(K, ceil_div(K, kern.kc));
  // Below ~1 MFLOP the pool's wake-up costs more than it saves.
  const bool small = 2.0 * double(M) * double(N) * double(K) < 1e6;
  T* bpack = scratch<T>(0, size_t(kc_max) * size_t(ceil_div(std::min(N, kern.nc), NR) * NR));

  for (int64_t jc = 0; jc < N; jc += kern.nc) {
    const int64_t nc = std::min(kern.nc, N - jc);
    const int64_t npanels = ceil_div(nc, NR);
    for (int64_t pc = 0; pc < K; pc += kc_max) {
      const int64_t kc = std::min(kc_max, K - pc);
      const T beta_here = pc == 0 ? beta : T(1);  // later k blocks accumulate onto the first
      parallel_for(npanels, small ? npanels : std::max<int64_t>(1, 8192 / (kc * NR) + 1),
                   [&](int64_t p0, int64_t p1) {
        pack_b(jc + p0 * NR, std::min(N, jc + p1 * NR), pc, kc, NR, bpack + p0 * NR * kc);
      });
      // At least ~4 tasks per thread when there are few row blocks; column groups of whole panels.
      const int64_t want_groups = std::min(npanels, std::max<int64_t>(1, ceil_div(4 * threads, mblocks)));
      const int64_t panels_per_group = ceil_div(npanels, want_groups);
      const int64_t ngroups = ceil_div(npanels, panels_per_group);  // no empty groups
      const int64_t tasks = mblocks * ngroups;
      parallel_for(tasks, small ? tasks : 1, [&](int64_t t0, int64_t t1) {
        T* apack = scratch<T>(1, size_t(mc) * size_t(kc));
        alignas(64) T edge[16 * 32];  // one partial tile (MR x NR <= 16 x 32)
        int64_t packed_block = -1;
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t ib = t / ngroups, g = t % ngroups;
          const int64_t ic = block_row(ib);
          if (ic >= M) continue;
          const int64_t mc_here = std::min(block_row(ib + 1), M) - ic;
          if (a_prepacked) {
            // Layout of gemm_pack_a: k block pc at pc * Mpad, row panel i at i * kc within it.
            apack = const_cast<T*>(a_prepacked) + pc * (ceil_div(M, MR) * MR) + ic * kc;
          } else if (ib != packed_block) {
            pack_a(trans_a, A, lda, M, ic, mc_here, pc, kc, MR, apack);
            packed_block = ib;
          }
          const int64_t jp_end = std::min(npanels, (g + 1) * panels_per_group);
          for (int64_t jp = g * panels_per_group; jp < jp_end; ++jp) {
            const int64_t j0 = jc + jp * NR;
            const int64_t nr = std::min<int64_t>(NR, N - j0);
            const T* bp = bpack + jp * NR * kc;
            for (int64_t ip = 0; ip < mc_here; ip += MR) {
              const int64_t i0 = ic + ip;
              const int64_t mr = std::min<int64_t>(MR, M - i0);
              const T* ap = apack + ip * kc;
              T* c = C + i0 * ldc + j0;
              if (mr == MR && nr == NR) {
                kern.fn(kc, ap, bp, c, ldc, alpha, beta_here);
              } else {
                kern.fn(kc, ap, bp, edge, NR, T(1), T(0));
                for (int64_t i = 0; i < mr; ++i)
                  for (int64_t j = 0; j < nr; ++j)
                    c[i * ldc + j] = beta_here == T(0) ? alpha * edge[i * NR + j]
                                                       : alpha * edge[i * NR + j] + beta_here * c[i * ldc + j];
              }
            }
          }
        }
      });
    }
  }
}

}  // namespace

// The plain reference the tests compare the packed path against: one dot product per element.
template <typename T>
void gemm_reference(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                    int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      T acc = 0;
      for (int64_t k = 0; k < K; ++k)
        acc += (trans_a ? A[k * lda + i] : A[i * lda + k]) * (trans_b ? B[j * ldb + k] : B[k * ldb + j]);
      C[i * ldc + j] = beta == T(0) ? alpha * acc : alpha * acc + beta * C[i * ldc + j];
    }
}

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == T(0)) {  // C = beta * C without touching A and B
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  auto pack_b = [&](int64_t j0, int64_t j1, int64_t p0, int64_t kc, int NR, T* out) {
    for (int64_t j = j0; j < j1; j += NR, out += NR * kc) pack_b_panel(trans_b, B, ldb, N, j, p0, kc, NR, out);
  };
  gemm_packed(choose_kernel<T>(M), trans_a, M, N, K, alpha, A, lda, pack_b, beta, C, ldc);
}

template <typename T>
int64_t gemm_packed_a_size(int64_t M, int64_t K) {
  const KernelChoice<T> kern = choose_kernel<T>(M);
  return ceil_div(M, kern.mr) * kern.mr * std::max<int64_t>(K, 0);
}

template <typename T>
void gemm_pack_a(bool trans_a, int64_t M, int64_t K, const T* A, int64_t lda, T* out) {
  const KernelChoice<T> kern = choose_kernel<T>(M);
  if (M <= 0 || K <= 0) return;
  const int64_t kc_max = ceil_div(K, ceil_div(K, kern.kc));  // the k blocks gemm_packed uses
  const int64_t mpad = ceil_div(M, kern.mr) * kern.mr;
  for (int64_t pc = 0; pc < K; pc += kc_max)
    pack_a(trans_a, A, lda, M, 0, M, pc, std::min(kc_max, K - pc), kern.mr, out + pc * mpad);
}

template <typename T>
void gemm_custom_b(bool trans_a, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                   const PackBPanel<T>& pack_b, T beta, T* C, int64_t ldc, const T* a_prepacked) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == T(0)) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  gemm_packed(choose_kernel<T>(M), trans_a, M, N, K, alpha, A, lda, pack_b, beta, C, ldc, a_prepacked);
}

namespace {
// sum of x[0, n) in kLanes<T> independent partial sums (vectorised without -ffast-math; a
// single running sum was one dependent add per element: ~6% of a conv_transpose2d backward).
template <typename T>
PYCNN_ALWAYS_INLINE T row_sum_body(const T* x, int64_t n) {
  constexpr int L = kLanes<T>;
  T acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) acc[j] += x[i + j];
  T tail = 0;
  for (; i < n; ++i) tail += x[i];
  return fold_lanes(acc) + tail;
}

// out[c0, c1) = sum over rows n of x[n][c] (x: [N, C] rows), rows added in order: vectorised
// across columns (a per-element row_sum call of length 1 made linear's bias gradient ~1 ms).
template <typename T>
PYCNN_ALWAYS_INLINE void column_sums_body(int64_t N, int64_t C, const T* x, int64_t c0, int64_t c1, T* out) {
  for (int64_t c = c0; c < c1; ++c) out[c] = T(0);
  for (int64_t n = 0; n < N; ++n) {
    const T* row = x + n * C;
    for (int64_t c = c0; c < c1; ++c) out[c] += row[c];
  }
}
}  // namespace

template <typename T>
void channel_sum(int64_t N, int64_t C, int64_t S, const T* x, T* out) {
  if (S == 1) {
    parallel_for(C, 256, [&](int64_t c0, int64_t c1) { column_sums_body(N, C, x, c0, c1, out); });
    return;
  }
  parallel_for(C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      T total = 0;
      for (int64_t n = 0; n < N; ++n) total += row_sum_body(x + (n * C + c) * S, S);
      out[c] = total;
    }
  });
}

#define PYCNN_INSTANTIATE(T)                                                                   \
  template void gemm<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*, \
                        int64_t, T, T*, int64_t);                                              \
  template void gemm_reference<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, \
                                  const T*, int64_t, T, T*, int64_t);                          \
  template void channel_sum<T>(int64_t, int64_t, int64_t, const T*, T*);                        \
  template void gemm_custom_b<T>(bool, int64_t, int64_t, int64_t, T, const T*, int64_t,          \
                                 const PackBPanel<T>&, T, T*, int64_t, const T*);             \
  template int64_t gemm_packed_a_size<T>(int64_t, int64_t);                                      \
  template void gemm_pack_a<T>(bool, int64_t, int64_t, const T*, int64_t, T*);
PYCNN_INSTANTIATE(float)
PYCNN_INSTANTIATE(double)

}  // namespace pycnn::cpu::PYCNN_ISA

PYCNN_TARGET_END
