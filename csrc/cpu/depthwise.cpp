// Depthwise convolution on CPU: groups == C, K = C * multiplier output channels, weight
// [K, 1, kh, kw]; output channel k reads input channel k / multiplier. Direct kernels, no im2col.
//
// Every kernel works on whole planes (one thread owns an output plane, so there are no atomics
// and results do not depend on the thread count) and, within a plane, row by row:
//   * stride 1 (forward, and backward-input, which is the same correlation with the kernel
//     flipped and padding (k - 1) * d - p): the input window the plane reads is first copied
//     into a zero-padded scratch plane (L1/L2 sized; for multiplier > 1 once for all output
//     channels), so every row and column is "interior": a compile-time KH x KW kernel (3x3,
//     5x5) accumulates in registers, vectorised over W, with no bounds checks at all; other
//     sizes use per-tap multiply-adds over whole rows. (The copy costs ~1 load + 1 store per
//     element against kh*kw FMAs, and removes the scalar border code that dominated small maps
//     such as LeNet's 28x28.)
//   * other strides: per tap, a strided multiply-add over the row's valid range.
//   * weight gradient: per (sample, input channel), the padded input plane, then per tap one
//     contiguous dot product over the whole plane (gy re-laid with the padded row stride and
//     zeros in the extra columns); planes are merged per output channel in double, in sample
//     order.
// Measured (LeNet 5x5 1->6, N=64, 1 thread): forward 0.55 ms, input gradient 0.7 ms, weight
// gradient 0.4 ms; before the padded-scratch rewrite 1.3 / 2.0 / 4.5 ms.
//
// Napkin math for the benchmark (N=32, C=64, 64x64, 3x3, float32; every tensor 32 MiB):
// forward reads x and writes y (64 MiB), backward-input reads gy and writes gx (64 MiB),
// backward-weight reads x and gy (64 MiB): 192 MiB at ~8-10 GB/s is ~20 ms. The flops (3 x 75
// MFMA) take ~3 ms on one AVX-512 core, so the kernels are memory bound; a plane (16 KiB) stays in
// L1/L2 while all its taps are applied, and for multiplier > 1 the input plane is read once
// from memory for all its output channels.
#include <algorithm>
#include <vector>

#include "common/cpu_tuning.h"
#include "common/parallel.h"
#include "cpu/kernels.h"
#include "simd/vec.h"

PYCNN_TARGET_BEGIN  // this target's instructions from here to PYCNN_TARGET_END

