// Index math of im2col / col2im / depthwise / pooling, as __host__ __device__ functions so the
// same code the kernels run can be checked on a machine without a GPU (csrc/cuda/host_check).
#pragma once
#include <cmath>
#include <cstdint>

#include "common/shapes.h"

#ifdef __CUDACC__
#define PYCNN_HD __host__ __device__ __forceinline__
#else
#define PYCNN_HD inline
#endif

namespace pycnn::cuda {

// A register vector of V elements loaded/stored with one instruction when 16-byte aligned.
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};


// Convolution geometry in index type I (int32 when every flat index fits: faster division).
template <typename I>
struct ConvGeom {
  I C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw;
  static ConvGeom from(const Conv2dShape& s) {
    return {I(s.C), I(s.H), I(s.W), I(s.OH), I(s.OW), I(s.kh), I(s.kw),
            I(s.sh), I(s.sw), I(s.ph), I(s.pw), I(s.dh), I(s.dw)};
  }
};

// The output rows/cols whose window tap (i, j) lands on input pixel (h, w): oh * sh - ph + i * dh
// == h. Returns -1 when there is none. Used by every gather-style backward.
template <typename I>
PYCNN_HD I source_of(I h, I pad, I tap, I dil, I stride, I out_size) {
  const I hh = h + pad - tap * dil;
  if (hh < 0 || hh % stride != 0) return -1;
  const I o = hh / stride;
  return o < out_size ? o : I(-1);
}

// im2col for one (b, c, oh, ow): writes the kh*kw column entries of that output position.
// col holds per sample [C * kh * kw, OH * OW], row (c * kh + i) * kw + j.
template <typename T, typename I>
PYCNN_HD void im2col_element(const ConvGeom<I>& g, I idx, const T* x, T* col) {
  const I ow = idx % g.OW;
  I t = idx / g.OW;
  const I oh = t % g.OH;
  t /= g.OH;  // t = b * C + c
  const I L = g.OH * g.OW;
  const T* xp = x + t * g.H * g.W;
  T* cp = col + t * g.kh * g.kw * L + oh * g.OW + ow;
  for (I i = 0; i < g.kh; ++i) {
    const I ih = oh * g.sh - g.ph + i * g.dh;
    const bool row_ok = ih >= 0 && ih < g.H;
    for (I j = 0; j < g.kw; ++j) {
      const I iw = ow * g.sw - g.pw + j * g.dw;
      cp[(i * g.kw + j) * L] = (row_ok && iw >= 0 && iw < g.W) ? xp[ih * g.W + iw] : T(0);
    }
  }
}

// col2im as a gather: input pixel idx = ((b * C + c) * H + h) * W + w sums, in fixed (i, j)
// order, the column entries that im2col copied from it. No atomics, same bits every run.
template <typename T, typename I>
PYCNN_HD T col2im_element(const ConvGeom<I>& g, I idx, const T* col) {
  const I w = idx % g.W;
  I t = idx / g.W;
  const I h = t % g.H;
  t /= g.H;  // b * C + c
  const I L = g.OH * g.OW;
  const T* cp = col + t * g.kh * g.kw * L;
  T sum = T(0);
  for (I i = 0; i < g.kh; ++i) {
    const I oh = source_of(h, g.ph, i, g.dh, g.sh, g.OH);
    if (oh < 0) continue;
    for (I j = 0; j < g.kw; ++j) {
      const I ow = source_of(w, g.pw, j, g.dw, g.sw, g.OW);
      if (ow < 0) continue;
      sum += cp[(i * g.kw + j) * L + oh * g.OW + ow];
    }
  }
  return sum;
}

// ---- depthwise (groups == C, K = C * mult, weight [K, 1, kh, kw]) ---------------------------

