// conv2d by im2col + GEMM, and its two gradients (conv_transpose2d's forward is the input one).
//
// Per sample and group g (Cg = C/groups input channels, Kg = K/groups outputs, P = OH*OW):
//   forward        y_g  [Kg, P]        = W_g [Kg, Cg*kh*kw] @ col_g [Cg*kh*kw, P]
//   input grad     col_g               = W_g^T @ gy_g, then col2im(col) -> gx
//   weight grad    gW_g               += gy_g @ col_g^T          (summed over the batch)
// col is im2col(x) for one sample: all groups stacked, C*kh*kw rows of P columns. The batch is
// processed in chunks of whole samples whose columns fit the caller's workspace; a pointwise
// conv (1x1, stride 1, no padding) uses x itself as its column matrix and needs none.
//
// Threads: each thread takes whole samples in its own workspace slot (im2col + GEMM for one
// sample stay in that core's cache, and the GEMM runs single-threaded inside), so the
// workspace needs only one sample's columns per thread; leftover samples run one at a time with im2col/col2im split over channels and the
// GEMM's own parallelism. The weight gradient sums samples in batch order, one sample's columns
// at a time, with im2col and the GEMM parallel inside, so it is the same whatever the thread
// count (per-thread partial sums would change the rounding with it). col2im is a scatter, but each
// input channel plane belongs to one thread and is summed in a fixed order: deterministic.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common/parallel.h"
#include "cpu/kernels.h"

namespace pycnn::cpu {
namespace {

int64_t ceil_div_nonneg(int64_t a, int64_t b) { return a <= 0 ? 0 : (a + b - 1) / b; }

// Output columns ow whose input column ow*sw + off lies in [0, W): [lo, hi) within [0, OW).
struct ColumnRange {
  int64_t lo, hi;
};
// (ow >= ceil(-off/sw) gives w >= 0; ow < ceil((W-off)/sw) gives ow*sw < W-off, so w < W.)
ColumnRange valid_columns(int64_t off, int64_t W, int64_t sw, int64_t OW) {
  const int64_t hi = std::min(OW, ceil_div_nonneg(W - off, sw));
  return {std::min(hi, ceil_div_nonneg(-off, sw)), hi};
}

// col[(c*kh + i)*kw + j][oh*OW + ow] = x[c][oh*sh - ph + i*dh][ow*sw - pw + j*dw], 0 outside,
// for channels [c0, c1) of one sample x [C, H, W].
template <typename T>
void im2col(const Conv2dShape& s, const T* x, int64_t c0, int64_t c1, T* col) {
  const int64_t P = s.OH * s.OW;
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t i = 0; i < s.kh; ++i) {
      for (int64_t j = 0; j < s.kw; ++j) {
        T* row = col + ((c * s.kh + i) * s.kw + j) * P;
        const int64_t off = j * s.dw - s.pw;
        const ColumnRange r = valid_columns(off, s.W, s.sw, s.OW);
        for (int64_t oh = 0; oh < s.OH; ++oh) {
          T* dst = row + oh * s.OW;
          const int64_t h = oh * s.sh - s.ph + i * s.dh;
          if (h < 0 || h >= s.H) {
            std::fill(dst, dst + s.OW, T(0));
            continue;
          }
          const T* src = x + (c * s.H + h) * s.W;  // src[ow * sw + off] for ow in [lo, hi)
          std::fill(dst, dst + r.lo, T(0));
          if (s.sw == 1) {
            if (r.hi > r.lo) std::memcpy(dst + r.lo, src + r.lo + off, sizeof(T) * (r.hi - r.lo));
          } else {
            for (int64_t ow = r.lo; ow < r.hi; ++ow) dst[ow] = src[ow * s.sw + off];
          }
          std::fill(dst + r.hi, dst + s.OW, T(0));
        }
      }
    }
  }
}