namespace pycnn::cpu::PYCNN_ISA {
namespace {

constexpr int64_t kGrainElems = 1 << 14;


template <typename T>
PYCNN_ALWAYS_INLINE T sum_row(const T* x, int64_t n) {
  constexpr int L = kLanes<T>;
  T acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) acc[l] += x[i + l];
  T tail = 0;
  for (; i < n; ++i) tail += x[i];
  return fold_lanes(acc) + tail;
}

// Output positions o in [0, out_size) whose input position o * stride + off is in [0, in_size):
// [*lo, *hi), clamped to [a, b).
PYCNN_ALWAYS_INLINE void valid_range(int64_t in_size, int64_t stride, int64_t off, int64_t a,
                                     int64_t b, int64_t* lo, int64_t* hi) {
  int64_t first = off >= 0 ? 0 : (-off + stride - 1) / stride;
  int64_t top = in_size - 1 - off;
  int64_t last = top < 0 ? -1 : top / stride;  // inclusive
  *lo = std::max(first, a);
  *hi = std::max(*lo, std::min(last + 1, b));
}

// Copies rows [-top, -top + PH) x columns [-left, -left + PW) of an IH x IW plane into a PH x PW
// scratch plane, zero outside the input (top/left may be negative: a window inside the input).
template <typename T>
PYCNN_ALWAYS_INLINE void pad_plane(const T* in, int64_t IH, int64_t IW, int64_t top, int64_t left,
                                   int64_t PH, int64_t PW, T* __restrict out) {
  const int64_t c_lo = std::min(PW, std::max<int64_t>(0, left));
  const int64_t c_hi = std::max(c_lo, std::min(PW, IW + left));
  for (int64_t r = 0; r < PH; ++r) {
    T* o = out + r * PW;
    const int64_t ih = r - top;
    if (ih < 0 || ih >= IH) {
      std::fill(o, o + PW, T(0));
      continue;
    }
    std::fill(o, o + c_lo, T(0));
    std::copy(in + ih * IW + (c_lo - left), in + ih * IW + (c_hi - left), o + c_lo);
    std::fill(o + c_hi, o + PW, T(0));
  }
}

// A stride-1 "valid" correlation over a (padded) plane P with row stride ldp:
//   out[oh][ow] = init + sum_{i,j} w[i][j] * P[oh + i*dh][ow + j*dw]     (accumulate: out +=)
template <typename T>
struct Correlation {
  const T* P;
  int64_t ldp;
  const T* w;  // kh * kw
  int64_t kh, kw, dh, dw;
  T* out;
  int64_t OH, OW;
};

// One 512-bit vector of T.
template <typename T>
constexpr int kVec = int(64 / sizeof(T));

// Outputs [begin, end) of one row: KH x KW taps summed in registers, vectorised over the row.
// (A helper, not a lambda: a lambda would not inherit the caller's AVX-512 target. Accumulate
// and dilation are template arguments so each loop is a plain, branch-free vector loop.)
template <typename T, int KH, int KW, bool Accumulate, bool UnitDilation>
PYCNN_ALWAYS_INLINE void correlate_fixed_span(const T* const* rows, const T* w, int64_t dw, T init,
                                              T* __restrict yr, int64_t begin, int64_t end) {
  T wl[KH * KW];
  for (int t = 0; t < KH * KW; ++t) wl[t] = w[t];
  const T* __restrict r[KH];
  for (int i = 0; i < KH; ++i) r[i] = rows[i];
  for (int64_t ow = begin; ow < end; ++ow) {
    T acc = Accumulate ? yr[ow] : init;
    for (int i = 0; i < KH; ++i)
      for (int j = 0; j < KW; ++j) acc += wl[i * KW + j] * r[i][ow + (UnitDilation ? j : j * dw)];
    yr[ow] = acc;
  }
}

template <typename T, int KH, int KW>
PYCNN_ALWAYS_INLINE void correlate_fixed_row(const T* const* rows, const T* w, int64_t dw, T init,
                                             bool accumulate, T* yr, int64_t begin, int64_t end) {
  if (accumulate) {
    if (dw == 1)
      correlate_fixed_span<T, KH, KW, true, true>(rows, w, dw, init, yr, begin, end);
    else
      correlate_fixed_span<T, KH, KW, true, false>(rows, w, dw, init, yr, begin, end);
  } else {
    if (dw == 1)
      correlate_fixed_span<T, KH, KW, false, true>(rows, w, dw, init, yr, begin, end);
    else
      correlate_fixed_span<T, KH, KW, false, false>(rows, w, dw, init, yr, begin, end);
  }
}

// KH x KW taps summed in registers, vectorised over the row.
template <typename T, int KH, int KW>
PYCNN_ALWAYS_INLINE void correlate_fixed(const Correlation<T>& c, T init, bool accumulate) {
  constexpr int V = kVec<T>;
  T w[KH * KW];
  for (int t = 0; t < KH * KW; ++t) w[t] = c.w[t];
  const int64_t dw = c.dw, OW = c.OW;
  // Whole vectors first. A row that ends in a partial vector (28 = 16 + 12 for LeNet) ends
  // with one more full vector over its last V outputs, overlapping outputs already written:
  // they are recomputed bit-identically from `init`, so this only works when not
  // accumulating; the alternative scalar epilogue cost as much as the rest of the row.
  const bool overlap_tail = !accumulate && OW > V && OW % V != 0;
  const int64_t full = overlap_tail ? OW - OW % V : OW;
  for (int64_t oh = 0; oh < c.OH; ++oh) {
    const T* rows[KH];
    for (int i = 0; i < KH; ++i) rows[i] = c.P + (oh + i * c.dh) * c.ldp;
    T* yr = c.out + oh * OW;
    correlate_fixed_row<T, KH, KW>(rows, w, dw, init, accumulate, yr, 0, full);
    if (overlap_tail) correlate_fixed_row<T, KH, KW>(rows, w, dw, init, accumulate, yr, OW - V, OW);
  }
}

// Any kernel size: one multiply-add over the whole row per tap (the row stays in L1).
template <typename T>
PYCNN_ALWAYS_INLINE void correlate_any(const Correlation<T>& c, T init, bool accumulate) {
  for (int64_t oh = 0; oh < c.OH; ++oh) {
    T* __restrict yr = c.out + oh * c.OW;
    if (!accumulate) std::fill(yr, yr + c.OW, init);
    for (int64_t i = 0; i < c.kh; ++i)
      for (int64_t j = 0; j < c.kw; ++j) {
        const T* __restrict xr = c.P + (oh + i * c.dh) * c.ldp + j * c.dw;
        const T wv = c.w[i * c.kw + j];
        for (int64_t ow = 0; ow < c.OW; ++ow) yr[ow] += wv * xr[ow];
      }
  }
}

// 3x3 (MobileNet-style blocks) and 5x5 (LeNet) get the register-blocked kernel.
template <typename T>
PYCNN_ALWAYS_INLINE void correlate_body(const Correlation<T>& c, T init, bool accumulate) {
  if (c.kh == 3 && c.kw == 3)
    correlate_fixed<T, 3, 3>(c, init, accumulate);
  else if (c.kh == 5 && c.kw == 5)
    correlate_fixed<T, 5, 5>(c, init, accumulate);
  else
    correlate_any<T>(c, init, accumulate);
}

// Dot product of two length-n vectors with independent lanes (vectorised reduction).
template <typename T>
PYCNN_ALWAYS_INLINE T dot_row(const T* __restrict a, const T* __restrict b, int64_t n) {
  constexpr int L = kLanes<T>;
  T acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) acc[l] += a[i + l] * b[i + l];
  T tail = 0;
  for (; i < n; ++i) tail += a[i] * b[i];
  return fold_lanes(acc) + tail;
}

