// Max pooling with argmax, its gradient as a gather, and max unpooling.
//
// Napkin math, 3x3/2 max pool on [32, 64, 112, 112] float32: the forward reads 103 MB (each
// input read ~2.25 times, mostly from L1/L2) and writes 26 MB of values + 51 MB of int64
// indices: ~0.05 ms at HBM speed. The backward reads the indices and gy of the up-to-4 windows
// covering each input pixel and writes gx: ~180 MB, ~0.06 ms. All memory bound.
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/index_math.cuh"
#include "cuda/kernels.cuh"

namespace pycnn::cuda {
namespace {

template <typename T, typename I>
__global__ void max_pool_forward_kernel(PoolGeom<I> g, I total, const T* __restrict__ x,
                                        T* __restrict__ y, int64_t* __restrict__ indices) {
  for (I idx = I(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += I(gridDim.x) * blockDim.x)
    max_pool_element(g, idx, x, y, indices);
}

template <typename T, typename I>
__global__ void max_pool_backward_kernel(PoolGeom<I> g, I total, const T* __restrict__ gy,
                                         const int64_t* __restrict__ indices, T* __restrict__ gx) {
  for (I idx = I(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += I(gridDim.x) * blockDim.x)
    gx[idx] = max_pool_grad_element(g, idx, gy, indices);
}

// Scatter; a bad index is skipped and the smallest such position recorded in *bad.
template <typename T>
__global__ void max_unpool_forward_kernel(int64_t in_size, int64_t out_size, int64_t total,
                                          const T* __restrict__ x, const int64_t* __restrict__ indices,
                                          T* __restrict__ y, unsigned long long* bad) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t target = indices[i];
    if (target >= 0 && target < out_size)
      y[(i / in_size) * out_size + target] = x[i];
    else
      atomicMin(bad, static_cast<unsigned long long>(i));
  }
}

// Gather: gx[i] = gy[plane, indices[i]] (zero for an out-of-range index: never read outside gy).
template <typename T>
__global__ void max_unpool_backward_kernel(int64_t in_size, int64_t out_size, int64_t total,
                                           const T* __restrict__ gy, const int64_t* __restrict__ indices,
                                           T* __restrict__ gx) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t target = indices[i];
    gx[i] = (target >= 0 && target < out_size) ? gy[(i / in_size) * out_size + target] : T(0);
  }
}

}  // namespace

template <typename T>
void max_pool2d_forward(Stream stream, const Pool2dShape& s, const T* x, T* y, int64_t* indices) {
  const int64_t total = s.planes * s.OH * s.OW;
  if (total == 0) return;
  if (fits_int32(std::max(total, s.planes * s.H * s.W)))
    PYCNN_LAUNCH(grid_for(total), kThreads, stream, max_pool_forward_kernel<T, int32_t>)(PoolGeom<int32_t>::from(s), int32_t(total), x, y, indices);
  else
    PYCNN_LAUNCH(grid_for(total), kThreads, stream, max_pool_forward_kernel<T, int64_t>)(PoolGeom<int64_t>::from(s), total, x, y, indices);
  check_launch("max_pool2d");
}

template <typename T>
void max_pool2d_backward(Stream stream, const Pool2dShape& s, const T* gy, const int64_t* indices, T* gx) {
  const int64_t total = s.planes * s.H * s.W;
  if (total == 0) return;
  if (s.OH * s.OW == 0) {  // no windows: nothing flows back
    check_call(cudaMemsetAsync(gx, 0, size_t(total) * sizeof(T), stream), "max_pool2d_backward", "cudaMemsetAsync");
    return;
  }
  if (fits_int32(std::max(total, s.planes * s.OH * s.OW)))
    PYCNN_LAUNCH(grid_for(total), kThreads, stream, max_pool_backward_kernel<T, int32_t>)(PoolGeom<int32_t>::from(s), int32_t(total), gy, indices, gx);
  else
    PYCNN_LAUNCH(grid_for(total), kThreads, stream, max_pool_backward_kernel<T, int64_t>)(PoolGeom<int64_t>::from(s), total, gy, indices, gx);
  check_launch("max_pool2d_backward");
}

// The contract returns the first bad index position, so the host must see a value the GPU
// computed: this is the one op that waits for its stream. It allocates an 8-byte flag
// stream-ordered (cudaMallocAsync: no device-wide sync, and safe when several streams run
// unpools at once, unlike a static __device__ flag), copies it back and synchronises `stream`.
template <typename T>
int64_t max_unpool2d_forward(Stream stream, int64_t planes, int64_t in_size, int64_t out_size,
                             const T* x, const int64_t* indices, T* y) {
  const char* op = "max_unpool2d";
  if (planes * out_size > 0)
    check_call(cudaMemsetAsync(y, 0, size_t(planes * out_size) * sizeof(T), stream), op, "cudaMemsetAsync");
  const int64_t total = planes * in_size;
  if (total == 0) return -1;
  unsigned long long* bad = nullptr;
  check_call(cudaMallocAsync(reinterpret_cast<void**>(&bad), sizeof(*bad), stream), op, "cudaMallocAsync");
  unsigned long long found = ~0ull;
  cudaError_t err = cudaMemsetAsync(bad, 0xff, sizeof(*bad), stream);  // all ones = none found
  if (err == cudaSuccess) {
    PYCNN_LAUNCH(grid_for(total), kThreads, stream, max_unpool_forward_kernel<T>)(in_size, out_size, total, x, indices, y, bad);
    err = cudaGetLastError();
  }
  if (err == cudaSuccess) err = cudaMemcpyAsync(&found, bad, sizeof(found), cudaMemcpyDeviceToHost, stream);
  cudaError_t free_err = cudaFreeAsync(bad, stream);
  if (err == cudaSuccess) err = free_err;
  if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
  check_call(err, op, "kernel or flag read-back");
  return found == ~0ull ? int64_t(-1) : static_cast<int64_t>(found);
}

template <typename T>
void max_unpool2d_backward(Stream stream, int64_t planes, int64_t in_size, int64_t out_size,
                           const T* gy, const int64_t* indices, T* gx) {
  const int64_t total = planes * in_size;
  if (total == 0) return;
  PYCNN_LAUNCH(grid_for(total), kThreads, stream, max_unpool_backward_kernel<T>)(in_size, out_size, total, gy, indices, gx);
  check_launch("max_unpool2d_backward");
}

#define PYCNN_INSTANTIATE(T)                                                                        \
  template void max_pool2d_forward<T>(Stream, const Pool2dShape&, const T*, T*, int64_t*);          \
  template void max_pool2d_backward<T>(Stream, const Pool2dShape&, const T*, const int64_t*, T*);   \
  template int64_t max_unpool2d_forward<T>(Stream, int64_t, int64_t, int64_t, const T*,             \
                                           const int64_t*, T*);                                     \
  template void max_unpool2d_backward<T>(Stream, int64_t, int64_t, int64_t, const T*,               \
                                         const int64_t*, T*);
PYCNN_INSTANTIATE(float)
PYCNN_INSTANTIATE(double)

}  // namespace pycnn::cuda