// y[n, k, oh, ow] for flat output index idx, reading input channel k / mult.
template <typename T, typename I>
PYCNN_HD T depthwise_forward_element(const ConvGeom<I>& g, I K, I mult, I idx, const T* x,
                                     const T* w, const T* bias) {
  const I ow = idx % g.OW;
  I t = idx / g.OW;
  const I oh = t % g.OH;
  t /= g.OH;  // n * K + k
  const I k = t % K, n = t / K;
  const T* xp = x + (n * g.C + k / mult) * g.H * g.W;
  const T* wp = w + k * g.kh * g.kw;
  T sum = bias ? bias[k] : T(0);
  for (I i = 0; i < g.kh; ++i) {
    const I ih = oh * g.sh - g.ph + i * g.dh;
    if (ih < 0 || ih >= g.H) continue;
    for (I j = 0; j < g.kw; ++j) {
      const I iw = ow * g.sw - g.pw + j * g.dw;
      if (iw < 0 || iw >= g.W) continue;
      sum += xp[ih * g.W + iw] * wp[i * g.kw + j];
    }
  }
  return sum;
}

// gx[n, c, h, w] as a gather over the mult output channels of c and the taps that read (h, w).
template <typename T, typename I>
PYCNN_HD T depthwise_input_grad_element(const ConvGeom<I>& g, I mult, I idx, const T* gy,
                                        const T* w) {
  const I iw = idx % g.W;
  I t = idx / g.W;
  const I ih = t % g.H;
  t /= g.H;  // n * C + c: the output channels of c are t * mult .. t * mult + mult - 1
  const I c = t % g.C;
  const I L = g.OH * g.OW;
  T sum = T(0);
  for (I m = 0; m < mult; ++m) {
    const T* gp = gy + (t * mult + m) * L;
    const T* wp = w + (c * mult + m) * g.kh * g.kw;
    for (I i = 0; i < g.kh; ++i) {
      const I oh = source_of(ih, g.ph, i, g.dh, g.sh, g.OH);
      if (oh < 0) continue;
      for (I j = 0; j < g.kw; ++j) {
        const I ow = source_of(iw, g.pw, j, g.dw, g.sw, g.OW);
        if (ow < 0) continue;
        sum += gp[oh * g.OW + ow] * wp[i * g.kw + j];
      }
    }
  }
  return sum;
}

// One term of gw[k, i, j] = sum over e = n * OH * OW + oh * OW + ow of gy[n, k, oh, ow] * x[n, c,
// oh*sh - ph + i*dh, ow*sw - pw + j*dw] (zero where the tap falls in the padding).
template <typename T, typename I>
PYCNN_HD T depthwise_weight_term(const ConvGeom<I>& g, I K, I mult, I k, I i, I j, I e,
                                 const T* x, const T* gy) {
  const I L = g.OH * g.OW;
  const I n = e / L, l = e - n * L;
  const I oh = l / g.OW, ow = l - oh * g.OW;
  const I ih = oh * g.sh - g.ph + i * g.dh, iw = ow * g.sw - g.pw + j * g.dw;
  if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return T(0);
  return gy[(n * K + k) * L + l] * x[((n * g.C + k / mult) * g.H + ih) * g.W + iw];
}

// ---- max pooling over planes of H x W ---------------------------------------------------------

// First tap at or after `start` (negative: in the padding) that is not in the leading padding.
template <typename I>
PYCNN_HD I first_tap_not_before_zero(I start, I dil) {
  return start >= 0 ? start : start + ((-start + dil - 1) / dil) * dil;
}

template <typename I>
struct PoolGeom {
  I planes, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw;
  // Some window's columns all lie in the padding (dilation wider than the input): its index
  // h0 * W + w0 (see max_pool_element) can alias an in-plane pixel outside the window, which
  // the CPU kernel and torch's CPU kernel credit with that window's gradient. The gather then
  // scans every window of the plane so that CUDA does the same.
  bool dead_columns;
  static PoolGeom from(const Pool2dShape& s) {
    bool dead = false;
    for (int64_t ow = 0; ow < s.OW && !dead; ++ow)
      dead = first_tap_not_before_zero<int64_t>(ow * s.sw - s.pw, s.dw) >= s.W;
    return {I(s.planes), I(s.H), I(s.W), I(s.OH), I(s.OW), I(s.kh), I(s.kw),
            I(s.sh), I(s.sw), I(s.ph), I(s.pw), I(s.dh), I(s.dw), dead};
  }
};