// Stride-1 weight gradient of one (gy plane, padded x plane P) pair: out[tap] for each tap and
// out[kh*kw] = sum gy. gy is first copied into gext with P's row stride and zeros in the extra
// columns; then each tap is ONE contiguous dot product of length OH * ldp between gext and P
// shifted by the tap's offset (products that fall in the extra columns are multiplied by zero).
// Long dots vectorise fully, where per-row dots of a 24-wide LeNet map were mostly loop
// overhead. P must be followed by (kw - 1) * dw readable zeros.
template <typename T>
PYCNN_ALWAYS_INLINE void weight_grad_unit_stride_body(const T* P, int64_t ldp, const T* gyp,
                                                      int64_t OH, int64_t OW, int64_t kh,
                                                      int64_t kw, int64_t dh, int64_t dw, T* out,
                                                      T* __restrict gext) {
  for (int64_t oh = 0; oh < OH; ++oh) {
    std::copy(gyp + oh * OW, gyp + (oh + 1) * OW, gext + oh * ldp);
    std::fill(gext + oh * ldp + OW, gext + (oh + 1) * ldp, T(0));
  }
  const int64_t n = OH * ldp;
  for (int64_t i = 0; i < kh; ++i)
    for (int64_t j = 0; j < kw; ++j) out[i * kw + j] = dot_row(gext, P + i * dh * ldp + j * dw, n);
  out[kh * kw] = sum_row(gyp, OH * OW);
}

// Strided forward plane: y[oh][ow] = b + sum w[i][j] x[oh*sh - ph + i*dh][ow*sw - pw + j*dw].
template <typename T>
PYCNN_ALWAYS_INLINE void forward_plane_strided_body(const Conv2dShape& s, const T* xp,
                                                    const T* wk, T bias, T* yp) {
  for (int64_t oh = 0; oh < s.OH; ++oh) {
    T* __restrict yr = yp + oh * s.OW;
    std::fill(yr, yr + s.OW, bias);
    for (int64_t i = 0; i < s.kh; ++i) {
      const int64_t ih = oh * s.sh - s.ph + i * s.dh;
      if (ih < 0 || ih >= s.H) continue;
      const T* __restrict xr = xp + ih * s.W;
      for (int64_t j = 0; j < s.kw; ++j) {
        const int64_t off = j * s.dw - s.pw;
        int64_t lo, hi;
        valid_range(s.W, s.sw, off, 0, s.OW, &lo, &hi);
        const T wv = wk[i * s.kw + j];
        for (int64_t ow = lo; ow < hi; ++ow) yr[ow] += wv * xr[ow * s.sw + off];
      }
    }
  }
}

