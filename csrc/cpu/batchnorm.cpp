// Batch normalisation on CPU, x viewed as [N, C, S] (S = product of the spatial sizes).
//
// Napkin math for the benchmark shape (N=32, C=64, S=64*64, float32): every tensor is 32 MiB,
// the machine streams ~8-10 GB/s from DRAM and its L3 is 32 MiB, L2 1 MiB a core. The work is
// a handful of flops per element, so time = bytes moved / bandwidth:
//   stats         read x                            32 MiB  (two-pass variance, but the second
//                                                            pass re-reads a 16 KiB block from L1)
//   apply         read x, write y                   64 MiB
//   backward      read x, gy (sums), then
//                 read x, gy, write gx              160 MiB unfused; fused by groups of 4
//                                                            channels: a group's x + gy is 4 MiB,
//                                                            so the second read comes from L3 and
//                                                            DRAM sees ~96 MiB
// Measured on the 2-core dev VM (1 thread): stats ~1.8 ms (= torch's x.sum(), i.e. one read at
// full bandwidth), apply ~3.6 ms (= torch.mul(x, 2, out=y)). Orders that were tried and lost:
// splitting stats by channel, and walking apply backwards to reuse L3 (2x slower: the
// prefetchers lose the stream). The rest of a forward + backward is first-touch page faults of
// the fresh y and gx (~16 ms per 32 MiB), hence advise_huge_pages (common/cpu_tuning.h).
// A per-channel reduction never crosses threads: each (n, c) row is cut into blocks of
// kBlock elements, each block's (mean, M2) or gradient sums are computed in T with many
// independent lanes, and blocks are merged in double, always in the same (n, block) order, so
// the result does not depend on the thread count (Chan et al.'s pairwise update for M2).
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/cpu_tuning.h"
#include "common/parallel.h"
#include "cpu/kernels.h"
#include "simd/vec.h"

PYCNN_TARGET_BEGIN  // this target's instructions from here to PYCNN_TARGET_END

