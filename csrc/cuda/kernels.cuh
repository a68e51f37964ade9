// The CUDA kernels: the same entry points and semantics as csrc/cpu/kernels.h, each taking the
// stream to launch on first. Pointers are device pointers to contiguous buffers allocated by
// torch; nothing here allocates except max_unpool2d_forward's 8-byte error flag (see pool.cu).
// Every function only enqueues work on `stream` (no device-wide synchronisation) and throws
// std::runtime_error naming the op if a launch fails.
//
// Plain C++ (no CUDA syntax), so bindings_cuda.cpp can include it without the CUDA headers.
#pragma once
#include <cstdint>
#include <string>

#include "common/shapes.h"

struct CUstream_st;  // = cudaStream_t's pointee, declared by the CUDA runtime the same way

namespace pycnn::cuda {

using Stream = CUstream_st*;

// ---- runtime.cu: the driver check behind pycnn's first CUDA call ----------------------------
struct RuntimeStatus {
  int error = 0;            // cudaError_t of cudaGetDeviceCount; 0 = success
  std::string error_name, message;
  int driver_version = 0;   // CUDA version the driver supports, 1000 * major + 10 * minor; 0 = none
  int runtime_version = 0;  // the (statically linked) runtime's version, same encoding
  int devices = 0;
};
RuntimeStatus runtime_status();
int insufficient_driver_code();  // cudaErrorInsufficientDriver

// ---- gemm.cu ------------------------------------------------------------------------------
// C[M,N] = alpha * op(A) @ op(B) + beta * C, row-major with leading dimensions, as cpu::gemm.
// beta == 0 means C is not read.
template <typename T>
void gemm(Stream stream, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
          const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// out[c] = sum over n < N, s < S of x[n, c, s]; fixed summation order (deterministic).
template <typename T>
void channel_sum(Stream stream, int64_t N, int64_t C, int64_t S, const T* x, T* out);

// The general GEMM behind gemm(), conv and linear: a grid of problems z = outer * inner_count +
// inner (each with its own A, B, C offsets), each summing `slabs` products in a fixed order:
//   C_z = alpha * sum_{s < slabs} op(A_z + s*a_slab) @ op(B_z + s*b_slab) + beta * C_z + bias
// with bias (optional) added per row m or per column n of C, from bias + inner * bias_inner.
enum class BiasMode { kNone, kPerRow, kPerCol };
template <typename T>
struct GemmProblem {
  bool trans_a = false, trans_b = false;
  int64_t M = 0, N = 0, K = 0;
  T alpha = T(1), beta = T(0);
  const T* A = nullptr; int64_t lda = 0;
  const T* B = nullptr; int64_t ldb = 0;
  T* C = nullptr; int64_t ldc = 0;
  int64_t outer_count = 1, inner_count = 1;
  int64_t a_outer = 0, a_inner = 0, b_outer = 0, b_inner = 0, c_outer = 0, c_inner = 0;
  int64_t slabs = 1, a_slab = 0, b_slab = 0;
  const T* bias = nullptr; BiasMode bias_mode = BiasMode::kNone; int64_t bias_inner = 0;
};
template <typename T>
void gemm_batched(Stream stream, const GemmProblem<T>& p, const char* op);

// ---- conv.cu: im2col + GEMM, the batch in chunks that fit the workspace -------------------
template <typename T>
void conv2d_forward(Stream stream, const Conv2dShape& s, const T* x, const T* w,
                    const T* bias /*nullable*/, T* y, T* ws, int64_t ws_elems);
template <typename T>
void conv2d_backward_input(Stream stream, const Conv2dShape& s, const T* gy, const T* w, T* gx,
                           T* ws, int64_t ws_elems);
template <typename T>
void conv2d_backward_weight(Stream stream, const Conv2dShape& s, const T* x, const T* gy,
                            T* gw /*nullable*/, T* gb /*nullable*/, T* ws, int64_t ws_elems);

// ---- depthwise.cu ---------------------------------------------------------------------------
template <typename T>
void depthwise_conv2d_forward(Stream stream, const Conv2dShape& s, const T* x, const T* w,
                              const T* bias /*nullable*/, T* y);
template <typename T>
void depthwise_conv2d_backward_input(Stream stream, const Conv2dShape& s, const T* gy, const T* w,
                                     T* gx);
template <typename T>
void depthwise_conv2d_backward_weight(Stream stream, const Conv2dShape& s, const T* x,
                                      const T* gy, T* gw /*nullable*/, T* gb /*nullable*/);

// ---- pool.cu ------------------------------------------------------------------------------
template <typename T>
void max_pool2d_forward(Stream stream, const Pool2dShape& s, const T* x, T* y, int64_t* indices);
template <typename T>
void max_pool2d_backward(Stream stream, const Pool2dShape& s, const T* gy, const int64_t* indices,
                         T* gx);
// Returns -1 on success, else the first position (plane * in_size + i) whose index is outside
// [0, out_size). Waits for the stream (it must read that answer back to the host).
template <typename T>
int64_t max_unpool2d_forward(Stream stream, int64_t planes, int64_t in_size, int64_t out_size,
                             const T* x, const int64_t* indices, T* y);
template <typename T>
void max_unpool2d_backward(Stream stream, int64_t planes, int64_t in_size, int64_t out_size,
                           const T* gy, const int64_t* indices, T* gx);

// ---- batchnorm.cu: x viewed as [N, C, S] ------------------------------------------------------
template <typename T>
void batch_norm_stats(Stream stream, int64_t N, int64_t C, int64_t S, const T* x, T* mean, T* var, T* invstd,
                      double eps);
// running = (1 - momentum) * running + momentum * batch (var scaled by unbias = n / (n - 1)).
template <typename T>
void batch_norm_update_running(Stream stream, int64_t C, const T* mean, const T* var, double momentum,
                               double unbias, T* running_mean, T* running_var);
template <typename T>
void batch_norm_apply(Stream stream, int64_t N, int64_t C, int64_t S, const T* x, const T* mean,
                      const T* invstd, const T* weight /*nullable*/, const T* bias /*nullable*/,
                      const T* residual /*nullable*/, bool act, T* y);

template <typename T>
void batch_norm_backward(Stream stream, int64_t N, int64_t C, int64_t S, const T* x, const T* gy,
                         const T* y /*nullable: a fused ReLU's output*/, const T* mean, const T* invstd,
                         const T* weight /*nullable*/, bool training, T* gx /*nullable*/, T* gw /*nullable*/,
                         T* gb /*nullable*/, T* ga /*nullable: the gradient behind the ReLU*/);

// ---- linear.cu: x [M, K], w [N, K], y [M, N] --------------------------------------------------
template <typename T>
void linear_forward(Stream stream, int64_t M, int64_t N, int64_t K, const T* x, const T* w,
                    const T* bias /*nullable*/, T* y);
template <typename T>
void linear_backward(Stream stream, int64_t M, int64_t N, int64_t K, const T* x, const T* w,
                     const T* gy, T* gx /*nullable*/, T* gw /*nullable*/, T* gb /*nullable*/);

// ---- roi.cu: RoIAlign / RoIPool, as csrc/cpu/kernel_api.inc (backward passes are gathers) ------
template <typename T>
void roi_align_forward(Stream stream, const RoiShape& s, const T* x, const T* rois, T* y);
template <typename T>
void roi_align_backward(Stream stream, const RoiShape& s, const T* gy, const T* rois, T* gx);
template <typename T>
void roi_pool_forward(Stream stream, const RoiShape& s, const T* x, const T* rois, T* y, int64_t* argmax);
template <typename T>
void roi_pool_backward(Stream stream, const RoiShape& s, const T* gy, const T* rois,
                       const int64_t* argmax, T* gx);

// ---- nms.cu ------------------------------------------------------------------------------------
// keep[i] for n boxes sorted by descending score, as the CPU nms_sorted (no count returned: that
// would wait for the device). workspace: nms_workspace_words(n) 64-bit words.
int64_t nms_workspace_words(int64_t n);
template <typename T>
void nms_sorted(Stream stream, int64_t n, const T* boxes, const int64_t* categories /*nullable*/,
                double iou_threshold, uint8_t* keep, unsigned long long* workspace);
template <typename T>
void box_iou(Stream stream, int64_t n, int64_t m, const T* a, const T* b, T* out);

// ---- partial_conv.cu: partial convolution, as cpu::partial_conv2d_forward/backward --------
// Returns -1, or the flat position of the first mask value outside [0, 1] (then y is not
// written); waits for the stream to read that answer back.
template <typename T>
int64_t partial_conv2d_forward(Stream stream, const Conv2dShape& s, int64_t mask_channels, const T* x,
                               const T* mask, const T* w, const T* bias /*nullable*/, T* y, T* mask_out, T* xm,
                               T* ws, int64_t ws_elems);
template <typename T>
void partial_conv2d_backward(Stream stream, const Conv2dShape& s, int64_t mask_channels, const T* x,
                             const T* mask, const T* w, const T* gy, T* gx /*nullable*/, T* gw /*nullable*/,
                             T* gb /*nullable*/, T* xm, T* gys, T* ratio, T* ws, int64_t ws_elems);

}  // namespace pycnn::cuda