// Strided input-gradient plane: gx[ih][iw] (+)= w[i][j] gy[oh][ow] over the (oh, ow) that read
// (ih, iw). The plane belongs to one thread, so the row updates are race-free and ordered.
template <typename T>
PYCNN_ALWAYS_INLINE void backward_input_plane_strided_body(const Conv2dShape& s, const T* gyp,
                                                           const T* wk, T* gxp, bool accumulate) {
  for (int64_t ih = 0; ih < s.H; ++ih) {
    T* __restrict gr = gxp + ih * s.W;
    if (!accumulate) std::fill(gr, gr + s.W, T(0));
    for (int64_t i = 0; i < s.kh; ++i) {
      const int64_t t = ih + s.ph - i * s.dh;
      if (t < 0 || t % s.sh != 0 || t / s.sh >= s.OH) continue;
      const T* __restrict yr = gyp + (t / s.sh) * s.OW;
      for (int64_t j = 0; j < s.kw; ++j) {
        const int64_t off = j * s.dw - s.pw;
        int64_t lo, hi;
        valid_range(s.W, s.sw, off, 0, s.OW, &lo, &hi);
        const T wv = wk[i * s.kw + j];
        for (int64_t ow = lo; ow < hi; ++ow) gr[ow * s.sw + off] += wv * yr[ow];
      }
    }
  }
}

// Strided weight gradient of one (sample, output channel) plane: out[tap] = sum gy * x over the
// tap's valid positions, out[kh*kw] = sum gy.
template <typename T>
PYCNN_ALWAYS_INLINE void weight_grad_strided_body(const Conv2dShape& s, const T* xp, const T* gyp,
                                                  T* out) {
  for (int64_t i = 0; i < s.kh; ++i)
    for (int64_t j = 0; j < s.kw; ++j) {
      T acc = 0;
      const int64_t off = j * s.dw - s.pw;
      int64_t lo, hi;
      valid_range(s.W, s.sw, off, 0, s.OW, &lo, &hi);
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        const int64_t ih = oh * s.sh - s.ph + i * s.dh;
        if (ih < 0 || ih >= s.H) continue;
        const T* __restrict xr = xp + ih * s.W;
        const T* __restrict yr = gyp + oh * s.OW;
        for (int64_t ow = lo; ow < hi; ++ow) acc += yr[ow] * xr[ow * s.sw + off];
      }
      out[i * s.kw + j] = acc;
    }
  out[s.kh * s.kw] = sum_row(gyp, s.OH * s.OW);
}

#define PYCNN_DW_VARIANT(name, params, args) \
  template <typename T>            \
  void name params { name##_body<T> args; }

PYCNN_DW_VARIANT(correlate, (const Correlation<T>& c, T init, bool accumulate), (c, init, accumulate))
PYCNN_DW_VARIANT(forward_plane_strided, (const Conv2dShape& s, const T* x, const T* w, T b, T* y),
                 (s, x, w, b, y))
PYCNN_DW_VARIANT(backward_input_plane_strided,
                 (const Conv2dShape& s, const T* gy, const T* w, T* gx, bool accumulate),
                 (s, gy, w, gx, accumulate))
PYCNN_DW_VARIANT(weight_grad_unit_stride,
                 (const T* P, int64_t ldp, const T* gy, int64_t OH, int64_t OW, int64_t kh,
                  int64_t kw, int64_t dh, int64_t dw, T* out, T* gext),
                 (P, ldp, gy, OH, OW, kh, kw, dh, dw, out, gext))
PYCNN_DW_VARIANT(weight_grad_strided, (const Conv2dShape& s, const T* x, const T* gy, T* out),
                 (s, x, gy, out))
#undef PYCNN_DW_VARIANT

template <typename T>
struct PlaneKernels {
  void (*correlate)(const Correlation<T>&, T, bool);
  void (*forward_strided)(const Conv2dShape&, const T*, const T*, T, T*);
  void (*backward_input_strided)(const Conv2dShape&, const T*, const T*, T*, bool);
  void (*weight_grad_unit_stride)(const T*, int64_t, const T*, int64_t, int64_t, int64_t, int64_t,
                                  int64_t, int64_t, T*, T*);
  void (*weight_grad_strided)(const Conv2dShape&, const T*, const T*, T*);
};

template <typename T>
const PlaneKernels<T>& plane_kernels() {
  static const PlaneKernels<T> k =
     PlaneKernels<T>{correlate<T>, forward_plane_strided<T>,
                            backward_input_plane_strided<T>,
                            weight_grad_unit_stride<T>, weight_grad_strided<T>};
  return k;
}

bool unit_stride(const Conv2dShape& s) { return s.sh == 1 && s.sw == 1; }

// The input window a stride-1 output plane reads: rows [-top, -top + rows) and columns
// [-left, -left + cols) of the source plane. When it lies inside the source (no padding), the
// source itself is used; otherwise it is copied into a zero-padded scratch plane.
struct Window {
  int64_t top, left, rows, cols;
  bool inside(int64_t IH, int64_t IW) const {
    return top <= 0 && left <= 0 && rows - top <= IH && cols - left <= IW;
  }
};

// Scratch for a window: the plane plus zeros that row tails and shifted dots may read.
template <typename T>
int64_t window_scratch_elems(const Window& win, int64_t kw, int64_t dw) {
  return win.rows * win.cols + (kw - 1) * dw + 2 * kVec<T>;
}

template <typename T>
const T* window_plane(const T* src, int64_t IH, int64_t IW, const Window& win, bool force_copy,
                      T* scratch, int64_t* ldp) {
  if (!force_copy && win.inside(IH, IW)) {
    *ldp = IW;
    return src + (-win.top) * IW + (-win.left);
  }
  pad_plane(src, IH, IW, win.top, win.left, win.rows, win.cols, scratch);
  *ldp = win.cols;
  return scratch;
}

Window forward_window(const Conv2dShape& s) {
  return {s.ph, s.pw, (s.OH - 1) + (s.kh - 1) * s.dh + 1, (s.OW - 1) + (s.kw - 1) * s.dw + 1};
}

}  // namespace