namespace pycnn::cpu::PYCNN_ISA {
namespace {

constexpr int64_t kBlock = 4096;        // 16 KiB of float: the variance's second pass hits L1
constexpr int64_t kMinRow = 64;         // shorter rows ([N, C] inputs, tiny maps): column path
constexpr int64_t kGrainElems = 1 << 15;  // elements a thread should get before splitting
// Backward: channels handled together so one sample's share is a contiguous run of ~64 KiB.
constexpr int64_t kGroupBytes = 64 << 10;


// ---- block kernels: plain loops the compiler vectorises for each target ------------------

template <typename T>
PYCNN_ALWAYS_INLINE void block_moments_body(const T* x, int64_t n, T* mean_out, T* m2_out) {
  constexpr int L = kLanes<T>;
  T acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) acc[j] += x[i + j];
  T tail = 0;
  for (int64_t t = i; t < n; ++t) tail += x[t];
  const T mean = (fold_lanes(acc) + tail) / T(n);
  T acc2[L] = {};
  for (i = 0; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) {
      T d = x[i + j] - mean;
      acc2[j] += d * d;
    }
  T tail2 = 0;
  for (int64_t t = i; t < n; ++t) tail2 += (x[t] - mean) * (x[t] - mean);
  *mean_out = mean;
  *m2_out = fold_lanes(acc2) + tail2;
}

// sum(gy) and sum(gy * (x - mean)) over one block.
template <typename T>
PYCNN_ALWAYS_INLINE void block_grad_sums_body(const T* x, const T* gy, int64_t n, T mean,
                                              T* sum_gy, T* sum_gy_xm) {
  constexpr int L = kLanes<T>;
  T a[L] = {}, b[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) {
      a[j] += gy[i + j];
      b[j] += gy[i + j] * (x[i + j] - mean);
    }
  T ta = 0, tb = 0;
  for (; i < n; ++i) {
    ta += gy[i];
    tb += gy[i] * (x[i] - mean);
  }
  *sum_gy = fold_lanes(a) + ta;
  *sum_gy_xm = fold_lanes(b) + tb;
}

// ReLU as torch computes it: NaN passes through (NaN < 0 is false).
template <typename T>
PYCNN_ALWAYS_INLINE T relu(T v) {
  return v < T(0) ? T(0) : v;
}

// The gradient behind a fused ReLU whose output is y: torch's threshold_backward (y <= 0 gives 0,
// so a NaN output passes the gradient on). gy is read unconditionally: a select the compiler
// vectorises, not a branch.
template <typename T>
PYCNN_ALWAYS_INLINE T relu_grad(T gy, T y) {
  return y <= T(0) ? T(0) : gy;
}

// The same sums over the gradient behind a fused ReLU (output y), storing that gradient in ga
// when ga is given (the residual's gradient).
template <typename T>
PYCNN_ALWAYS_INLINE void block_grad_sums_relu_body(const T* x, const T* gy, const T* y, T* ga, int64_t n,
                                                   T mean, T* sum_gy, T* sum_gy_xm) {
  constexpr int L = kLanes<T>;
  T a[L] = {}, b[L] = {};
  int64_t i = 0;
  if (ga) {
    for (; i + L <= n; i += L)
      for (int j = 0; j < L; ++j) {
        const T g = relu_grad(gy[i + j], y[i + j]);
        ga[i + j] = g;
        a[j] += g;
        b[j] += g * (x[i + j] - mean);
      }
  } else {
    for (; i + L <= n; i += L)
      for (int j = 0; j < L; ++j) {
        const T g = relu_grad(gy[i + j], y[i + j]);
        a[j] += g;
        b[j] += g * (x[i + j] - mean);
      }
  }
  T ta = 0, tb = 0;
  for (; i < n; ++i) {
    const T g = relu_grad(gy[i], y[i]);
    if (ga) ga[i] = g;
    ta += g;
    tb += g * (x[i] - mean);
  }
  *sum_gy = fold_lanes(a) + ta;
  *sum_gy_xm = fold_lanes(b) + tb;
}

// y = (x - mean) * scale + shift   (x - mean first: exact when |mean| >> std), then optionally
// + r (a residual) and ReLU: ResNet's "BN, add the shortcut, ReLU" in one pass over memory.
// One loop per case, so each stays a plain loop the compiler vectorises.
template <typename T>
PYCNN_ALWAYS_INLINE void block_affine_body(const T* x, const T* r, bool act, int64_t n, T mean, T scale,
                                           T shift, T* y) {
  if (r && act) {
    for (int64_t i = 0; i < n; ++i) y[i] = relu((x[i] - mean) * scale + shift + r[i]);
  } else if (r) {
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * scale + shift + r[i];
  } else if (act) {
    for (int64_t i = 0; i < n; ++i) y[i] = relu((x[i] - mean) * scale + shift);
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * scale + shift;
  }
}

// gx = (gy - gy_mean) * k_gy + (x - mean) * k_x; with k_x == 0 (eval) x is not read.
template <typename T>
PYCNN_ALWAYS_INLINE void block_grad_input_body(const T* x, const T* gy, int64_t n, T mean,
                                               T gy_mean, T k_gy, T k_x, T* gx) {
  if (k_x == T(0) && gy_mean == T(0)) {
    for (int64_t i = 0; i < n; ++i) gx[i] = gy[i] * k_gy;
  } else {
    for (int64_t i = 0; i < n; ++i) gx[i] = (gy[i] - gy_mean) * k_gy + (x[i] - mean) * k_x;
  }
}

// block_grad_input with the gradient behind a fused ReLU (output y) recomputed on the fly.
template <typename T>
PYCNN_ALWAYS_INLINE void block_grad_input_relu_body(const T* x, const T* gy, const T* y, int64_t n, T mean,
                                                    T gy_mean, T k_gy, T k_x, T* gx) {
  for (int64_t i = 0; i < n; ++i) gx[i] = (relu_grad(gy[i], y[i]) - gy_mean) * k_gy + (x[i] - mean) * k_x;
}

#define PYCNN_BN_VARIANT(name, params, args) \
  template <typename T>            \
  void name params { name##_body<T> args; }

PYCNN_BN_VARIANT(block_moments, (const T* x, int64_t n, T* mean, T* m2), (x, n, mean, m2))
PYCNN_BN_VARIANT(block_grad_sums, (const T* x, const T* gy, int64_t n, T mean, T* sg, T* sgx),
                 (x, gy, n, mean, sg, sgx))
PYCNN_BN_VARIANT(block_affine, (const T* x, const T* r, bool act, int64_t n, T mean, T scale, T shift, T* y),
                 (x, r, act, n, mean, scale, shift, y))
PYCNN_BN_VARIANT(block_grad_input,
                 (const T* x, const T* gy, int64_t n, T mean, T gy_mean, T k_gy, T k_x, T* gx),
                 (x, gy, n, mean, gy_mean, k_gy, k_x, gx))
PYCNN_BN_VARIANT(block_grad_sums_relu, (const T* x, const T* gy, const T* y, T* ga, int64_t n, T mean, T* sg, T* sgx),
                 (x, gy, y, ga, n, mean, sg, sgx))
PYCNN_BN_VARIANT(block_grad_input_relu,
                 (const T* x, const T* gy, const T* y, int64_t n, T mean, T gy_mean, T k_gy, T k_x, T* gx),
                 (x, gy, y, n, mean, gy_mean, k_gy, k_x, gx))
#undef PYCNN_BN_VARIANT

template <typename T>
struct BlockKernels {
  void (*moments)(const T*, int64_t, T*, T*);
  void (*grad_sums)(const T*, const T*, int64_t, T, T*, T*);
  void (*affine)(const T*, const T*, bool, int64_t, T, T, T, T*);
  void (*grad_input)(const T*, const T*, int64_t, T, T, T, T, T*);
  void (*grad_sums_relu)(const T*, const T*, const T*, T*, int64_t, T, T*, T*);
  void (*grad_input_relu)(const T*, const T*, const T*, int64_t, T, T, T, T, T*);
};

template <typename T>
const BlockKernels<T>& block_kernels() {
  static const BlockKernels<T> k =
     BlockKernels<T>{block_moments<T>, block_grad_sums<T>, block_affine<T>, block_grad_input<T>,
                     block_grad_sums_relu<T>, block_grad_input_relu<T>};
  return k;
}

// Running (count, mean, M2) merged block by block in double.
struct Moments {
  double count = 0, mean = 0, m2 = 0;
  void add(double n, double block_mean, double block_m2) {
    if (n == 0) return;
    const double total = count + n, delta = block_mean - mean;
    mean += delta * (n / total);
    m2 += block_m2 + delta * delta * (count * n / total);
    count = total;
  }
};


int64_t blocks_per_row(int64_t S) { return (S + kBlock - 1) / kBlock; }
int64_t block_len(int64_t S, int64_t b) { return std::min(kBlock, S - b * kBlock); }
int64_t grain_for(int64_t elems_per_item) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, elems_per_item));
}

