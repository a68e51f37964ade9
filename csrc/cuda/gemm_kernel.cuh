// The GEMM kernel's device code, kept free of CUDA-only headers (the CPU emulator in
// csrc/cuda/host_check compiles gemm.cu, which includes it, with a host compiler).
#pragma once
#include <cstdint>

#include "cuda/index_math.cuh"
#include "cuda/kernels.cuh"

namespace pycnn::cuda {
namespace gemm_detail {

template <int BM_, int BN_, int BK_, int TM_, int TN_>
struct Tile {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int kThreads = (BM / TM) * (BN / TN);
};

template <typename T> struct Configs;
template <> struct Configs<float> {
  using Big = Tile<128, 128, 8, 8, 8>;
  using Mid = Tile<64, 64, 8, 4, 4>;
  using Small = Tile<32, 32, 8, 2, 2>;
};
template <> struct Configs<double> {  // double accumulators take twice the registers
  using Big = Tile<64, 64, 8, 4, 4>;
  using Mid = Tile<32, 32, 8, 2, 2>;
  using Small = Tile<32, 32, 8, 2, 2>;
};

// Shared-memory rows are padded by 4 elements: the transposed stores of the [M, K]-major loads
// then hit different banks, and rows stay 16-byte aligned for the vector fragment reads.
constexpr int kPad = 4;

// Loads V consecutive elements starting at src; those at positions >= valid read as zero.
// One vector instruction when the caller proved alignment (vec) and the run is in bounds.
template <typename T, int V>
__device__ __forceinline__ void load_run(const T* src, bool vec, int valid, T (&dst)[V]) {
  if (vec && valid >= V) {
    const Vec<T, V> r = *reinterpret_cast<const Vec<T, V>*>(src);
#pragma unroll
    for (int e = 0; e < V; ++e) dst[e] = r.v[e];
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) dst[e] = e < valid ? src[e] : T(0);
  }
}

// Register fragment from shared memory, in 16-byte vectors when V allows it.
template <typename T, int V>
__device__ __forceinline__ void load_frag(const T* src, T (&dst)[V]) {
  constexpr int VE = 16 / int(sizeof(T));
  if constexpr (V % VE == 0) {
#pragma unroll
    for (int q = 0; q < V / VE; ++q) {
      const Vec<T, VE> r = reinterpret_cast<const Vec<T, VE>*>(src)[q];
#pragma unroll
      for (int e = 0; e < VE; ++e) dst[q * VE + e] = r.v[e];
    }
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) dst[e] = src[e];
  }
}

__device__ __forceinline__ int clamp_run(int64_t remaining, int V) {
  return remaining <= 0 ? 0 : (remaining >= V ? V : int(remaining));
}

