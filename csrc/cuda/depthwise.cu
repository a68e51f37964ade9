// Depthwise convolution (groups == C, K = C * multiplier): direct kernels, no im2col.
//
// Napkin math, MobileNet-style 3x3 depthwise on [32, 256, 56, 56] float32 (103 MB in and out):
//   forward: 2 * 9 FLOP per output = 0.46 GFLOP against ~206 MB of HBM traffic (each input
//   re-read 9 times, from L1/L2): memory bound, ~0.06 ms at 3.35 TB/s.
//   input grad: the same work as a gather (each input sums its <= 9 * multiplier taps).
//   weight grad: one block per weight (k, i, j) reduces N * OH * OW products in a fixed order:
//   reads gy and x once per tap (9x the tensors, mostly L2 hits), ~0.3 ms here. Deterministic.
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/index_math.cuh"
#include "cuda/kernels.cuh"

namespace pycnn::cuda {
namespace {

template <typename T, typename I>
__global__ void depthwise_forward_kernel(ConvGeom<I> g, I K, I mult, I total, const T* __restrict__ x,
                                         const T* __restrict__ w, const T* __restrict__ bias,
                                         T* __restrict__ y) {
  for (I idx = I(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += I(gridDim.x) * blockDim.x)
    y[idx] = depthwise_forward_element(g, K, mult, idx, x, w, bias);
}

template <typename T, typename I>
__global__ void depthwise_input_grad_kernel(ConvGeom<I> g, I mult, I total, const T* __restrict__ gy,
                                            const T* __restrict__ w, T* __restrict__ gx) {
  for (I idx = I(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += I(gridDim.x) * blockDim.x)
    gx[idx] = depthwise_input_grad_element(g, mult, idx, gy, w);
}

constexpr int kReduceThreads = 256;

template <typename T, typename I>
__global__ void __launch_bounds__(kReduceThreads)
depthwise_weight_grad_kernel(ConvGeom<I> g, I N, I K, I mult, const T* __restrict__ x,
                             const T* __restrict__ gy, T* __restrict__ gw) {
  __shared__ acc_t<T> partial[kReduceThreads / 32];
  const I taps = g.kh * g.kw;
  const I terms = N * g.OH * g.OW;
  for (I widx = blockIdx.x; widx < K * taps; widx += gridDim.x) {
    const I k = widx / taps, tap = widx - k * taps;
    const I i = tap / g.kw, j = tap - i * g.kw;
    acc_t<T> a = 0;
    for (I e = threadIdx.x; e < terms; e += blockDim.x)
      a += acc_t<T>(depthwise_weight_term(g, K, mult, k, i, j, e, x, gy));
    a = block_sum(a, partial);
    if (threadIdx.x == 0) gw[widx] = T(a);
  }
}

// int32 indices when the largest tensor involved fits.
bool small_shape(const Conv2dShape& s) {
  return fits_int32(std::max({s.N * s.C * s.H * s.W, s.N * s.K * s.OH * s.OW, s.K * s.kh * s.kw}));
}

}  // namespace

template <typename T>
void depthwise_conv2d_forward(Stream stream, const Conv2dShape& s, const T* x, const T* w,
                              const T* bias, T* y) {
  const int64_t total = s.N * s.K * s.OH * s.OW;
  if (total == 0) return;
  const int64_t mult = s.K / s.C;
  if (small_shape(s))
    PYCNN_LAUNCH(grid_for(total), kThreads, stream, depthwise_forward_kernel<T, int32_t>)(
        ConvGeom<int32_t>::from(s), int32_t(s.K), int32_t(mult), int32_t(total), x, w, bias, y);
  else
    PYCNN_LAUNCH(grid_for(total), kThreads, stream, depthwise_forward_kernel<T, int64_t>)(
        ConvGeom<int64_t>::from(s), s.K, mult, total, x, w, bias, y);
  check_launch("depthwise_conv2d");
}

template <typename T>
void depthwise_conv2d_backward_input(Stream stream, const Conv2dShape& s, const T* gy, const T* w,
                                     T* gx) {
  const int64_t total = s.N * s.C * s.H * s.W;
  if (total == 0) return;
  const int64_t mult = s.C > 0 ? s.K / s.C : 0;
  if (small_shape(s))
    PYCNN_LAUNCH(grid_for(total), kThreads, stream, depthwise_input_grad_kernel<T, int32_t>)(
        ConvGeom<int32_t>::from(s), int32_t(mult), int32_t(total), gy, w, gx);
  else
    PYCNN_LAUNCH(grid_for(total), kThreads, stream, depthwise_input_grad_kernel<T, int64_t>)(
        ConvGeom<int64_t>::from(s), mult, total, gy, w, gx);
  check_launch("depthwise_conv2d_backward_input");
}

template <typename T>
void depthwise_conv2d_backward_weight(Stream stream, const Conv2dShape& s, const T* x, const T* gy,
                                      T* gw, T* gb) {
  const char* op = "depthwise_conv2d_backward_weight";
  if (gb) channel_sum(stream, s.N, s.K, s.OH * s.OW, gy, gb);
  if (!gw) return;
  const int64_t weights = s.K * s.kh * s.kw;
  if (weights == 0) return;
  if (s.N * s.OH * s.OW == 0) {  // an empty sum
    check_call(cudaMemsetAsync(gw, 0, size_t(weights) * sizeof(T), stream), op, "cudaMemsetAsync");
    return;
  }
  const int64_t mult = s.K / s.C;
  const unsigned grid = grid_per_item(weights);
  if (small_shape(s))
    PYCNN_LAUNCH(grid, kReduceThreads, stream, depthwise_weight_grad_kernel<T, int32_t>)(
        ConvGeom<int32_t>::from(s), int32_t(s.N), int32_t(s.K), int32_t(mult), x, gy, gw);
  else
    PYCNN_LAUNCH(grid, kReduceThreads, stream, depthwise_weight_grad_kernel<T, int64_t>)(
        ConvGeom<int64_t>::from(s), s.N, s.K, mult, x, gy, gw);
  check_launch(op);
}

#define PYCNN_INSTANTIATE(T)                                                                       \
  template void depthwise_conv2d_forward<T>(Stream, const Conv2dShape&, const T*, const T*,        \
                                            const T*, T*);                                         \
  template void depthwise_conv2d_backward_input<T>(Stream, const Conv2dShape&, const T*, const T*, \
                                                   T*);                                            \
  template void depthwise_conv2d_backward_weight<T>(Stream, const Conv2dShape&, const T*,          \
                                                    const T*, T*, T*);
PYCNN_INSTANTIATE(float)
PYCNN_INSTANTIATE(double)

}  // namespace pycnn::cuda
