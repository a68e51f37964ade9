// Helpers shared by the .cu files: launch checks, grid sizing, accumulation types, vector
// loads and deterministic block reductions. CUDA-only (never included by bindings_cuda.cpp);
// the host emulator (host_check/) compiles the .cu files against its own <cuda_runtime.h>.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/index_math.cuh"  // Vec

// Every kernel launch is written PYCNN_LAUNCH(grid, block, stream, kernel)(args...): on the GPU
// it is the <<<grid, block, 0, stream>>> launch; the host emulator defines it to run the grid
// on the CPU, so the launch code itself (grid sizes, splits, int32/int64 choice) is checked too.
#ifndef PYCNN_LAUNCH
#define PYCNN_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<(grid), (block), 0, (stream)>>>
#endif

// Device limits the launch code plans around. The emulator lowers them (variables it sets per
// check) so that small shapes take the split-grid, grid-stride and 64-bit-index paths.
#ifndef PYCNN_GRID_YZ_LIMIT
#define PYCNN_GRID_YZ_LIMIT (int64_t(65535))       // grid.y and grid.z
#endif
#ifndef PYCNN_GRID_X_CAP
#define PYCNN_GRID_X_CAP (int64_t(1) << 20)        // blocks of a grid-stride loop
#endif
#ifndef PYCNN_INDEX32_LIMIT
#define PYCNN_INDEX32_LIMIT (int64_t(1) << 30)     // largest flat index of the int32 variants
#endif

namespace pycnn::cuda {

// The CUDA runtime is linked statically (CUDA 13): a driver older than it reports
// cudaErrorInsufficientDriver on the first call. Python checks this up front (runtime_status,
// runtime.cu); the hint covers calls that reach a kernel anyway.
inline std::string driver_hint(cudaError_t err) {
  if (err != cudaErrorInsufficientDriver) return "";
  return " (pycnn's CUDA module is built with the CUDA " + std::to_string(CUDART_VERSION / 1000) +
         " runtime and needs an NVIDIA driver >= 580)";
}

// Every launch is followed by this: a bad configuration or a sticky error from an earlier
// kernel becomes a C++ exception naming the op (pybind11 turns it into RuntimeError).
inline void check_launch(const char* op) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(op) + ": CUDA error: " + cudaGetErrorString(err) + driver_hint(err));
}
inline void check_call(cudaError_t err, const char* op, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(op) + ": " + what + " failed: " + cudaGetErrorString(err) +
                             driver_hint(err));
}

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items: enough to fill the GPU several times over, never
// more than needed, never zero (callers return early when n == 0).
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  int64_t blocks = (n + threads - 1) / threads;
  const int64_t cap = PYCNN_GRID_X_CAP;  // grid-stride loops cover the rest
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
inline bool fits_int32(int64_t n) { return n <= PYCNN_INDEX32_LIMIT; }

// Blocks for a loop over `n` channels (or weights) with one block each: the rest stride.
inline unsigned grid_per_item(int64_t n) { return static_cast<unsigned>(n < PYCNN_GRID_X_CAP ? n : PYCNN_GRID_X_CAP); }

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
