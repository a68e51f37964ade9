// The CPU kernels: one declaration per entry point, implemented in csrc/cpu/<family>.cpp and
// bound one-to-one in csrc/bindings.cpp. T is float or double. Pointers marked "nullable" may
// be null (that output is not wanted, or there is no bias). Outputs are written in full (no
// caller-side zeroing needed) unless said otherwise.
#pragma once
#include <cstdint>
#include <string>

#include "common/shapes.h"

namespace pycnn::cpu {

// ---- gemm.cpp ---------------------------------------------------------------------------
// C[M,N] = alpha * op(A) @ op(B) + beta * C, row-major with leading dimensions.
// op(A) is A[M,K] (lda >= K) or, with trans_a, A[K,M]^T (lda >= M); likewise B.
// beta == 0 means C is not read (it may hold NaN).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);
// The same contract computed by plain loops: the reference tests compare gemm against.
template <typename T>
void gemm_reference(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                    const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);
// Micro-kernel for later gemm calls (tests, benchmarks): 0 = best the CPU supports,
// 1 = portable, 2 = AVX2+FMA, 3 = AVX-512 (an unsupported one falls back). Returns its name.
std::string gemm_select_kernel(int variant);

// out[c] = sum over n < N, s < S of x[n, c, s]   (bias gradients; x is [N, C, S])
template <typename T>
void channel_sum(int64_t N, int64_t C, int64_t S, const T* x, T* out);

// ---- conv.cpp: im2col + GEMM, the batch processed in chunks that fit the workspace ------
// ws: scratch of ws_elems elements (caller-allocated; at least one sample's column matrix,
// shape.C * kh * kw * OH * OW elements, unless the conv is pointwise, where it may be empty).
template <typename T>
void conv2d_forward(const Conv2dShape& s, const T* x, const T* w, const T* bias /*nullable*/,
                    T* y, T* ws, int64_t ws_elems);
// gx = conv2d input gradient (GEMM with w^T, then col2im). Also conv_transpose2d's forward.
template <typename T>
void conv2d_backward_input(const Conv2dShape& s, const T* gy, const T* w, T* gx, T* ws,
                           int64_t ws_elems);
// gw = sum over the batch of gy @ im2col(x)^T; gb = channel sums of gy.
template <typename T>
void conv2d_backward_weight(const Conv2dShape& s, const T* x, const T* gy, T* gw /*nullable*/,
                            T* gb /*nullable*/, T* ws, int64_t ws_elems);

// Which kernel conv2d_forward runs for this shape ("winograd", "direct", "im2col_gemm" or
// "pointwise_gemm"; is_float: float32, where the AVX-512 kernels live). The input gradient of a
// stride-1 conv runs as such a forward; the weight gradient takes Winograd where the forward does.
std::string conv2d_forward_algorithm(const Conv2dShape& s, bool is_float);
// Turns the Winograd kernels on or off (on by default); returns the previous setting.
bool set_conv_winograd(bool enabled);

// ---- depthwise.cpp: direct kernels for groups == C (K = C * multiplier) -------------------
template <typename T>
void depthwise_conv2d_forward(const Conv2dShape& s, const T* x, const T* w,
                              const T* bias /*nullable*/, T* y);
template <typename T>
void depthwise_conv2d_backward_input(const Conv2dShape& s, const T* gy, const T* w, T* gx);
template <typename T>
void depthwise_conv2d_backward_weight(const Conv2dShape& s, const T* x, const T* gy,
                                      T* gw /*nullable*/, T* gb /*nullable*/);

// ---- pool.cpp --------------------------------------------------------------------------
// indices are flat positions h * W + w within each input plane (as torch returns them).
template <typename T>
void max_pool2d_forward(const Pool2dShape& s, const T* x, T* y, int64_t* indices);
template <typename T>
void max_pool2d_backward(const Pool2dShape& s, const T* gy, const int64_t* indices, T* gx);
// y[plane, indices[plane, i]] = x[plane, i]; the rest of y is zero. Returns -1 on success,
// else the position (plane * in_size + i) of the first index outside [0, out_size).
template <typename T>
int64_t max_unpool2d_forward(int64_t planes, int64_t in_size, int64_t out_size, const T* x,
                             const int64_t* indices, T* y);
template <typename T>
void max_unpool2d_backward(int64_t planes, int64_t in_size, int64_t out_size, const T* gy,
                           const int64_t* indices, T* gx);

// ---- batchnorm.cpp: x viewed as [N, C, S] ------------------------------------------------
// Per-channel mean and biased variance over N and S (numerically stable).
template <typename T>
void batch_norm_stats(int64_t N, int64_t C, int64_t S, const T* x, T* mean, T* var);
// y = (x - mean) * invstd * weight + bias
template <typename T>
void batch_norm_apply(int64_t N, int64_t C, int64_t S, const T* x, const T* mean,
                      const T* invstd, const T* weight /*nullable*/, const T* bias /*nullable*/,
                      T* y);
// training == true: mean/invstd are the batch statistics and gx includes their gradient;
// false (eval): mean/invstd are the running statistics, constants.
template <typename T>
void batch_norm_backward(int64_t N, int64_t C, int64_t S, const T* x, const T* gy,
                         const T* mean, const T* invstd, const T* weight /*nullable*/,
                         bool training, T* gx /*nullable*/, T* gw /*nullable*/,
                         T* gb /*nullable*/);

// ---- linear.cpp: x [M, K], w [N, K], y [M, N] -----------------------------------------------
template <typename T>
void linear_forward(int64_t M, int64_t N, int64_t K, const T* x, const T* w,
                    const T* bias /*nullable*/, T* y);
template <typename T>
void linear_backward(int64_t M, int64_t N, int64_t K, const T* x, const T* w, const T* gy,
                     T* gx /*nullable*/, T* gw /*nullable*/, T* gb /*nullable*/);

}  // namespace pycnn::cpu
