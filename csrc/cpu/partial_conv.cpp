// Partial convolution (Liu et al. 2018, "Image Inpainting for Irregular Holes Using Partial
// Convolutions"): a convolution that only looks at valid pixels and renormalises for the part of
// the window that was valid.
//
//   msum[n, p] = sum over the window at output p (and the mask's channels) of mask
//   ratio[n, p] = window_size / msum   where msum > 0, else 0    (window_size = MC * kh * kw)
//   y[n, k, p]  = ratio * (W (x * mask))[n, k, p] + (msum > 0 ? b[k] : 0)
//   mask_out[n, p] = msum > 0
//
// The convolution itself is conv2d_forward (conv.cpp) of x * mask: one implicit-im2col GEMM,
// the mask's part is a box sum. The mask is single-channel (MC = 1, broadcast over C) or one per
// input channel (MC = C). Its gradients, with gys = gy * ratio (the same for every k):
//   gx = mask * conv2d_backward_input(gys)      gw = conv2d_backward_weight(x * mask, gys)
//   gb[k] = sum of gy[n, k, p] where msum > 0   (the mask gets no gradient)
// Napkin math: the box sum is MC*kh*kw reads per output pixel, the GEMM C*kh*kw*K multiply-adds:
// the mask costs 1/K of the convolution (per-channel) or less.
#include <algorithm>
#include <atomic>

#include "common/parallel.h"
#include "cpu/kernels.h"
#include "simd/vec.h"

PYCNN_TARGET_BEGIN  // this target's instructions from here to PYCNN_TARGET_END

namespace pycnn::cpu::PYCNN_ISA {
namespace {

// xm[n, c] = x[n, c] * mask[n, c or 0] for samples [n0, n1); returns the flat mask position of
// the first value outside [0, 1] (NaN included) in those samples, or -1.
template <typename T>
int64_t mask_input(const Conv2dShape& s, int64_t MC, const T* x, const T* mask, T* xm, int64_t n0, int64_t n1) {
  const int64_t S = s.H * s.W;
  int64_t bad = -1;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t c = 0; c < s.C; ++c) {
      const T* m = mask + (n * MC + (MC == 1 ? 0 : c)) * S;
      const T* xp = x + (n * s.C + c) * S;
      T* d = xm ? xm + (n * s.C + c) * S : nullptr;
      if (d)
        for (int64_t i = 0; i < S; ++i) d[i] = xp[i] * m[i];
      if (bad < 0 && (MC > 1 || c == 0)) {
        for (int64_t i = 0; i < S; ++i)
          if (!(m[i] >= T(0) && m[i] <= T(1))) {
            bad = m - mask + i;
            break;
          }
      }
    }
  }
  return bad;
}

// ratio[n, p] = window_size / msum where msum > 0, else 0, for samples [n0, n1).
template <typename T>
void mask_ratio(const Conv2dShape& s, int64_t MC, const T* mask, T* ratio, int64_t n0, int64_t n1) {
  const T window = T(MC * s.kh * s.kw);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t oh = 0; oh < s.OH; ++oh) {
      T* r = ratio + (n * s.OH + oh) * s.OW;
      std::fill(r, r + s.OW, T(0));
      for (int64_t c = 0; c < MC; ++c) {
        for (int64_t i = 0; i < s.kh; ++i) {
          const int64_t h = oh * s.sh - s.ph + i * s.dh;
          if (h < 0 || h >= s.H) continue;
          const T* row = mask + ((n * MC + c) * s.H + h) * s.W;
          for (int64_t j = 0; j < s.kw; ++j) {
            const int64_t off = j * s.dw - s.pw;
            // output columns whose input column ow*sw + off is inside [0, W)
            const int64_t lo = off >= 0 ? 0 : (-off + s.sw - 1) / s.sw;
            const int64_t hi = s.W - off <= 0 ? 0 : std::min(s.OW, (s.W - off + s.sw - 1) / s.sw);
            for (int64_t ow = lo; ow < hi; ++ow) r[ow] += row[ow * s.sw + off];
          }
        }
      }
      for (int64_t ow = 0; ow < s.OW; ++ow) r[ow] = r[ow] > T(0) ? window / r[ow] : T(0);
    }
  }
}

}  // namespace

