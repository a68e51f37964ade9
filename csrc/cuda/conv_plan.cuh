// How conv2d maps onto batched GEMMs: the GemmProblem of each pass for one chunk of samples.
// Host-only plain C++ (no CUDA headers), shared by conv.cu and the CPU emulator in host_check/.
#pragma once
#include <algorithm>
#include <stdexcept>
#include <string>

#include "common/shapes.h"
#include "cuda/kernels.cuh"

namespace pycnn::cuda::conv_plan {

// Columns of one sample: [C * kh * kw, OH * OW] = groups stacked blocks of [R, L].
inline int64_t col_per_sample(const Conv2dShape& s) { return s.C * s.kh * s.kw * s.OH * s.OW; }

// Samples per chunk: as many whole samples' columns as the workspace holds (all of them when
// no columns are needed).
inline int64_t chunk_size(const Conv2dShape& s, bool needs_cols, int64_t ws_elems, const char* op) {
  if (!needs_cols) return std::max<int64_t>(s.N, 1);
  const int64_t per_sample = col_per_sample(s);
  if (ws_elems < per_sample)
    throw std::runtime_error(std::string(op) + ": workspace of " + std::to_string(ws_elems) +
                             " elements is smaller than one sample's columns (" +
                             std::to_string(per_sample) + ")");
  return std::max<int64_t>(1, std::min(s.N, ws_elems / per_sample));
}

// y[n, g*Kg + k, l] = sum_r w[g*Kg + k, r] * col[n, g*R + r, l] (+ bias[g*Kg + k]) for the
// `batch` samples starting at n0; col points at the chunk's first sample (sample stride
// col_stride: the workspace's, or C*H*W when x itself is the column matrix).
template <typename T>
GemmProblem<T> forward(const Conv2dShape& s, int64_t n0, int64_t batch, const T* w, const T* col,
                       int64_t col_stride, const T* bias, T* y) {
  const int64_t Kg = s.K_per_group(), R = s.col_rows(), L = s.OH * s.OW;
  GemmProblem<T> p;
  p.M = Kg; p.N = L; p.K = R;
  p.A = w; p.lda = R; p.a_inner = Kg * R;
  p.B = col; p.ldb = L; p.b_outer = col_stride; p.b_inner = R * L;
  p.C = y + n0 * s.K * L; p.ldc = L; p.c_outer = s.K * L; p.c_inner = Kg * L;
  p.outer_count = batch; p.inner_count = s.groups;
  if (bias) { p.bias = bias; p.bias_mode = BiasMode::kPerRow; p.bias_inner = Kg; }
  return p;
}

// dcol[n, g*R + r, l] = sum_k w[g*Kg + k, r] * gy[n, g*Kg + k, l]   (w^T @ gy), written to dst
// (sample stride dst_stride: the workspace's, or C*H*W when writing gx of a pointwise conv).
template <typename T>
GemmProblem<T> backward_input(const Conv2dShape& s, int64_t n0, int64_t batch, const T* w,
                              const T* gy, T* dst, int64_t dst_stride) {
  const int64_t Kg = s.K_per_group(), R = s.col_rows(), L = s.OH * s.OW;
  GemmProblem<T> p;
  p.trans_a = true;
  p.M = R; p.N = L; p.K = Kg;
  p.A = w; p.lda = R; p.a_inner = Kg * R;
  p.B = gy + n0 * s.K * L; p.ldb = L; p.b_outer = s.K * L; p.b_inner = Kg * L;
  p.C = dst; p.ldc = L; p.c_outer = dst_stride; p.c_inner = R * L;
  p.outer_count = batch; p.inner_count = s.groups;
  return p;
}

// gw[g*Kg + k, r] (+)= sum_{n in chunk} sum_l gy[n, g*Kg + k, l] * col[n, g*R + r, l]: the
// samples are the GEMM's slabs, summed in order inside one launch; chunks after the first
// accumulate with beta = 1. No atomics anywhere.
template <typename T>
GemmProblem<T> backward_weight(const Conv2dShape& s, int64_t n0, int64_t batch, const T* gy,
                               const T* col, int64_t col_stride, T* gw) {
  const int64_t Kg = s.K_per_group(), R = s.col_rows(), L = s.OH * s.OW;
  GemmProblem<T> p;
  p.trans_b = true;
  p.M = Kg; p.N = R; p.K = L;
  p.A = gy + n0 * s.K * L; p.lda = L; p.a_inner = Kg * L; p.a_slab = s.K * L;
  p.B = col; p.ldb = L; p.b_inner = R * L; p.b_slab = col_stride;
  p.C = gw; p.ldc = R; p.c_inner = Kg * R;
  p.inner_count = s.groups;
  p.slabs = batch;
  p.beta = n0 == 0 ? T(0) : T(1);
  return p;
}

}  // namespace pycnn::cuda::conv_plan
