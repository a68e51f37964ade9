// Internal GEMM entry point for the convolutions: the caller packs op(B) itself, so conv2d can
// build im2col columns straight into the GEMM's packed panels (implicit im2col) instead of
// writing a C*kh*kw x OH*OW column matrix and reading it back (2.4 MB per sample for a 3x3
// 64-channel 32x32 conv: more than L2, so that round trip went through L3).
#pragma once
#include <cstdint>
#include <functional>

namespace pycnn::cpu::PYCNN_ISA {

// pack(j0, j1, p0, kc, NR, out): the columns [j0, j1) of op(B) (j0 at a panel boundary), rows
// [p0, p0 + kc), as consecutive panels: column j0 + q*NR + j, row p0 + k goes to
// out[q * NR * kc + k * NR + j]; the last panel's columns past j1 are zero. Called once per
// thread's run of panels per k block, so the std::function call costs nothing measurable.
template <typename T>
using PackBPanel = std::function<void(int64_t j0, int64_t j1, int64_t p0, int64_t kc, int NR, T* out)>;

// C[M,N] = alpha * op(A) @ op(B) + beta * C, op(B) given by its packer; same contract as gemm.
// a_prepacked (nullable): op(A) already packed by gemm_pack_a (same M, K, same kernel variant),
// so a weight used for every sample of a batch is packed once per call, not once per sample.
template <typename T>
void gemm_custom_b(bool trans_a, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                   const PackBPanel<T>& pack_b, T beta, T* C, int64_t ldc, const T* a_prepacked = nullptr);

// Elements gemm_pack_a writes for an M x K op(A), and the packing itself.
template <typename T>
int64_t gemm_packed_a_size(int64_t M, int64_t K);
template <typename T>
void gemm_pack_a(bool trans_a, int64_t M, int64_t K, const T* A, int64_t lda, T* out);

}  // namespace pycnn::cpu::PYCNN_ISA
