// linear: y = x @ w^T + b, all through our GEMM.
#include "cpu/kernels.h"
#include "simd/vec.h"

PYCNN_TARGET_BEGIN  // this target's instructions from here to PYCNN_TARGET_END

namespace pycnn::cpu::PYCNN_ISA {

template <typename T>
void linear_forward(int64_t M, int64_t N, int64_t K, const T* x, const T* w, const T* bias,
                    T* y) {
  if (bias) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) y[i * N + j] = bias[j];
  }
  gemm<T>(false, true, M, N, K, T(1), x, K, w, K, bias ? T(1) : T(0), y, N);
}

template <typename T>
void linear_backward(int64_t M, int64_t N, int64_t K, const T* x, const T* w, const T* gy,
                     T* gx, T* gw, T* gb) {
  if (gx) gemm<T>(false, false, M, K, N, T(1), gy, N, w, K, T(0), gx, K);   // gy @ w
  if (gw) gemm<T>(true, false, N, K, M, T(1), gy, N, x, K, T(0), gw, K);    // gy^T @ x
  if (gb) channel_sum<T>(M, N, 1, gy, gb);
}

template void linear_forward<float>(int64_t, int64_t, int64_t, const float*, const float*, const float*, float*);
template void linear_forward<double>(int64_t, int64_t, int64_t, const double*, const double*, const double*, double*);
template void linear_backward<float>(int64_t, int64_t, int64_t, const float*, const float*, const float*, float*, float*, float*);
template void linear_backward<double>(int64_t, int64_t, int64_t, const double*, const double*, const double*, double*, double*, double*);

}  // namespace pycnn::cpu::PYCNN_ISA

PYCNN_TARGET_END
