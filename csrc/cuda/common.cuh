// Helpers shared by the .cu files: launch checks, grid sizing, accumulation types, vector
// loads and deterministic block reductions. CUDA-only (never included by bindings_cuda.cpp).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/index_math.cuh"  // Vec

namespace pycnn::cuda {

// Every launch is followed by this: a bad configuration or a sticky error from an earlier
// kernel becomes a C++ exception naming the op (pybind11 turns it into RuntimeError).
inline void check_launch(const char* op) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(op) + ": CUDA error: " + cudaGetErrorString(err));
}
inline void check_call(cudaError_t err, const char* op, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(op) + ": " + what + " failed: " + cudaGetErrorString(err));
}

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items: enough to fill the GPU several times over, never
// more than needed, never zero (callers return early when n == 0).
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  int64_t blocks = (n + threads - 1) / threads;
  const int64_t cap = int64_t(1) << 20;  // grid-stride loops cover the rest
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned>(blocks);
}

// Reductions over many elements accumulate in double even for float data: they are memory
// bound, so the wider adds are free, and the result no longer depends on the sum's length.
template <typename T> struct Acc { using type = T; };
template <> struct Acc<float> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

// Index type: 32-bit division is several times cheaper than 64-bit on the GPU, so the
// elementwise kernels are instantiated for int32 when every flat index fits. The bound keeps
// 2^30 of headroom so `idx += gridDim.x * blockDim.x` (at most 2^20 * 512) cannot overflow.
inline bool fits_int32(int64_t n) { return n <= (int64_t(1) << 30); }

// Deterministic block-wide sum: each warp reduces with a fixed butterfly, then warp 0 reduces
// the per-warp partials. Same inputs and block size -> same bits, run after run.
// `shared` must hold blockDim.x / 32 values. Result valid in thread 0.
template <typename A>
__device__ inline A warp_sum(A v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}
template <typename A>
__device__ inline A block_sum(A v, A* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // `shared` may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = (threadIdx.x < warps) ? shared[threadIdx.x] : A(0);
  if (warp == 0) v = warp_sum(v);
  return v;
}

}  // namespace pycnn::cuda
