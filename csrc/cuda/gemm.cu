// Tiled GEMM (shared-memory tiles + register blocking) and channel sums.
//
// Napkin math (H100 SXM: ~67 TFLOP/s FP32 and ~34 TFLOP/s FP64 without tensor cores, 3.35 TB/s
// HBM, ~50 MB L2). A 128x128 tile with BK = 8 moves (128 + 128) * 8 * 4 B = 8 KiB from L2/HBM per
// k-step and does 2 * 128 * 128 * 8 = 262 kFLOP on it: 32 FLOP/B, far above the ~20 FLOP/B the
// machine balance needs, so large problems are bound by the FMA pipe. Each thread holds an 8x8
// accumulator block and reads 8 + 8 values from shared memory per 64 FMAs (4 FMA per LDS word).
// Expect a fraction of peak, not cuBLAS: there is no double buffering of the tiles and no tensor
// cores (we compute in the tensor's own precision, which is also what makes the results match
// torch with TF32 disabled).
//
// Tile configurations are chosen per call: the largest whose block count still fills the SMs,
// because a 128x128 tile on a 64x3136 conv GEMM would leave most of the GPU idle.
#include <algorithm>
#include <atomic>

#include "cuda/common.cuh"
#include "cuda/gemm_kernel.cuh"
#include "cuda/kernels.cuh"

namespace pycnn::cuda {
namespace {

using namespace gemm_detail;

template <typename T, class Cfg, bool TA, bool TB>
void launch_gemm(Stream stream, const GemmProblem<T>& p, const char* op) {
  bool vec_a, vec_b;
  vector_flags<T, Cfg>(p, vec_a, vec_b);
  const int64_t tiles_m = (p.M + Cfg::BM - 1) / Cfg::BM;
  const int64_t tiles_n = (p.N + Cfg::BN - 1) / Cfg::BN;
  const int64_t batches = p.outer_count * p.inner_count;
  if (tiles_n > 0x7fffffff) throw std::runtime_error(std::string(op) + ": GEMM too wide for the grid");
  const int64_t max_yz = PYCNN_GRID_YZ_LIMIT;  // grid.y and grid.z limits: larger counts go in several launches
  for (int64_t y0 = 0; y0 < tiles_m; y0 += max_yz) {
    for (int64_t z0 = 0; z0 < batches; z0 += max_yz) {
      dim3 grid(unsigned(tiles_n), unsigned(std::min(max_yz, tiles_m - y0)),
                unsigned(std::min(max_yz, batches - z0)));
      PYCNN_LAUNCH(grid, Cfg::kThreads, stream, gemm_kernel<T, Cfg, TA, TB>)(p, y0, z0, vec_a, vec_b);
      check_launch(op);
    }
  }
}

template <typename T, class Cfg>
void launch_gemm_cfg(Stream stream, const GemmProblem<T>& p, const char* op) {
  if (p.trans_a) {
    if (p.trans_b) launch_gemm<T, Cfg, true, true>(stream, p, op);
    else launch_gemm<T, Cfg, true, false>(stream, p, op);
  } else {
    if (p.trans_b) launch_gemm<T, Cfg, false, true>(stream, p, op);
    else launch_gemm<T, Cfg, false, false>(stream, p, op);
  }
}

int sm_count() {
  static std::atomic<int> cache[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) { cudaGetLastError(); return 132; }
  if (dev >= 0 && dev < 64) {
    int n = cache[dev].load(std::memory_order_relaxed);
    if (n > 0) return n;
  }
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
    cudaGetLastError();
    n = 132;
  }
  if (dev >= 0 && dev < 64) cache[dev].store(n, std::memory_order_relaxed);
  return n;
}

template <class Cfg>
int64_t blocks_for(int64_t M, int64_t N, int64_t batches) {
  return ((M + Cfg::BM - 1) / Cfg::BM) * ((N + Cfg::BN - 1) / Cfg::BN) * batches;
}

// channel_sum, S > 1: one block per channel sums its N rows of S in a fixed order.
// Napkin: reads N*C*S elements once; bandwidth bound when C >= ~2x the SM count.
constexpr int kSumThreads = 256;
template <typename T, typename I>
__global__ void __launch_bounds__(kSumThreads)
channel_sum_rows_kernel(I N, I C, I S, const T* __restrict__ x, T* __restrict__ out) {
  __shared__ acc_t<T> partial[kSumThreads / 32];
  for (I c = blockIdx.x; c < C; c += gridDim.x) {
    acc_t<T> a = 0;
    if (S >= I(blockDim.x)) {
      for (I n = 0; n < N; ++n) {
        const T* row = x + (n * C + c) * S;
        for (I s = threadIdx.x; s < S; s += blockDim.x) a += row[s];
      }
    } else {
      const I total = N * S;
      for (I i = threadIdx.x; i < total; i += blockDim.x) {
        const I n = i / S, s = i - n * S;
        a += x[(n * C + c) * S + s];
      }
    }
    a = block_sum(a, partial);
    if (threadIdx.x == 0) out[c] = T(a);
  }
}

// channel_sum, S == 1 (bias gradient of linear, x [N, C]): one thread per channel walks the
// column; neighbouring threads read neighbouring addresses, so every row read coalesces.
template <typename T, typename I>
__global__ void channel_sum_columns_kernel(I N, I C, const T* __restrict__ x, T* __restrict__ out) {
  for (I c = I(blockIdx.x) * blockDim.x + threadIdx.x; c < C; c += I(gridDim.x) * blockDim.x) {
    acc_t<T> a = 0;
    for (I n = 0; n < N; ++n) a += x[n * C + c];
    out[c] = T(a);
  }
}

}  // namespace