// The adjoint of im2col for channels [c0, c1): each gx plane is zeroed, then every column entry
// is added to the pixel it was read from, in (i, j, oh, ow) order.
template <typename T>
void col2im(const Conv2dShape& s, const T* col, int64_t c0, int64_t c1, T* gx) {
  const int64_t P = s.OH * s.OW;
  for (int64_t c = c0; c < c1; ++c) {
    T* plane = gx + c * s.H * s.W;
    std::fill(plane, plane + s.H * s.W, T(0));
    for (int64_t i = 0; i < s.kh; ++i) {
      for (int64_t j = 0; j < s.kw; ++j) {
        const T* row = col + ((c * s.kh + i) * s.kw + j) * P;
        const int64_t off = j * s.dw - s.pw;
        const ColumnRange r = valid_columns(off, s.W, s.sw, s.OW);
        for (int64_t oh = 0; oh < s.OH; ++oh) {
          const int64_t h = oh * s.sh - s.ph + i * s.dh;
          if (h < 0 || h >= s.H) continue;
          T* dst = plane + h * s.W;  // dst[ow * sw + off] for ow in [lo, hi)
          const T* src = row + oh * s.OW;
          for (int64_t ow = r.lo; ow < r.hi; ++ow) dst[ow * s.sw + off] += src[ow];
        }
      }
    }
  }
}

// Samples whose columns fit the workspace at once (all of them for pointwise convs).
int64_t workspace_slots(const Conv2dShape& s, int64_t ws_elems, const char* op) {
  if (s.is_pointwise()) return s.N;
  const int64_t per_sample = s.C * s.kh * s.kw * s.OH * s.OW;
  if (per_sample == 0) return s.N;
  if (ws_elems < per_sample)
    throw std::invalid_argument(std::string(op) + ": workspace of " + std::to_string(ws_elems) +
                                " elements is smaller than one sample's columns (" +
                                std::to_string(per_sample) + ")");
  return std::max<int64_t>(1, std::min(s.N, ws_elems / per_sample));
}

// Runs sample_fn(n, col, inner_parallel) for every sample n, col being a one-sample slot of the
// workspace. The batch goes in chunks of `lanes` samples, one slot and one thread per lane:
// lane t works through its own run of N / lanes samples. Samples left over run one at a
// time with the parallelism inside (im2col over channels, the GEMM's own threads).
template <typename T, typename F>
void for_samples(int64_t N, int64_t slots, T* ws, int64_t per_sample, F&& sample_fn) {
  const int64_t lanes = std::min<int64_t>(get_num_threads(), slots);
  const int64_t per_lane = lanes > 1 ? N / lanes : 0;
  if (per_lane > 0) {
    parallel_for(lanes, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t)
        for (int64_t n = t * per_lane; n < (t + 1) * per_lane; ++n) sample_fn(n, ws + t * per_sample, false);
    });
  }
  for (int64_t n = lanes * per_lane; n < N; ++n) sample_fn(n, ws, true);
}

}  // namespace

template <typename T>
void conv2d_forward(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y, T* ws,
                    int64_t ws_elems) {
  const int64_t P = s.OH * s.OW, G = s.groups, Kg = s.K_per_group();
  const int64_t rows = s.col_rows();
  if (s.N == 0 || s.K == 0 || P == 0) return;
  const bool pointwise = s.is_pointwise();
  const int64_t per_sample = pointwise ? 0 : s.C * s.kh * s.kw * P;
  const int64_t slots = workspace_slots(s, ws_elems, "conv2d_forward");

  auto sample = [&](int64_t n, T* col, bool inner_parallel) {
    const T* xs = x + n * s.C * s.H * s.W;
    T* ys = y + n * s.K * P;
    if (!pointwise) {
      if (inner_parallel)
        parallel_for(s.C, 1, [&](int64_t c0, int64_t c1) { im2col(s, xs, c0, c1, col); });
      else
        im2col(s, xs, 0, s.C, col);
    }
    const T* cols = pointwise ? xs : col;
    for (int64_t g = 0; g < G; ++g)
      gemm<T>(false, false, Kg, P, rows, T(1), w + g * Kg * rows, rows, cols + g * rows * P, P, T(0),
              ys + g * Kg * P, P);
    if (bias) {
      for (int64_t k = 0; k < s.K; ++k) {
        T* plane = ys + k * P;
        const T b = bias[k];
        for (int64_t p = 0; p < P; ++p) plane[p] += b;
      }
    }
  };
  for_samples(s.N, slots, ws, per_sample, sample);
}

