// Partial convolution on the GPU: the same algorithm as csrc/cpu/partial_conv.cpp (see there for
// the formulas). x * mask goes once through conv2d_forward (conv.cu: im2col + our GEMM); the
// mask's window sums are a box sum, one thread per output pixel; the rest is elementwise.
// Gradients: gx = mask * conv2d_backward_input(gy * ratio), gw = conv2d_backward_weight(x * mask,
// gy * ratio), gb = channel_sum(gy where the window saw a valid pixel): every reduction is one of
// conv.cu's or channel_sum's fixed-order sums, so results are deterministic.
//
// Napkin math (forward, float32, 64 channels in and out, 3x3, 64x64, batch 16): the GEMM is
// 2*64*576*4096*16 = 4.8 GFLOP; the mask costs a read of x and mask and a write of x * mask
// (3 * 16 MB), the box sum 9 reads per output pixel per mask channel: bandwidth-bound and small
// beside the GEMM.
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

namespace pycnn::cuda {
namespace {

// xm = x * mask (mask broadcast over channels when MC == 1); *bad = lowest position of a mask
// value outside [0, 1] (NaN included), left at all ones when there is none.
template <typename T>
__global__ void mask_input_kernel(int64_t N, int64_t C, int64_t S, int64_t MC, const T* __restrict__ x,
                                  const T* __restrict__ mask, T* __restrict__ xm, unsigned long long* bad) {
  const int64_t total = N * C * S;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t s = idx % S, c = (idx / S) % C, n = idx / (S * C);
    const int64_t mi = (n * MC + (MC == 1 ? 0 : c)) * S + s;
    const T m = mask[mi];
    if (xm) xm[idx] = x[idx] * m;
    if (bad && !(m >= T(0) && m <= T(1))) atomicMin(bad, static_cast<unsigned long long>(mi));
  }
}

// ratio[n, oh, ow] = MC*kh*kw / (window's mask sum) where that sum > 0, else 0.
template <typename T>
__global__ void mask_ratio_kernel(Conv2dShape s, int64_t MC, const T* __restrict__ mask, T* __restrict__ ratio) {
  const int64_t total = s.N * s.OH * s.OW;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ow = idx % s.OW, oh = (idx / s.OW) % s.OH, n = idx / (s.OW * s.OH);
    T sum = T(0);
    for (int64_t c = 0; c < MC; ++c)
      for (int64_t i = 0; i < s.kh; ++i) {
        const int64_t h = oh * s.sh - s.ph + i * s.dh;
        if (h < 0 || h >= s.H) continue;
        const T* row = mask + ((n * MC + c) * s.H + h) * s.W;
        for (int64_t j = 0; j < s.kw; ++j) {
          const int64_t w = ow * s.sw - s.pw + j * s.dw;
          if (w >= 0 && w < s.W) sum += row[w];
        }
      }
    ratio[idx] = sum > T(0) ? T(MC * s.kh * s.kw) / sum : T(0);
  }
}

// y = ratio > 0 ? y * ratio + b : 0 over [N, K, P]
template <typename T>
__global__ void scale_output_kernel(int64_t N, int64_t K, int64_t P, const T* __restrict__ ratio,
                                    const T* __restrict__ bias, T* __restrict__ y) {
  const int64_t total = N * K * P;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = idx % P, k = (idx / P) % K, n = idx / (P * K);
    const T r = ratio[n * P + p];
    y[idx] = r > T(0) ? y[idx] * r + (bias ? bias[k] : T(0)) : T(0);
  }
}

template <typename T>
__global__ void binarize_kernel(int64_t total, T* __restrict__ m) {
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x)
    m[idx] = m[idx] > T(0) ? T(1) : T(0);
}

// out = gy * (ratio if scale else [ratio > 0]) over [N, K, P]
template <typename T>
__global__ void grad_scale_kernel(int64_t N, int64_t K, int64_t P, const T* __restrict__ ratio,
                                  const T* __restrict__ gy, bool scale, T* __restrict__ out) {
  const int64_t total = N * K * P;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x) {
    const T r = ratio[(idx / (P * K)) * P + idx % P];
    out[idx] = scale ? gy[idx] * r : (r > T(0) ? gy[idx] : T(0));
  }
}

// gx *= mask (broadcast over channels when MC == 1)
template <typename T>
__global__ void mask_grad_kernel(int64_t N, int64_t C, int64_t S, int64_t MC, const T* __restrict__ mask,
                                 T* __restrict__ gx) {
  const int64_t total = N * C * S;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t s = idx % S, c = (idx / S) % C, n = idx / (S * C);
    gx[idx] *= mask[(n * MC + (MC == 1 ? 0 : c)) * S + s];
  }
}

}  // namespace

