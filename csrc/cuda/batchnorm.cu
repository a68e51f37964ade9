// Batch normalisation over x viewed as [N, C, S]: statistics, normalisation, backward.
//
// Statistics are two-pass (mean, then the sum of squared deviations), accumulated in double for
// float data, one block per channel with a fixed-shape tree: exact to the last bit run after
// run, and no cancellation whatever the mean. The backward likewise reduces its two per-channel
// sums in one block per channel, then (same kernel, no temporary buffer) writes gx.
//
// Napkin math, [32, 64, 112, 112] float32 (103 MB): stats read x twice (206 MB, ~0.06 ms at
// 3.35 TB/s, partly L2), apply reads x and writes y (206 MB), backward reads x and gy twice
// and writes gx (~0.5 GB, ~0.15 ms). One block per channel keeps only C blocks in flight: with
// C < ~2x the SM count (132 on H100) the reductions reach only part of peak bandwidth; a
// split-channel reduction with a second pass would fix that if it shows up in profiles.
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

namespace pycnn::cuda {
namespace {

constexpr int kBnThreads = 512;

// Calls f(offset) for every element of channel c, each thread its own fixed subset.
template <typename I, typename F>
__device__ __forceinline__ void for_channel(I N, I C, I S, I c, F&& f) {
  if (S >= I(blockDim.x)) {  // long rows: threads stride along each row, no division
    for (I n = 0; n < N; ++n) {
      const I base = (n * C + c) * S;
      for (I s = threadIdx.x; s < S; s += blockDim.x) f(base + s);
    }
  } else {
    const I total = N * S;
    for (I i = threadIdx.x; i < total; i += blockDim.x) {
      const I n = i / S, s = i - n * S;
      f((n * C + c) * S + s);
    }
  }
}

template <typename T, typename I>
__global__ void __launch_bounds__(kBnThreads)
bn_stats_kernel(I N, I C, I S, const T* __restrict__ x, T* __restrict__ mean, T* __restrict__ var,
                T* __restrict__ invstd, double eps) {
  using A = acc_t<T>;
  __shared__ A partial[kBnThreads / 32];
  __shared__ A channel_mean;
  const A count = A(N) * A(S);
  for (I c = blockIdx.x; c < C; c += gridDim.x) {
    A sum = 0;
    for_channel(N, C, S, c, [&](I o) { sum += A(x[o]); });
    sum = block_sum(sum, partial);
    // An empty batch has mean and variance 0, as on the CPU (not 0 / 0).
    if (threadIdx.x == 0) channel_mean = count > 0 ? sum / count : A(0);
    __syncthreads();
    const A m = channel_mean;
    A sq = 0;
    for_channel(N, C, S, c, [&](I o) {
      const A d = A(x[o]) - m;
      sq += d * d;
    });
    sq = block_sum(sq, partial);
    if (threadIdx.x == 0) {
      mean[c] = T(m);
      const T v = T(count > 0 ? sq / count : A(0));
      var[c] = v;
      if (invstd) invstd[c] = T(1) / std::sqrt(v + T(eps));  // in T, as the CPU kernel
    }
    __syncthreads();  // channel_mean is rewritten by the next channel
  }
}

// y = BN(x) [+ residual] [then ReLU]: the residual add and ReLU of a ResNet block fused in.
template <typename T, typename I>
__global__ void bn_apply_kernel(I C, I S, I total, const T* __restrict__ x, const T* __restrict__ mean,
                                const T* __restrict__ invstd, const T* __restrict__ weight,
                                const T* __restrict__ bias, const T* __restrict__ residual, bool act,
                                T* __restrict__ y) {
  for (I idx = I(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += I(gridDim.x) * blockDim.x) {
    const I c = (idx / S) % C;
    T v = (x[idx] - mean[c]) * invstd[c];
    if (weight) v *= weight[c];
    if (bias) v += bias[c];
    if (residual) v += residual[idx];
    if (act && v < T(0)) v = T(0);  // NaN passes, as in torch.relu
    y[idx] = v;
  }
}


// The gradient behind a fused ReLU with output y (null: none): torch's threshold_backward,
// y <= 0 gives 0 (a NaN output passes the gradient on).
template <typename T, typename I>
__device__ __forceinline__ T relu_grad(const T* __restrict__ gy, const T* __restrict__ y, I o) {
  const T g = gy[o];
  return y && y[o] <= T(0) ? T(0) : g;
}

// With y (a fused ReLU's output), gy is masked as it is read, and stored in ga (the residual's
// gradient) when ga is given.
template <typename T, typename I>
__global__ void __launch_bounds__(kBnThreads)
bn_backward_kernel(I N, I C, I S, const T* __restrict__ x, const T* __restrict__ gy, const T* __restrict__ y,
                   const T* __restrict__ mean, const T* __restrict__ invstd,
                   const T* __restrict__ weight, bool training, T* __restrict__ gx,
                   T* __restrict__ gw, T* __restrict__ gb, T* __restrict__ ga) {
  using A = acc_t<T>;
  __shared__ A partial[kBnThreads / 32];
  __shared__ A sums[2];
  const A count = A(N) * A(S);
  const bool need_sums = gw || gb || (gx && training) || ga;
  for (I c = blockIdx.x; c < C; c += gridDim.x) {
    const A mu = A(mean[c]), is = A(invstd[c]);
    A sum_gy = 0, sum_dot = 0;  // sum gy, sum gy * (x - mean)
    if (need_sums) {
      for_channel(N, C, S, c, [&](I o) {
        const T gt = relu_grad(gy, y, o);
        if (ga) ga[o] = gt;
        const A g = A(gt);
        sum_gy += g;
        sum_dot += g * (A(x[o]) - mu);
      });
      sum_gy = block_sum(sum_gy, partial);
      sum_dot = block_sum(sum_dot, partial);
      if (threadIdx.x == 0) {
        sums[0] = sum_gy;
        sums[1] = sum_dot;
        if (gb) gb[c] = T(sum_gy);
        if (gw) gw[c] = T(sum_dot * is);
      }
      __syncthreads();
      sum_gy = sums[0];
      sum_dot = sums[1];
    }
    if (gx) {
      const A scale = is * (weight ? A(weight[c]) : A(1));
      if (training) {
        // gx = w * invstd * (gy - mean(gy) - xhat * mean(gy * xhat)), xhat = (x - mean) * invstd
        const A mean_gy = count > 0 ? sum_gy / count : A(0);
        const A proj = count > 0 ? sum_dot * is * is / count : A(0);
        for_channel(N, C, S, c, [&](I o) {
          gx[o] = T((A(relu_grad(gy, y, o)) - mean_gy - (A(x[o]) - mu) * proj) * scale);
        });
      } else {  // running statistics are constants
        for_channel(N, C, S, c, [&](I o) { gx[o] = T(A(relu_grad(gy, y, o)) * scale); });
      }
    }
    __syncthreads();  // sums[] is rewritten by the next channel
  }
}

// running = (1 - momentum) * running + momentum * batch statistic (the variance times unbias),
// one thread per channel, in double like the CPU's.
template <typename T>
__global__ void bn_update_running_kernel(int64_t C, const T* __restrict__ mean, const T* __restrict__ var,
                                         double momentum, double unbias, T* __restrict__ running_mean,
                                         T* __restrict__ running_var) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < C; c += int64_t(gridDim.x) * blockDim.x) {
    running_mean[c] = T((1.0 - momentum) * double(running_mean[c]) + momentum * double(mean[c]));
    running_var[c] = T((1.0 - momentum) * double(running_var[c]) + momentum * unbias * double(var[c]));
  }
}

}  // namespace