// ---- statistics -----------------------------------------------------------------------

template <typename T>
void stats_rows(int64_t N, int64_t C, int64_t S, const T* x, T* mean, T* var) {
  const auto& k = block_kernels<T>();
  const int64_t nb = blocks_per_row(S);
  auto finish = [&](int64_t c, const Moments& m) {
    mean[c] = T(m.count ? m.mean : 0);
    var[c] = T(m.count ? m.m2 / m.count : 0);
  };
  // Blocks in memory order (the prefetchers like one long stream; splitting by channel, or
  // walking backwards for L3 reuse, measured 1.3-2x slower), then a per-channel merge.
  const int64_t tiles = N * C * nb;
  std::vector<T> tile_mean(tiles), tile_m2(tiles);
  parallel_for(tiles, grain_for(std::min(S, kBlock)), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t row = t / nb, b = t % nb;
      k.moments(x + row * S + b * kBlock, block_len(S, b), &tile_mean[t], &tile_m2[t]);
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    Moments m;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t t = (n * C + c) * nb + b;
        m.add(double(block_len(S, b)), double(tile_mean[t]), double(tile_m2[t]));
      }
    finish(c, m);
  }
}

// Short rows: x as an [N, C*S] matrix, per-column sums in double (vectorised over columns),
// two passes (the data of these shapes is small).
template <typename T>
void stats_columns(int64_t N, int64_t C, int64_t S, const T* x, T* mean, T* var) {
  const int64_t CS = C * S;
  parallel_for(C, grain_for(N * S), [&](int64_t c0, int64_t c1) {
    const int64_t col0 = c0 * S, cols = (c1 - c0) * S;
    std::vector<double> acc(cols, 0.0), col_mean(cols);
    for (int64_t n = 0; n < N; ++n) {
      const T* row = x + n * CS + col0;
      for (int64_t j = 0; j < cols; ++j) acc[j] += double(row[j]);
    }
    const double count = double(N * S);
    for (int64_t c = c0; c < c1; ++c) {
      double total = 0;
      for (int64_t s = 0; s < S; ++s) total += acc[(c - c0) * S + s];
      const double m = count ? total / count : 0;
      mean[c] = T(m);
      for (int64_t s = 0; s < S; ++s) col_mean[(c - c0) * S + s] = m;
    }
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t n = 0; n < N; ++n) {
      const T* row = x + n * CS + col0;
      for (int64_t j = 0; j < cols; ++j) {
        const double d = double(row[j]) - col_mean[j];
        acc[j] += d * d;
      }
    }
    for (int64_t c = c0; c < c1; ++c) {
      double total = 0;
      for (int64_t s = 0; s < S; ++s) total += acc[(c - c0) * S + s];
      var[c] = T(count ? total / count : 0);
    }
  });
}

}  // namespace