// One block computes a BM x BN tile of C for problem z. Loads: each thread fetches EA (EB)
// consecutive elements of A (B) along the direction that is contiguous in memory, so the warp's
// loads coalesce for all four transpose combinations.
template <typename T, class Cfg, bool TA, bool TB>
__global__ void __launch_bounds__(Cfg::kThreads)
gemm_kernel(GemmProblem<T> p, int64_t m_tile_base, int64_t z_base, bool vec_a, bool vec_b) {
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, TM = Cfg::TM, TN = Cfg::TN;
  constexpr int NT = Cfg::kThreads;
  constexpr int EA = BM * BK / NT, EB = BN * BK / NT;
  static_assert(EA >= 1 && EA * NT == BM * BK, "A tile must split evenly over the threads");
  static_assert(EB >= 1 && EB * NT == BN * BK, "B tile must split evenly over the threads");
  static_assert(BM % EA == 0 && BK % EA == 0 && BN % EB == 0 && BK % EB == 0, "runs fit a row");
  static_assert(((BM + kPad) * sizeof(T)) % 16 == 0 && ((BN + kPad) * sizeof(T)) % 16 == 0,
                "padded rows must stay 16-byte aligned");
  __shared__ __align__(16) T As[BK][BM + kPad];  // As[k][m] = op(A)[m0 + m, k0 + k]
  __shared__ __align__(16) T Bs[BK][BN + kPad];  // Bs[k][n] = op(B)[k0 + k, n0 + n]

  const int t = threadIdx.x;
  const int64_t z = int64_t(blockIdx.z) + z_base;
  const int64_t outer = z / p.inner_count, inner = z - outer * p.inner_count;
  const int64_t m0 = (int64_t(blockIdx.y) + m_tile_base) * BM;
  const int64_t n0 = int64_t(blockIdx.x) * BN;
  const T* A = p.A + outer * p.a_outer + inner * p.a_inner;
  const T* B = p.B + outer * p.b_outer + inner * p.b_inner;
  T* C = p.C + outer * p.c_outer + inner * p.c_inner;

  // This thread's run in the A and B tiles.
  int a_k, a_m, b_k, b_n;
  if constexpr (TA) {  // A stored [K, M]: runs along m
    a_k = t / (BM / EA); a_m = (t % (BM / EA)) * EA;
  } else {             // A stored [M, K]: runs along k
    a_m = t / (BK / EA); a_k = (t % (BK / EA)) * EA;
  }
  if constexpr (!TB) {  // B stored [K, N]: runs along n
    b_k = t / (BN / EB); b_n = (t % (BN / EB)) * EB;
  } else {              // B stored [N, K]: runs along k
    b_n = t / (BK / EB); b_k = (t % (BK / EB)) * EB;
  }

  const int tx = t % (BN / TN), ty = t / (BN / TN);
  T acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

  for (int64_t s = 0; s < p.slabs; ++s) {
    const T* As_g = A + s * p.a_slab;
    const T* Bs_g = B + s * p.b_slab;
    for (int64_t k0 = 0; k0 < p.K; k0 += BK) {
      T ra[EA], rb[EB];
      const int64_t gak = k0 + a_k, gam = m0 + a_m;
      if constexpr (TA) {
        load_run<T, EA>(As_g + gak * p.lda + gam, vec_a, gak < p.K ? clamp_run(p.M - gam, EA) : 0, ra);
#pragma unroll
        for (int e = 0; e < EA; ++e) As[a_k][a_m + e] = ra[e];
      } else {
        load_run<T, EA>(As_g + gam * p.lda + gak, vec_a, gam < p.M ? clamp_run(p.K - gak, EA) : 0, ra);
#pragma unroll
        for (int e = 0; e < EA; ++e) As[a_k + e][a_m] = ra[e];
      }
      const int64_t gbk = k0 + b_k, gbn = n0 + b_n;
      if constexpr (!TB) {
        load_run<T, EB>(Bs_g + gbk * p.ldb + gbn, vec_b, gbk < p.K ? clamp_run(p.N - gbn, EB) : 0, rb);
#pragma unroll
        for (int e = 0; e < EB; ++e) Bs[b_k][b_n + e] = rb[e];
      } else {
        load_run<T, EB>(Bs_g + gbn * p.ldb + gbk, vec_b, gbn < p.N ? clamp_run(p.K - gbk, EB) : 0, rb);
#pragma unroll
        for (int e = 0; e < EB; ++e) Bs[b_k + e][b_n] = rb[e];
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        T fa[TM], fb[TN];
        load_frag<T, TM>(&As[kk][ty * TM], fa);
        load_frag<T, TN>(&Bs[kk][tx * TN], fb);
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] = fma(fa[i], fb[j], acc[i][j]);
      }
      __syncthreads();
    }
  }

  const T* bias = p.bias ? p.bias + inner * p.bias_inner : nullptr;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + ty * TM + i;
    if (m >= p.M) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t n = n0 + tx * TN + j;
      if (n >= p.N) continue;
      T* c = C + m * p.ldc + n;
      T v = p.alpha * acc[i][j];
      if (p.beta != T(0)) v += p.beta * *c;  // beta == 0: C is not read (may hold NaN)
      if (bias) v += p.bias_mode == BiasMode::kPerRow ? bias[m] : bias[n];
      *c = v;
    }
  }
}

// Vector loads need every run start aligned: base, leading dimension and all batch strides.
template <typename T, class Cfg>
inline void vector_flags(const GemmProblem<T>& p, bool& vec_a, bool& vec_b) {
  constexpr int EA = Cfg::BM * Cfg::BK / Cfg::kThreads, EB = Cfg::BN * Cfg::BK / Cfg::kThreads;
  auto aligned = [](const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; };
  vec_a = EA > 1 && aligned(p.A, EA * sizeof(T)) && p.lda % EA == 0 && p.a_outer % EA == 0 &&
          p.a_inner % EA == 0 && p.a_slab % EA == 0;
  vec_b = EB > 1 && aligned(p.B, EB * sizeof(T)) && p.ldb % EB == 0 && p.b_outer % EB == 0 &&
          p.b_inner % EB == 0 && p.b_slab % EB == 0;
}

}  // namespace gemm_detail
}  // namespace pycnn::cuda
