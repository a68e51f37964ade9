// linear: y = x @ w^T + b on our GEMM, the bias added in the GEMM's epilogue (no extra pass).
// Napkin math, [4096, 4096] x [4096, 4096]^T float32: 137 GFLOP against 201 MB of operands:
// compute bound, ~3-7 ms at 20-45 TFLOP/s with this kernel (cuBLAS without TF32: ~2.5 ms).
#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

namespace pycnn::cuda {

template <typename T>
void linear_forward(Stream stream, int64_t M, int64_t N, int64_t K, const T* x, const T* w,
                    const T* bias, T* y) {
  GemmProblem<T> p;
  p.trans_b = true;
  p.M = M; p.N = N; p.K = K;
  p.A = x; p.lda = K; p.B = w; p.ldb = K; p.C = y; p.ldc = N;
  if (bias) { p.bias = bias; p.bias_mode = BiasMode::kPerCol; }
  gemm_batched(stream, p, "linear");
}

template <typename T>
void linear_backward(Stream stream, int64_t M, int64_t N, int64_t K, const T* x, const T* w,
                     const T* gy, T* gx, T* gw, T* gb) {
  if (gx) {  // gx [M, K] = gy [M, N] @ w [N, K]
    GemmProblem<T> p;
    p.M = M; p.N = K; p.K = N;
    p.A = gy; p.lda = N; p.B = w; p.ldb = K; p.C = gx; p.ldc = K;
    gemm_batched(stream, p, "linear_backward");
  }
  if (gw) {  // gw [N, K] = gy^T [N, M] @ x [M, K]
    GemmProblem<T> p;
    p.trans_a = true;
    p.M = N; p.N = K; p.K = M;
    p.A = gy; p.lda = N; p.B = x; p.ldb = K; p.C = gw; p.ldc = K;
    gemm_batched(stream, p, "linear_backward");
  }
  if (gb) channel_sum(stream, M, N, int64_t(1), gy, gb);
}

template void linear_forward<float>(Stream, int64_t, int64_t, int64_t, const float*, const float*, const float*, float*);
template void linear_forward<double>(Stream, int64_t, int64_t, int64_t, const double*, const double*, const double*, double*);
template void linear_backward<float>(Stream, int64_t, int64_t, int64_t, const float*, const float*, const float*, float*, float*, float*);
template void linear_backward<double>(Stream, int64_t, int64_t, int64_t, const double*, const double*, const double*, double*, double*, double*);

}  // namespace pycnn::cuda