template <typename T>
void batch_norm_stats(int64_t N, int64_t C, int64_t S, const T* x, T* mean, T* var, T* invstd, double eps) {
  if (C <= 0) return;
  if (S >= kMinRow)
    stats_rows(N, C, S, x, mean, var);
  else
    stats_columns(N, C, S, x, mean, var);
  // Here rather than as two tensor ops in Python, whose dispatch cost more than this loop.
  if (invstd)
    for (int64_t c = 0; c < C; ++c) invstd[c] = T(1) / std::sqrt(var[c] + T(eps));
}

// ---- apply --------------------------------------------------------------------------------

template <typename T>
void batch_norm_apply(int64_t N, int64_t C, int64_t S, const T* x, const T* mean,
                      const T* invstd, const T* weight, const T* bias, const T* residual, bool act,
                      T* y) {
  if (N * C * S == 0) return;
  advise_huge_pages(y, size_t(N * C * S) * sizeof(T));
  std::vector<T> scale(C), shift(C);
  for (int64_t c = 0; c < C; ++c) {
    scale[c] = invstd[c] * (weight ? weight[c] : T(1));
    shift[c] = bias ? bias[c] : T(0);
  }
  if (S >= kMinRow) {
    const auto& k = block_kernels<T>();
    const int64_t nb = blocks_per_row(S);
    // Plain memory order. (Walking the blocks backwards so that the end of x, which stats read
    // last, would still be in L3 measured 2x slower: the prefetchers lose the stream.)
    parallel_for(N * C * nb, grain_for(std::min(S, kBlock)), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t % nb, row = t / nb, c = row % C;
        const int64_t off = row * S + b * kBlock;
        k.affine(x + off, residual ? residual + off : nullptr, act, block_len(S, b), mean[c], scale[c],
                 shift[c], y + off);
      }
    });
    return;
  }
  const int64_t CS = C * S;
  std::vector<T> col_mean(CS), col_scale(CS), col_shift(CS);
  for (int64_t j = 0; j < CS; ++j) {
    col_mean[j] = mean[j / S];
    col_scale[j] = scale[j / S];
    col_shift[j] = shift[j / S];
  }
  parallel_for(N, grain_for(CS), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const T* xr = x + n * CS;
      const T* rr = residual ? residual + n * CS : nullptr;
      T* yr = y + n * CS;
      for (int64_t j = 0; j < CS; ++j) yr[j] = (xr[j] - col_mean[j]) * col_scale[j] + col_shift[j];
      if (rr)
        for (int64_t j = 0; j < CS; ++j) yr[j] += rr[j];
      if (act)
        for (int64_t j = 0; j < CS; ++j) yr[j] = relu(yr[j]);
    }
  });
}