template <typename T>
int64_t partial_conv2d_forward(Stream stream, const Conv2dShape& s, int64_t MC, const T* x, const T* mask,
                               const T* w, const T* bias, T* y, T* mask_out, T* xm, T* ws, int64_t ws_elems) {
  const char* op = "partial_conv2d";
  const int64_t S = s.H * s.W, P = s.OH * s.OW;
  // The mask check reads its answer back (like max_unpool2d_forward): one 8-byte flag, one sync.
  unsigned long long* bad = nullptr;
  check_call(cudaMallocAsync(reinterpret_cast<void**>(&bad), sizeof(*bad), stream), op, "cudaMallocAsync");
  unsigned long long found = ~0ull;
  cudaError_t err = cudaMemsetAsync(bad, 0xff, sizeof(*bad), stream);
  if (err == cudaSuccess && s.N * s.C * S > 0) {
    PYCNN_LAUNCH(grid_for(s.N * s.C * S), kThreads, stream, mask_input_kernel<T>)(s.N, s.C, S, MC, x, mask, xm, bad);
    err = cudaGetLastError();
  }
  if (err == cudaSuccess) err = cudaMemcpyAsync(&found, bad, sizeof(found), cudaMemcpyDeviceToHost, stream);
  cudaError_t free_err = cudaFreeAsync(bad, stream);
  if (err == cudaSuccess) err = free_err;
  if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
  check_call(err, op, "mask check");
  if (found != ~0ull) return static_cast<int64_t>(found);
  if (s.N * P == 0) return -1;
  PYCNN_LAUNCH(grid_for(s.N * P), kThreads, stream, mask_ratio_kernel<T>)(s, MC, mask, mask_out);
  check_launch(op);
  conv2d_forward<T>(stream, s, xm, w, nullptr, y, ws, ws_elems);
  if (s.N * s.K * P > 0) {
    PYCNN_LAUNCH(grid_for(s.N * s.K * P), kThreads, stream, scale_output_kernel<T>)(s.N, s.K, P, mask_out, bias, y);
    check_launch(op);
  }
  PYCNN_LAUNCH(grid_for(s.N * P), kThreads, stream, binarize_kernel<T>)(s.N * P, mask_out);
  check_launch(op);
  return -1;
}

template <typename T>
void partial_conv2d_backward(Stream stream, const Conv2dShape& s, int64_t MC, const T* x, const T* mask, const T* w,
                             const T* gy, T* gx, T* gw, T* gb, T* xm, T* gys, T* ratio, T* ws, int64_t ws_elems) {
  const char* op = "partial_conv2d_backward";
  const int64_t S = s.H * s.W, P = s.OH * s.OW, NKP = s.N * s.K * P;
  if (NKP == 0) return;
  PYCNN_LAUNCH(grid_for(s.N * P), kThreads, stream, mask_ratio_kernel<T>)(s, MC, mask, ratio);
  check_launch(op);
  if (gb) {  // gys first holds gy where the window was valid: its channel sums are gb
    PYCNN_LAUNCH(grid_for(NKP), kThreads, stream, grad_scale_kernel<T>)(s.N, s.K, P, ratio, gy, false, gys);
    check_launch(op);
    channel_sum<T>(stream, s.N, s.K, P, gys, gb);
  }
  PYCNN_LAUNCH(grid_for(NKP), kThreads, stream, grad_scale_kernel<T>)(s.N, s.K, P, ratio, gy, true, gys);
  check_launch(op);
  if (gx && s.N * s.C * S > 0) {
    conv2d_backward_input<T>(stream, s, gys, w, gx, ws, ws_elems);
    PYCNN_LAUNCH(grid_for(s.N * s.C * S), kThreads, stream, mask_grad_kernel<T>)(s.N, s.C, S, MC, mask, gx);
    check_launch(op);
  }
  if (gw) {
    if (s.N * s.C * S > 0) {
      PYCNN_LAUNCH(grid_for(s.N * s.C * S), kThreads, stream, mask_input_kernel<T>)(s.N, s.C, S, MC, x, mask, xm, nullptr);
      check_launch(op);
    }
    conv2d_backward_weight<T>(stream, s, xm, gys, gw, nullptr, ws, ws_elems);
  }
}

#define PYCNN_INSTANTIATE(T)                                                                                \
  template int64_t partial_conv2d_forward<T>(Stream, const Conv2dShape&, int64_t, const T*, const T*, const T*, \
                                             const T*, T*, T*, T*, T*, int64_t);                             \
  template void partial_conv2d_backward<T>(Stream, const Conv2dShape&, int64_t, const T*, const T*, const T*,   \
                                           const T*, T*, T*, T*, T*, T*, T*, T*, int64_t);
PYCNN_INSTANTIATE(float)
PYCNN_INSTANTIATE(double)

}  // namespace pycnn::cuda