template <typename T>
void depthwise_conv2d_forward(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y) {
  const int64_t mult = s.K / s.C, taps = s.kh * s.kw;
  const int64_t in_plane = s.H * s.W, out_plane = s.OH * s.OW;
  if (s.N * s.K * out_plane == 0) return;
  advise_huge_pages(y, size_t(s.N * s.K * out_plane) * sizeof(T));
  const auto& k = plane_kernels<T>();
  const Window win = forward_window(s);
  // One task = one input plane and its `mult` output planes (the input is read once).
  parallel_for(s.N * s.C, std::max<int64_t>(1, kGrainElems / (out_plane * mult + in_plane)),
               [&](int64_t p0, int64_t p1) {
    std::vector<T> scratch(unit_stride(s) ? window_scratch_elems<T>(win, s.kw, s.dw) : 0);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n = p / s.C, c = p % s.C;
      const T* xp = x + p * in_plane;
      int64_t ldp = 0;
      const T* P = unit_stride(s) ? window_plane(xp, s.H, s.W, win, false, scratch.data(), &ldp)
                                  : nullptr;
      for (int64_t m = 0; m < mult; ++m) {
        const int64_t ko = c * mult + m;
        T* yp = y + (n * s.K + ko) * out_plane;
        const T b = bias ? bias[ko] : T(0);
        if (unit_stride(s)) {
          k.correlate({P, ldp, w + ko * taps, s.kh, s.kw, s.dh, s.dw, yp, s.OH, s.OW}, b, false);
        } else {
          k.forward_strided(s, xp, w + ko * taps, b, yp);
        }
      }
    }
  });
}

template <typename T>
void depthwise_conv2d_backward_input(const Conv2dShape& s, const T* gy, const T* w, T* gx) {
  const int64_t mult = s.K / s.C, taps = s.kh * s.kw;
  const int64_t in_plane = s.H * s.W, out_plane = s.OH * s.OW;
  if (s.N * s.C * in_plane == 0) return;
  advise_huge_pages(gx, size_t(s.N * s.C * in_plane) * sizeof(T));
  const auto& k = plane_kernels<T>();
  // Stride 1: gx = correlation of gy with the flipped kernel and padding (k - 1) d - p, i.e.
  // the window of gy starting at row -((kh - 1) dh - ph) (negative padding is a window inside).
  std::vector<T> flipped;
  Window win{};
  if (unit_stride(s)) {
    flipped.resize(s.K * taps);
    for (int64_t ko = 0; ko < s.K; ++ko)
      for (int64_t t = 0; t < taps; ++t) flipped[ko * taps + t] = w[ko * taps + (taps - 1 - t)];
    win = {(s.kh - 1) * s.dh - s.ph, (s.kw - 1) * s.dw - s.pw, (s.H - 1) + (s.kh - 1) * s.dh + 1,
           (s.W - 1) + (s.kw - 1) * s.dw + 1};
  }
  parallel_for(s.N * s.C, std::max<int64_t>(1, kGrainElems / (out_plane * mult + in_plane)),
               [&](int64_t p0, int64_t p1) {
    std::vector<T> scratch(unit_stride(s) ? window_scratch_elems<T>(win, s.kw, s.dw) : 0);
    // multiplier > 1: each further output channel's share is computed into `term` and added
    // (the correlation kernel is fastest when it overwrites).
    std::vector<T> term(unit_stride(s) && mult > 1 ? in_plane : 0);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n = p / s.C, c = p % s.C;
      T* gxp = gx + p * in_plane;
      if (out_plane == 0) {
        std::fill(gxp, gxp + in_plane, T(0));
        continue;
      }
      for (int64_t m = 0; m < mult; ++m) {
        const int64_t ko = c * mult + m;
        const T* gyp = gy + (n * s.K + ko) * out_plane;
        if (unit_stride(s)) {
          int64_t ldp = 0;
          const T* P = window_plane(gyp, s.OH, s.OW, win, false, scratch.data(), &ldp);
          T* dst = m == 0 ? gxp : term.data();
          k.correlate({P, ldp, flipped.data() + ko * taps, s.kh, s.kw, s.dh, s.dw, dst, s.H, s.W},
                      T(0), false);
          if (m > 0)
            for (int64_t i = 0; i < in_plane; ++i) gxp[i] += term[i];
        } else {
          k.backward_input_strided(s, gyp, w + ko * taps, gxp, m > 0);
        }
      }
    }
  });
}