// running = (1 - momentum) * running + momentum * batch statistic (the variance times `unbias`,
// n / (n - 1)), computed in double: torch.nn.BatchNorm's update, in one call instead of four
// tensor ops whose dispatch costs more than the arithmetic.
template <typename T>
void batch_norm_update_running(int64_t C, const T* mean, const T* var, double momentum, double unbias,
                               T* running_mean, T* running_var) {
  for (int64_t c = 0; c < C; ++c) {
    running_mean[c] = T((1.0 - momentum) * double(running_mean[c]) + momentum * double(mean[c]));
    running_var[c] = T((1.0 - momentum) * double(running_var[c]) + momentum * unbias * double(var[c]));
  }
}

// ---- backward -----------------------------------------------------------------------------
//
// With xhat = (x - mean) * invstd, M = N * S values per channel:
//   gb = sum gy,   gw = invstd * sum gy (x - mean)
//   training: gx = w invstd (gy - gb / M - xhat * (gw / M))
//             = (gy - gb / M) * k_gy + (x - mean) * k_x,  k_gy = w invstd,
//                                                         k_x = -w invstd^3 sum gy (x - mean) / M
//   eval:     gx = gy * w * invstd  (mean and invstd are constants)
// After a fused ReLU with output y, gy above is the gradient behind it, relu_grad(gy, y): masked
// while the sums are read (and stored as ga, the residual's gradient, when asked for), then
// either re-masked on the fly or read back from ga for gx: no separate pass over memory.