template <typename T>
void batch_norm_update_running(Stream stream, int64_t C, const T* mean, const T* var, double momentum,
                               double unbias, T* running_mean, T* running_var) {
  if (C == 0) return;
  PYCNN_LAUNCH(grid_for(C), kThreads, stream, bn_update_running_kernel<T>)(C, mean, var, momentum, unbias,
                                                                          running_mean, running_var);
  check_launch("batch_norm");
}

template <typename T>
void batch_norm_stats(Stream stream, int64_t N, int64_t C, int64_t S, const T* x, T* mean, T* var, T* invstd,
                      double eps) {
  if (C == 0) return;
  if (fits_int32(N * C * S))
    PYCNN_LAUNCH(grid_per_item(C), kBnThreads, stream, bn_stats_kernel<T, int32_t>)(int32_t(N), int32_t(C), int32_t(S), x, mean,
                                                                                   var, invstd, eps);
  else
    PYCNN_LAUNCH(grid_per_item(C), kBnThreads, stream, bn_stats_kernel<T, int64_t>)(N, C, S, x, mean, var, invstd, eps);
  check_launch("batch_norm");
}

template <typename T>
void batch_norm_apply(Stream stream, int64_t N, int64_t C, int64_t S, const T* x, const T* mean,
                      const T* invstd, const T* weight, const T* bias, const T* residual, bool act, T* y) {
  const int64_t total = N * C * S;
  if (total == 0) return;
  if (fits_int32(total))
    PYCNN_LAUNCH(grid_for(total), kThreads, stream, bn_apply_kernel<T, int32_t>)(
        int32_t(C), int32_t(S), int32_t(total), x, mean, invstd, weight, bias, residual, act, y);
  else
    PYCNN_LAUNCH(grid_for(total), kThreads, stream, bn_apply_kernel<T, int64_t>)(
        C, S, total, x, mean, invstd, weight, bias, residual, act, y);
  check_launch("batch_norm");
}


template <typename T>
void batch_norm_backward(Stream stream, int64_t N, int64_t C, int64_t S, const T* x, const T* gy, const T* y,
                         const T* mean, const T* invstd, const T* weight, bool training, T* gx,
                         T* gw, T* gb, T* ga) {
  if (C == 0 || (!gx && !gw && !gb && !ga)) return;
  if (fits_int32(N * C * S))
    PYCNN_LAUNCH(grid_per_item(C), kBnThreads, stream, bn_backward_kernel<T, int32_t>)(
        int32_t(N), int32_t(C), int32_t(S), x, gy, y, mean, invstd, weight, training, gx, gw, gb, ga);
  else
    PYCNN_LAUNCH(grid_per_item(C), kBnThreads, stream, bn_backward_kernel<T, int64_t>)(
        N, C, S, x, gy, y, mean, invstd, weight, training, gx, gw, gb, ga);
  check_launch("batch_norm_backward");
}

#define PYCNN_INSTANTIATE(T)                                                                       \
  template void batch_norm_stats<T>(Stream, int64_t, int64_t, int64_t, const T*, T*, T*, T*, double); \
  template void batch_norm_update_running<T>(Stream, int64_t, const T*, const T*, double, double, T*, T*); \
  template void batch_norm_apply<T>(Stream, int64_t, int64_t, int64_t, const T*, const T*,         \
                                    const T*, const T*, const T*, const T*, bool, T*);             \
  template void batch_norm_backward<T>(Stream, int64_t, int64_t, int64_t, const T*, const T*,      \
                                       const T*, const T*, const T*, const T*, bool, T*, T*, T*, T*);
PYCNN_INSTANTIATE(float)
PYCNN_INSTANTIATE(double)

}  // namespace pycnn::cuda