template <typename T>
void conv2d_backward_input(const Conv2dShape& s, const T* gy, const T* w, T* gx, T* ws,
                           int64_t ws_elems) {
  const int64_t P = s.OH * s.OW, G = s.groups, Kg = s.K_per_group();
  const int64_t rows = s.col_rows();
  if (s.N == 0 || s.C * s.H * s.W == 0) return;
  const bool pointwise = s.is_pointwise();
  const int64_t per_sample = pointwise ? 0 : s.C * s.kh * s.kw * P;
  const int64_t slots = workspace_slots(s, ws_elems, "conv2d_backward_input");

  auto sample = [&](int64_t n, T* col, bool inner_parallel) {
    const T* gys = gy + n * s.K * P;
    T* gxs = gx + n * s.C * s.H * s.W;
    T* cols = pointwise ? gxs : col;  // pointwise: the columns are gx itself
    for (int64_t g = 0; g < G; ++g)
      gemm<T>(true, false, rows, P, Kg, T(1), w + g * Kg * rows, rows, gys + g * Kg * P, P, T(0),
              cols + g * rows * P, P);
    if (!pointwise) {
      if (inner_parallel)
        parallel_for(s.C, 1, [&](int64_t c0, int64_t c1) { col2im(s, col, c0, c1, gxs); });
      else
        col2im(s, col, 0, s.C, gxs);
    }
  };
  for_samples(s.N, slots, ws, per_sample, sample);
}

template <typename T>
void conv2d_backward_weight(const Conv2dShape& s, const T* x, const T* gy, T* gw, T* gb, T* ws,
                            int64_t ws_elems) {
  const int64_t P = s.OH * s.OW, G = s.groups, Kg = s.K_per_group();
  const int64_t rows = s.col_rows();
  if (gb) channel_sum<T>(s.N, s.K, P, gy, gb);
  if (!gw) return;
  if (s.N == 0 || P == 0) {  // an empty sum
    std::fill(gw, gw + s.K * rows, T(0));
    return;
  }
  // One sample at a time, its columns built right before the GEMM that reads them (they are
  // still in cache); the sum runs in batch order so the result does not depend on threads.
  workspace_slots(s, ws_elems, "conv2d_backward_weight");  // checks the workspace holds a sample
  const bool pointwise = s.is_pointwise();
  for (int64_t n = 0; n < s.N; ++n) {
    const T* xs = x + n * s.C * s.H * s.W;
    if (!pointwise) parallel_for(s.C, 1, [&](int64_t c0, int64_t c1) { im2col(s, xs, c0, c1, ws); });
    const T* cols = pointwise ? xs : ws;
    const T beta = n == 0 ? T(0) : T(1);  // the first sample overwrites gw (never read)
    for (int64_t g = 0; g < G; ++g)
      gemm<T>(false, true, Kg, rows, P, T(1), gy + n * s.K * P + g * Kg * P, P, cols + g * rows * P, P, beta,
              gw + g * Kg * rows, rows);
  }
}

#define PYCNN_INSTANTIATE(T)                                                                           \
  template void conv2d_forward<T>(const Conv2dShape&, const T*, const T*, const T*, T*, T*, int64_t); \
  template void conv2d_backward_input<T>(const Conv2dShape&, const T*, const T*, T*, T*, int64_t);    \
  template void conv2d_backward_weight<T>(const Conv2dShape&, const T*, const T*, T*, T*, T*, int64_t);
PYCNN_INSTANTIATE(float)
PYCNN_INSTANTIATE(double)

}  // namespace pycnn::cpu