template <typename T>
void gemm_batched(Stream stream, const GemmProblem<T>& p, const char* op) {
  const int64_t batches = p.outer_count * p.inner_count;
  if (p.M <= 0 || p.N <= 0 || batches <= 0) return;
  using Cf = Configs<T>;
  const int64_t target = sm_count();
  if (blocks_for<typename Cf::Big>(p.M, p.N, batches) >= target)
    launch_gemm_cfg<T, typename Cf::Big>(stream, p, op);
  else if (blocks_for<typename Cf::Mid>(p.M, p.N, batches) >= target)
    launch_gemm_cfg<T, typename Cf::Mid>(stream, p, op);
  else
    launch_gemm_cfg<T, typename Cf::Small>(stream, p, op);
}

template <typename T>
void gemm(Stream stream, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
          const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  GemmProblem<T> p;
  p.trans_a = trans_a; p.trans_b = trans_b;
  p.M = M; p.N = N; p.K = K; p.alpha = alpha; p.beta = beta;
  p.A = A; p.lda = lda; p.B = B; p.ldb = ldb; p.C = C; p.ldc = ldc;
  gemm_batched(stream, p, "gemm");
}

template <typename T>
void channel_sum(Stream stream, int64_t N, int64_t C, int64_t S, const T* x, T* out) {
  if (C <= 0) return;
  if (N == 0 || S == 0) {  // an empty sum is zero
    check_call(cudaMemsetAsync(out, 0, C * sizeof(T), stream), "channel_sum", "cudaMemsetAsync");
    return;
  }
  const bool small = fits_int32(N * C * S);
  if (S == 1) {
    const unsigned grid = grid_for(C);
    if (small) PYCNN_LAUNCH(grid, kThreads, stream, channel_sum_columns_kernel<T, int32_t>)(int32_t(N), int32_t(C), x, out);
    else PYCNN_LAUNCH(grid, kThreads, stream, channel_sum_columns_kernel<T, int64_t>)(N, C, x, out);
  } else {
    const unsigned grid = grid_per_item(C);
    if (small) PYCNN_LAUNCH(grid, kSumThreads, stream, channel_sum_rows_kernel<T, int32_t>)(int32_t(N), int32_t(C), int32_t(S), x, out);
    else PYCNN_LAUNCH(grid, kSumThreads, stream, channel_sum_rows_kernel<T, int64_t>)(N, C, S, x, out);
  }
  check_launch("channel_sum");
}

#define PYCNN_INSTANTIATE(T)                                                                    \
  template void gemm_batched<T>(Stream, const GemmProblem<T>&, const char*);                    \
  template void gemm<T>(Stream, bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t,    \
                        const T*, int64_t, T, T*, int64_t);                                     \
  template void channel_sum<T>(Stream, int64_t, int64_t, int64_t, const T*, T*);
PYCNN_INSTANTIATE(float)
PYCNN_INSTANTIATE(double)

}  // namespace pycnn::cuda
