// Placeholder GEMM (correct, simple): replaced by the packed, register-blocked kernel.
#include <algorithm>
#include <vector>

#include "common/parallel.h"
#include "cpu/kernels.h"

namespace pycnn::cpu {

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  parallel_for(M, 1, [&](int64_t i0, int64_t i1) {
    std::vector<T> acc(N);
    for (int64_t i = i0; i < i1; ++i) {
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t k = 0; k < K; ++k) {
        T a = trans_a ? A[k * lda + i] : A[i * lda + k];
        if (trans_b) {
          for (int64_t j = 0; j < N; ++j) acc[j] += a * B[j * ldb + k];
        } else {
          const T* b = B + k * ldb;
          for (int64_t j = 0; j < N; ++j) acc[j] += a * b[j];
        }
      }
      T* c = C + i * ldc;
      for (int64_t j = 0; j < N; ++j) c[j] = alpha * acc[j] + (beta == T(0) ? T(0) : beta * c[j]);
    }
  });
}

template <typename T>
void channel_sum(int64_t N, int64_t C, int64_t S, const T* x, T* out) {
  parallel_for(C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      T total = 0;
      for (int64_t n = 0; n < N; ++n) {
        const T* row = x + (n * C + c) * S;
        for (int64_t s = 0; s < S; ++s) total += row[s];
      }
      out[c] = total;
    }
  });
}

#define PYCNN_INSTANTIATE(T)                                                                   \
  template void gemm<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*, \
                        int64_t, T, T*, int64_t);                                              \
  template void channel_sum<T>(int64_t, int64_t, int64_t, const T*, T*);
PYCNN_INSTANTIATE(float)
PYCNN_INSTANTIATE(double)

}  // namespace pycnn::cpu