// The max of one window and its flat position h * W + w, exactly as torch picks it (on CPU and
// CUDA alike): the scan goes row by row, a larger value or any NaN takes over (so the first
// maximum wins a tie and the last NaN wins over everything). The position starts at the first
// row and column tap past the leading padding, so a window of -inf reports its first in-bounds
// tap, and a window made only of padding (dilation larger than the input) reports that start
// position, h0 * W + w0, as torch does, although it lies outside the window (often outside the
// plane) and its value is -inf.
template <typename T, typename I>
PYCNN_HD void max_pool_element(const PoolGeom<I>& g, I idx, const T* x, T* y, int64_t* indices) {
  const I ow = idx % g.OW;
  I t = idx / g.OW;
  const I oh = t % g.OH;
  const I plane = t / g.OH;
  const T* xp = x + plane * g.H * g.W;
  T best = -T(INFINITY);
  const I h_start = oh * g.sh - g.ph, w_start = ow * g.sw - g.pw;
  int64_t arg = int64_t(first_tap_not_before_zero(h_start, g.dh)) * g.W + first_tap_not_before_zero(w_start, g.dw);
  for (I i = 0; i < g.kh; ++i) {
    const I ih = h_start + i * g.dh;
    if (ih < 0 || ih >= g.H) continue;
    for (I j = 0; j < g.kw; ++j) {
      const I iw = w_start + j * g.dw;
      if (iw < 0 || iw >= g.W) continue;
      const I pos = ih * g.W + iw;
      const T v = xp[pos];
      if (v > best || v != v) {
        best = v;
        arg = pos;
      }
    }
  }
  y[idx] = best;
  indices[idx] = arg;
}

// gx at flat input index idx = plane * H * W + h * W + w: the sum of gy over the windows whose
// argmax is this pixel, visited in (oh, ow) order. A gather: no atomics, same bits every run.
template <typename T, typename I>
PYCNN_HD T max_pool_grad_element(const PoolGeom<I>& g, I idx, const T* gy, const int64_t* indices) {
  const I HW = g.H * g.W;
  const I plane = idx / HW, pos = idx - plane * HW;
  const I h = pos / g.W, w = pos - h * g.W;
  // Windows covering h: oh * sh - ph <= h <= oh * sh - ph + (kh - 1) * dh.
  const I top = h + g.ph - (g.kh - 1) * g.dh, left = w + g.pw - (g.kw - 1) * g.dw;
  const I oh_lo = top <= 0 ? I(0) : (top + g.sh - 1) / g.sh;
  const I ow_lo = left <= 0 ? I(0) : (left + g.sw - 1) / g.sw;
  const I oh_hi = (h + g.ph) / g.sh < g.OH - 1 ? (h + g.ph) / g.sh : g.OH - 1;
  const I ow_hi = (w + g.pw) / g.sw < g.OW - 1 ? (w + g.pw) / g.sw : g.OW - 1;
  const I out_base = plane * g.OH * g.OW;
  T sum = T(0);
  if (g.dead_columns) {  // degenerate geometry (see PoolGeom): every window, in output order
    for (I o = out_base; o < out_base + g.OH * g.OW; ++o)
      if (indices[o] == int64_t(pos)) sum += gy[o];
    return sum;
  }
  for (I oh = oh_lo; oh <= oh_hi; ++oh)
    for (I ow = ow_lo; ow <= ow_hi; ++ow) {
      const I o = out_base + oh * g.OW + ow;
      if (indices[o] == int64_t(pos)) sum += gy[o];
    }
  return sum;
}

}  // namespace pycnn::cuda
