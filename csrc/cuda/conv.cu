// conv2d on the GPU: im2col + our tiled GEMM (gemm.cu), the batch processed in chunks that fit
// the caller's workspace. Groups and the samples of a chunk are one batched GEMM launch.
//
// Napkin math, ResNet-50 conv 3x3, 64->64 channels, 56x56, batch 32, float32:
//   GEMM per sample and group: M = K = 64, N = 3136, depth 576: 2*64*3136*576 = 231 MFLOP,
//   7.4 GFLOP per batch; at a realistic 20 TFLOP/s for this GEMM that is ~0.37 ms.
//   im2col writes 576*3136*4 B = 7.2 MB per sample (read back by the GEMM, mostly from L2):
//   ~0.23 GB per batch, ~0.1 ms at HBM speed. So im2col costs ~25% on top of the GEMM here,
//   less for wider layers. Pointwise (1x1, stride 1, no padding) convs skip im2col entirely.
//
// Determinism: the forward and both backwards are plain GEMMs (fixed reduction order per
// output) plus col2im written as a gather; the weight gradient sums the batch inside the GEMM
// (the `slabs` loop) and across chunks with beta = 1, in batch order. Same bits every run.
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/index_math.cuh"
#include "cuda/conv_plan.cuh"
#include "cuda/kernels.cuh"