template <typename T>
int64_t partial_conv2d_forward(const Conv2dShape& s, int64_t MC, const T* x, const T* mask, const T* w,
                               const T* bias, T* y, T* mask_out, T* xm, T* ws, int64_t ws_elems) {
  std::atomic<int64_t> bad{-1};  // the lowest bad mask position over the threads' samples
  parallel_for(s.N, 1, [&](int64_t n0, int64_t n1) {
    const int64_t b = mask_input(s, MC, x, mask, xm, n0, n1);
    for (int64_t cur = bad.load(); b >= 0 && (cur < 0 || b < cur);)
      if (bad.compare_exchange_weak(cur, b)) break;
    mask_ratio(s, MC, mask, mask_out, n0, n1);
  });
  if (bad.load() >= 0) return bad.load();
  conv2d_forward<T>(s, xm, w, nullptr, y, ws, ws_elems);
  const int64_t P = s.OH * s.OW;
  parallel_for(s.N * s.K, 1, [&](int64_t b, int64_t e) {
    for (int64_t nk = b; nk < e; ++nk) {
      const int64_t n = nk / s.K, k = nk % s.K;
      const T* r = mask_out + n * P;
      T* yp = y + nk * P;
      const T bk = bias ? bias[k] : T(0);
      for (int64_t q = 0; q < P; ++q) yp[q] = r[q] > T(0) ? yp[q] * r[q] + bk : T(0);
    }
  });
  for (int64_t i = 0; i < s.N * P; ++i) mask_out[i] = mask_out[i] > T(0) ? T(1) : T(0);
  return -1;
}

template <typename T>
void partial_conv2d_backward(const Conv2dShape& s, int64_t MC, const T* x, const T* mask, const T* w, const T* gy,
                             T* gx, T* gw, T* gb, T* xm, T* gys, T* ratio, T* ws, int64_t ws_elems) {
  const int64_t P = s.OH * s.OW, S = s.H * s.W;
  parallel_for(s.N, 1, [&](int64_t n0, int64_t n1) {
    if (gw) mask_input(s, MC, x, mask, xm, n0, n1);
    mask_ratio(s, MC, mask, ratio, n0, n1);
  });
  parallel_for(s.N * s.K, 1, [&](int64_t b, int64_t e) {
    for (int64_t nk = b; nk < e; ++nk) {
      const T* r = ratio + (nk / s.K) * P;
      const T* g = gy + nk * P;
      T* d = gys + nk * P;
      for (int64_t q = 0; q < P; ++q) d[q] = g[q] * r[q];
    }
  });
  if (gb) {
    // summed in (n, p) order for every k: deterministic whatever the thread count
    parallel_for(s.K, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        T acc = T(0);
        for (int64_t n = 0; n < s.N; ++n) {
          const T* r = ratio + n * P;
          const T* g = gy + (n * s.K + k) * P;
          for (int64_t q = 0; q < P; ++q) acc += r[q] > T(0) ? g[q] : T(0);
        }
        gb[k] = acc;
      }
    });
  }
  if (gx) {
    conv2d_backward_input<T>(s, gys, w, gx, ws, ws_elems);
    parallel_for(s.N * s.C, 1, [&](int64_t b, int64_t e) {
      for (int64_t nc = b; nc < e; ++nc) {
        const int64_t n = nc / s.C, c = nc % s.C;
        const T* m = mask + (n * MC + (MC == 1 ? 0 : c)) * S;
        T* d = gx + nc * S;
        for (int64_t i = 0; i < S; ++i) d[i] *= m[i];
      }
    });
  }
  if (gw) conv2d_backward_weight<T>(s, xm, gys, gw, nullptr, ws, ws_elems);
}

#define PYCNN_INSTANTIATE(T)                                                                           \
  template int64_t partial_conv2d_forward<T>(const Conv2dShape&, int64_t, const T*, const T*, const T*, \
                                             const T*, T*, T*, T*, T*, int64_t);                        \
  template void partial_conv2d_backward<T>(const Conv2dShape&, int64_t, const T*, const T*, const T*,   \
                                           const T*, T*, T*, T*, T*, T*, T*, T*, int64_t);
PYCNN_INSTANTIATE(float)
PYCNN_INSTANTIATE(double)
#undef PYCNN_INSTANTIATE

}  // namespace pycnn::cpu::PYCNN_ISA

PYCNN_TARGET_END