namespace {

struct ChannelGradCoefs {
  double gy_mean, k_gy, k_x;
};

template <typename T>
ChannelGradCoefs grad_coefs(double sum_gy, double sum_gy_xm, double count, double w, double invstd,
                            bool training) {
  if (!training || count == 0) return {0.0, w * invstd, 0.0};
  return {sum_gy / count, w * invstd, -w * invstd * invstd * invstd * sum_gy_xm / count};
}

template <typename T>
void backward_rows(int64_t N, int64_t C, int64_t S, const T* x, const T* gy, const T* y, const T* mean,
                   const T* invstd, const T* weight, bool training, T* gx, T* gw, T* gb, T* ga) {
  const auto& k = block_kernels<T>();
  const int64_t nb = blocks_per_row(S);
  const bool need_sums = (gx && training) || gw || gb || ga;
  // The sums of one block (element offset off), through the ReLU when there is one.
  auto block_sums = [&](int64_t off, int64_t len, T m, T* sa, T* sb) {
    if (y)
      k.grad_sums_relu(x + off, gy + off, y + off, ga ? ga + off : nullptr, len, m, sa, sb);
    else
      k.grad_sums(x + off, gy + off, len, m, sa, sb);
  };
  const double count = double(N * S);

  auto finish_channel = [&](int64_t c, double sum_gy, double sum_gy_xm) {
    if (gb) gb[c] = T(sum_gy);
    if (gw) gw[c] = T(sum_gy_xm * double(invstd[c]));
    return grad_coefs<T>(sum_gy, sum_gy_xm, count, weight ? double(weight[c]) : 1.0,
                         double(invstd[c]), training);
  };
  auto grad_input_block = [&](int64_t n, int64_t c, int64_t blk, const ChannelGradCoefs& g) {
    const int64_t off = (n * C + c) * S + blk * kBlock;
    if (y && !ga)
      k.grad_input_relu(x + off, gy + off, y + off, block_len(S, blk), mean[c], T(g.gy_mean), T(g.k_gy),
                        T(g.k_x), gx + off);
    else  // ga holds the masked gradient (stored by the sums' pass)
      k.grad_input(x + off, (ga ? ga : gy) + off, block_len(S, blk), mean[c], T(g.gy_mean), T(g.k_gy),
                   T(g.k_x), gx + off);
  };

  if (gx) advise_huge_pages(gx, size_t(N * C * S) * sizeof(T));
  const int64_t threads = get_num_threads();
  if (C >= 2 * threads) {
    // Fused per group of G adjacent channels: the sums, then gx while the group's x and gy
    // are still in L2/L3 (G * 1 MiB for the benchmark). Adjacent channels make each sample's
    // part one contiguous run of G * S elements, which the prefetchers stream well.
    const int64_t G = std::max<int64_t>(1, std::min<int64_t>(kGroupBytes / (S * int64_t(sizeof(T))),
                                                             C / (2 * threads)));
    const int64_t groups = (C + G - 1) / G;
    parallel_for(groups, 1, [&](int64_t g0, int64_t g1) {
      std::vector<double> sum_gy(G), sum_gy_xm(G);
      std::vector<ChannelGradCoefs> coefs(G);
      for (int64_t grp = g0; grp < g1; ++grp) {
        const int64_t cb = grp * G, ce = std::min(C, cb + G);
        std::fill(sum_gy.begin(), sum_gy.end(), 0.0);
        std::fill(sum_gy_xm.begin(), sum_gy_xm.end(), 0.0);
        if (need_sums)
          for (int64_t n = 0; n < N; ++n)
            for (int64_t c = cb; c < ce; ++c)
              for (int64_t blk = 0; blk < nb; ++blk) {
                T sa, sb;
                block_sums((n * C + c) * S + blk * kBlock, block_len(S, blk), mean[c], &sa, &sb);
                sum_gy[c - cb] += double(sa);
                sum_gy_xm[c - cb] += double(sb);
              }
        for (int64_t c = cb; c < ce; ++c) coefs[c - cb] = finish_channel(c, sum_gy[c - cb], sum_gy_xm[c - cb]);
        if (gx)
          for (int64_t n = 0; n < N; ++n)
            for (int64_t c = cb; c < ce; ++c)
              for (int64_t blk = 0; blk < nb; ++blk) grad_input_block(n, c, blk, coefs[c - cb]);
      }
    });
    return;
  }
  // Few channels: blocks of all channels in parallel, merged per channel in a fixed order.
  const int64_t tiles = N * C * nb;
  const int64_t grain = grain_for(std::min(S, kBlock));
  std::vector<ChannelGradCoefs> coefs(C);
  if (need_sums) {
    std::vector<T> tile_a(tiles), tile_b(tiles);
    parallel_for(tiles, grain, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t row = t / nb, blk = t % nb;
        block_sums(row * S + blk * kBlock, block_len(S, blk), mean[row % C], &tile_a[t], &tile_b[t]);
      }
    });
    for (int64_t c = 0; c < C; ++c) {
      double a = 0, b = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t blk = 0; blk < nb; ++blk) {
          a += double(tile_a[(n * C + c) * nb + blk]);
          b += double(tile_b[(n * C + c) * nb + blk]);
        }
      coefs[c] = finish_channel(c, a, b);
    }
  } else {
    for (int64_t c = 0; c < C; ++c) coefs[c] = finish_channel(c, 0, 0);
  }
  if (gx)
    parallel_for(tiles, grain, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t row = t / nb;
        grad_input_block(row / C, row % C, t % nb, coefs[row % C]);
      }
    });
}