namespace pycnn::cuda {
namespace {

template <typename T, typename I>
__global__ void im2col_kernel(ConvGeom<I> g, I total, const T* __restrict__ x, T* __restrict__ col) {
  for (I idx = I(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += I(gridDim.x) * blockDim.x)
    im2col_element(g, idx, x, col);
}

template <typename T, typename I>
__global__ void col2im_kernel(ConvGeom<I> g, I total, const T* __restrict__ col, T* __restrict__ gx) {
  for (I idx = I(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += I(gridDim.x) * blockDim.x)
    gx[idx] = col2im_element(g, idx, col);
}

// Columns of `batch` samples (x points at the first) into col, [batch, C*kh*kw, OH*OW].
template <typename T>
void im2col(Stream stream, const Conv2dShape& s, int64_t batch, const T* x, T* col, const char* op) {
  const int64_t total = batch * s.C * s.OH * s.OW;
  if (total == 0) return;
  const int64_t biggest = std::max(batch * s.C * s.kh * s.kw * s.OH * s.OW, batch * s.C * s.H * s.W);
  if (fits_int32(biggest))
    PYCNN_LAUNCH(grid_for(total), kThreads, stream, im2col_kernel<T, int32_t>)(ConvGeom<int32_t>::from(s), int32_t(total), x, col);
  else
    PYCNN_LAUNCH(grid_for(total), kThreads, stream, im2col_kernel<T, int64_t>)(ConvGeom<int64_t>::from(s), total, x, col);
  check_launch(op);
}

template <typename T>
void col2im(Stream stream, const Conv2dShape& s, int64_t batch, const T* col, T* gx, const char* op) {
  const int64_t total = batch * s.C * s.H * s.W;
  if (total == 0) return;
  const int64_t biggest = std::max(batch * s.C * s.kh * s.kw * s.OH * s.OW, total);
  if (fits_int32(biggest))
    PYCNN_LAUNCH(grid_for(total), kThreads, stream, col2im_kernel<T, int32_t>)(ConvGeom<int32_t>::from(s), int32_t(total), col, gx);
  else
    PYCNN_LAUNCH(grid_for(total), kThreads, stream, col2im_kernel<T, int64_t>)(ConvGeom<int64_t>::from(s), total, col, gx);
  check_launch(op);
}

void zero(Stream stream, void* p, int64_t bytes, const char* op) {
  if (bytes > 0) check_call(cudaMemsetAsync(p, 0, size_t(bytes), stream), op, "cudaMemsetAsync");
}

}  // namespace

template <typename T>
void conv2d_forward(Stream stream, const Conv2dShape& s, const T* x, const T* w, const T* bias,
                    T* y, T* ws, int64_t ws_elems) {
  const char* op = "conv2d";
  const int64_t L = s.OH * s.OW;
  if (s.N == 0 || s.K == 0 || L == 0) return;  // y is empty
  const int64_t cols = conv_plan::col_per_sample(s);
  // Pointwise convs read x as their column matrix; no input channels (cols == 0) need none.
  const bool needs_cols = !s.is_pointwise() && cols > 0;
  const int64_t chunk = conv_plan::chunk_size(s, needs_cols, ws_elems, op);
  for (int64_t n0 = 0; n0 < s.N; n0 += chunk) {
    const int64_t batch = std::min(chunk, s.N - n0);
    const T* xs = x + n0 * s.C * s.H * s.W;
    if (needs_cols) im2col(stream, s, batch, xs, ws, op);
    gemm_batched(stream, conv_plan::forward(s, n0, batch, w, needs_cols ? ws : xs,
                                            needs_cols ? cols : s.C * s.H * s.W, bias, y), op);
  }
}

template <typename T>
void conv2d_backward_input(Stream stream, const Conv2dShape& s, const T* gy, const T* w, T* gx,
                           T* ws, int64_t ws_elems) {
  const char* op = "conv2d_backward_input";
  const int64_t HW = s.H * s.W, L = s.OH * s.OW;
  if (s.N == 0 || s.C == 0 || HW == 0) return;  // gx is empty
  if (s.K == 0 || L == 0) {                      // nothing flows back
    zero(stream, gx, s.N * s.C * HW * int64_t(sizeof(T)), op);
    return;
  }
  const int64_t cols = conv_plan::col_per_sample(s);
  const bool needs_cols = !s.is_pointwise();
  const int64_t chunk = conv_plan::chunk_size(s, needs_cols, ws_elems, op);
  for (int64_t n0 = 0; n0 < s.N; n0 += chunk) {
    const int64_t batch = std::min(chunk, s.N - n0);
    T* gxs = gx + n0 * s.C * HW;
    if (needs_cols) {  // column gradient into the workspace, then gathered into gx
      gemm_batched(stream, conv_plan::backward_input(s, n0, batch, w, gy, ws, cols), op);
      col2im(stream, s, batch, ws, gxs, op);
    } else {           // pointwise: the column gradient is the input gradient
      gemm_batched(stream, conv_plan::backward_input(s, n0, batch, w, gy, gxs, s.C * HW), op);
    }
  }
}

template <typename T>
void conv2d_backward_weight(Stream stream, const Conv2dShape& s, const T* x, const T* gy, T* gw,
                            T* gb, T* ws, int64_t ws_elems) {
  const char* op = "conv2d_backward_weight";
  const int64_t L = s.OH * s.OW;
  if (gb) channel_sum(stream, s.N, s.K, L, gy, gb);
  if (!gw) return;
  if (s.K == 0 || s.col_rows() == 0) return;  // gw is empty
  if (s.N == 0 || L == 0) {                   // an empty sum
    zero(stream, gw, s.K * s.col_rows() * int64_t(sizeof(T)), op);
    return;
  }
  const int64_t cols = conv_plan::col_per_sample(s);
  const bool needs_cols = !s.is_pointwise();
  const int64_t chunk = conv_plan::chunk_size(s, needs_cols, ws_elems, op);
  for (int64_t n0 = 0; n0 < s.N; n0 += chunk) {
    const int64_t batch = std::min(chunk, s.N - n0);
    const T* xs = x + n0 * s.C * s.H * s.W;
    if (needs_cols) im2col(stream, s, batch, xs, ws, op);
    gemm_batched(stream, conv_plan::backward_weight(s, n0, batch, gy, needs_cols ? ws : xs,
                                                    needs_cols ? cols : s.C * s.H * s.W, gw), op);
  }
}

#define PYCNN_INSTANTIATE(T)                                                                      \
  template void conv2d_forward<T>(Stream, const Conv2dShape&, const T*, const T*, const T*, T*,   \
                                  T*, int64_t);                                                   \
  template void conv2d_backward_input<T>(Stream, const Conv2dShape&, const T*, const T*, T*, T*,  \
                                         int64_t);                                                \
  template void conv2d_backward_weight<T>(Stream, const Conv2dShape&, const T*, const T*, T*, T*, \
                                          T*, int64_t);
PYCNN_INSTANTIATE(float)
PYCNN_INSTANTIATE(double)

}  // namespace pycnn::cuda