template <typename T>
void depthwise_conv2d_backward_weight(const Conv2dShape& s, const T* x, const T* gy, T* gw,
                                      T* gb) {
  const int64_t mult = s.K / s.C, taps = s.kh * s.kw;
  const int64_t in_plane = s.H * s.W, out_plane = s.OH * s.OW;
  if (!gw && !gb) return;
  // Per (sample, output channel) partial sums, then a per-channel merge in sample order: the
  // same answer for any thread count, and parallel even when K is 1. A task is one input plane
  // (padded once) and its `mult` output channels.
  const int64_t width = taps + 1;
  std::vector<T> partial(s.N * s.K * width, T(0));
  if (out_plane > 0) {
    const auto& k = plane_kernels<T>();
    const Window win = forward_window(s);
    parallel_for(s.N * s.C, std::max<int64_t>(1, kGrainElems / (out_plane * taps * mult)),
                 [&](int64_t p0, int64_t p1) {
      // The dots read (kw - 1) * dw past the window: always the zero-tailed scratch copy.
      std::vector<T> scratch(unit_stride(s) ? window_scratch_elems<T>(win, s.kw, s.dw) : 0);
      std::vector<T> gext(unit_stride(s) ? s.OH * win.cols : 0);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n = p / s.C, c = p % s.C;
        const T* xp = x + p * in_plane;
        int64_t ldp = 0;
        const T* P = unit_stride(s) ? window_plane(xp, s.H, s.W, win, true, scratch.data(), &ldp)
                                    : nullptr;
        for (int64_t m = 0; m < mult; ++m) {
          const int64_t ko = c * mult + m;
          const T* gyp = gy + (n * s.K + ko) * out_plane;
          T* out = partial.data() + (n * s.K + ko) * width;
          if (unit_stride(s))
            k.weight_grad_unit_stride(P, ldp, gyp, s.OH, s.OW, s.kh, s.kw, s.dh, s.dw, out,
                                      gext.data());
          else
            k.weight_grad_strided(s, xp, gyp, out);
        }
      }
    });
  }
  for (int64_t ko = 0; ko < s.K; ++ko)
    for (int64_t q = 0; q < width; ++q) {
      double total = 0;
      for (int64_t n = 0; n < s.N; ++n) total += double(partial[(n * s.K + ko) * width + q]);
      if (q < taps) {
        if (gw) gw[ko * taps + q] = T(total);
      } else if (gb) {
        gb[ko] = T(total);
      }
    }
}

#define PYCNN_INSTANTIATE(T)                                                                    \
  template void depthwise_conv2d_forward<T>(const Conv2dShape&, const T*, const T*, const T*,   \
                                            T*);                                                \
  template void depthwise_conv2d_backward_input<T>(const Conv2dShape&, const T*, const T*, T*); \
  template void depthwise_conv2d_backward_weight<T>(const Conv2dShape&, const T*, const T*, T*, \
                                                    T*);
PYCNN_INSTANTIATE(float)
PYCNN_INSTANTIATE(double)
#undef PYCNN_INSTANTIATE

}  // namespace pycnn::cpu::PYCNN_ISA

PYCNN_TARGET_END