template <typename T>
void backward_columns(int64_t N, int64_t C, int64_t S, const T* x, const T* gy, const T* mean,
                      const T* invstd, const T* weight, bool training, T* gx, T* gw, T* gb) {
  const int64_t CS = C * S;
  const bool need_sums = (gx && training) || gw || gb;
  const double count = double(N * S);
  parallel_for(C, grain_for(N * S), [&](int64_t c0, int64_t c1) {
    const int64_t col0 = c0 * S, cols = (c1 - c0) * S;
    std::vector<double> acc_gy(cols, 0.0), acc_gy_xm(cols, 0.0);
    std::vector<T> col_mean(cols), col_gy_mean(cols), col_k_gy(cols), col_k_x(cols);
    for (int64_t j = 0; j < cols; ++j) col_mean[j] = mean[c0 + j / S];
    if (need_sums)
      for (int64_t n = 0; n < N; ++n) {
        const T* xr = x + n * CS + col0;
        const T* gr = gy + n * CS + col0;
        for (int64_t j = 0; j < cols; ++j) {
          acc_gy[j] += double(gr[j]);
          acc_gy_xm[j] += double(gr[j]) * (double(xr[j]) - double(col_mean[j]));
        }
      }
    for (int64_t c = c0; c < c1; ++c) {
      double a = 0, b = 0;
      for (int64_t s = 0; s < S; ++s) {
        a += acc_gy[(c - c0) * S + s];
        b += acc_gy_xm[(c - c0) * S + s];
      }
      if (gb) gb[c] = T(a);
      if (gw) gw[c] = T(b * double(invstd[c]));
      const ChannelGradCoefs g = grad_coefs<T>(a, b, count, weight ? double(weight[c]) : 1.0,
                                               double(invstd[c]), training);
      for (int64_t s = 0; s < S; ++s) {
        const int64_t j = (c - c0) * S + s;
        col_gy_mean[j] = T(g.gy_mean);
        col_k_gy[j] = T(g.k_gy);
        col_k_x[j] = T(g.k_x);
      }
    }
    if (gx)
      for (int64_t n = 0; n < N; ++n) {
        const T* xr = x + n * CS + col0;
        const T* gr = gy + n * CS + col0;
        T* out = gx + n * CS + col0;
        for (int64_t j = 0; j < cols; ++j)
          out[j] = (gr[j] - col_gy_mean[j]) * col_k_gy[j] + (xr[j] - col_mean[j]) * col_k_x[j];
      }
  });
}

}  // namespace

template <typename T>
void batch_norm_backward(int64_t N, int64_t C, int64_t S, const T* x, const T* gy, const T* y,
                         const T* mean, const T* invstd, const T* weight, bool training, T* gx,
                         T* gw, T* gb, T* ga) {
  if (C <= 0) return;
  if (N * S == 0) {  // empty reduction: zero parameter gradients, gx is empty
    for (int64_t c = 0; c < C; ++c) {
      if (gw) gw[c] = T(0);
      if (gb) gb[c] = T(0);
    }
    return;
  }
  if (S >= kMinRow)
    return backward_rows(N, C, S, x, gy, y, mean, invstd, weight, training, gx, gw, gb, ga);
  if (y) {  // short rows (small data): the gradient behind the ReLU first, then as without one
    std::vector<T> masked(ga ? 0 : size_t(N * C * S));
    T* g = ga ? ga : masked.data();
    parallel_for(N * C * S, kGrainElems, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) g[i] = relu_grad(gy[i], y[i]);
    });
    return backward_columns(N, C, S, x, static_cast<const T*>(g), mean, invstd, weight, training, gx, gw, gb);
  }
  backward_columns(N, C, S, x, gy, mean, invstd, weight, training, gx, gw, gb);
}

#define PYCNN_INSTANTIATE(T)                                                                   \
  template void batch_norm_stats<T>(int64_t, int64_t, int64_t, const T*, T*, T*, T*, double);  \
  template void batch_norm_apply<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*,   \
                                    const T*, const T*, const T*, bool, T*);                   \
  template void batch_norm_update_running<T>(int64_t, const T*, const T*, double, double, T*, T*); \
  template void batch_norm_backward<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*, \
                                       const T*, const T*, const T*, bool, T*, T*, T*, T*);
PYCNN_INSTANTIATE(float)
PYCNN_INSTANTIATE(double)
#undef PYCNN_INSTANTIATE

}  // namespace pycnn::cpu::PYCNN_ISA

PYCNN_TARGET_END
