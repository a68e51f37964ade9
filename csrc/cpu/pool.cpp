// Max pooling with argmax, and max-unpooling, on CPU.
//
// Every plane (one channel of one sample) is independent, so all four kernels split the
// N * C planes across pycnn::parallel_for and walk one plane per loop iteration. That also makes
// the backward scatter deterministic: a plane's gradient is accumulated by exactly one thread,
// in the same order every time.
//
// Two forward variants, selectable for testing (llm.c style) with the environment variable
// PYCNN_POOL_KERNEL=reference:
//   reference - one window at a time, exactly torch's scan order and NaN/tie rules;
//   fast      - the same rules, vectorised (simd/vec.h, every target) for the common 2x2
//               stride-2 case; any other case (and the edges of a ceil_mode output) uses the
//               reference code.
//
// Napkin math for the perf target (float, 32 x 64 x 64 x 64 input, 2x2 stride 2):
//   forward reads 33.5 MB of x, writes 8.4 MB of y + 16.8 MB of int64 indices (~59 MB);
//   backward reads 8.4 MB gy + 16.8 MB indices, writes 33.5 MB gx (~59 MB).
//   Measured on this machine (quiet, into already-touched memory): forward ~1.5-2 ms, backward
//   ~3 ms, i.e. ~20 GB/s: bandwidth bound. torch's NCHW path is scalar with a generic dilation
//   loop (~23 ms forward), and its backward zero-fills gx in a separate pass before scattering;
//   ours zeroes each plane while it is hot in L1, right before the scatter. The remaining cost
//   is the kernel's page faults on fresh outputs: see advise_output.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common/cpu_tuning.h"
#include "common/parallel.h"
#include "cpu/kernels.h"
#include "simd/vec.h"

PYCNN_TARGET_BEGIN  // this target's instructions from here to PYCNN_TARGET_END

namespace pycnn::cpu::PYCNN_ISA {
namespace {

// Work per parallel chunk: below this many visited elements a thread hand-off costs more
// than it saves (a wake-up is ~5-20 us; 32k elements are ~10 us of scalar work).
constexpr int64_t kGrainElems = 32768;

int64_t plane_grain(int64_t elems_per_plane) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, elems_per_plane));
}

bool reference_requested() {
  const char* v = std::getenv("PYCNN_POOL_KERNEL");
  return v != nullptr && std::strcmp(v, "reference") == 0;
}

// First tap of a window that starts at `start` (may be negative: padding), stepping by
// `dilation`: taps in the padding are skipped, as torch does, so the index it reports for a
// window of all -inf is its first in-bounds tap.
inline int64_t first_valid_tap(int64_t start, int64_t dilation) {
  if (start >= 0) return start;
  return start + ((-start + dilation - 1) / dilation) * dilation;
}

// One output of max pooling: torch's rule is "take v if v > max or v is NaN", scanning rows
// then columns. So the first of equal maxima wins, and the LAST NaN in the window wins
// (checked against torch 2.13: window [1, nan, nan, 2] returns index 2).
template <typename T>
inline void pool_window(const Pool2dShape& s, const T* plane, int64_t oh, int64_t ow, T* y,
                        int64_t* index) {
  const int64_t h0 = oh * s.sh - s.ph, w0 = ow * s.sw - s.pw;
  const int64_t h_begin = first_valid_tap(h0, s.dh), w_begin = first_valid_tap(w0, s.dw);
  const int64_t h_end = std::min(h0 + (s.kh - 1) * s.dh + 1, s.H);
  const int64_t w_end = std::min(w0 + (s.kw - 1) * s.dw + 1, s.W);
  T best = -std::numeric_limits<T>::infinity();
  int64_t best_index = h_begin * s.W + w_begin;
  for (int64_t h = h_begin; h < h_end; h += s.dh) {
    const T* row = plane + h * s.W;
    for (int64_t w = w_begin; w < w_end; w += s.dw) {
      const T v = row[w];
      if (v > best || std::isnan(v)) {
        best = v;
        best_index = h * s.W + w;
      }
    }
  }
  *y = best;
  *index = best_index;
}

template <typename T>
void pool_plane_reference(const Pool2dShape& s, const T* x, T* y, int64_t* index) {
  for (int64_t oh = 0; oh < s.OH; ++oh)
    for (int64_t ow = 0; ow < s.OW; ++ow)
      pool_window(s, x, oh, ow, y + oh * s.OW + ow, index + oh * s.OW + ow);
}

bool is_2x2_stride2(const Pool2dShape& s) {
  return s.kh == 2 && s.kw == 2 && s.sh == 2 && s.sw == 2 && s.dh == 1 && s.dw == 1 &&
         s.ph == 0 && s.pw == 0 &&
         // indices are computed in 32-bit lanes, then widened
         s.H * s.W < (int64_t(1) << 31);
}

// 2x2 stride-2 pooling of one plane, L outputs per step (L = lanes of a vector). Each output
// has four candidates, scanned in torch's order (top-left, top-right, bottom-left,
// bottom-right); the running max starts at the first one, which matches starting at -inf since
// -inf > -inf is false and a NaN would be taken anyway. Per step: 4 loads, 4 even/odd picks,
// 3 x (2 compares, 2 selects): about 2 instructions per input element, well under the memory
// cost. Indices are computed in the lanes' integer type (int32 for float: hence the 2^31 limit
// of is_2x2_stride2) and widened to int64 on the store. Outputs whose window crosses the
// bottom/right edge (ceil_mode) go through pool_window.
template <typename T>
void pool_plane_2x2(const Pool2dShape& s, const T* x, T* y, int64_t* index) {
  constexpr int L = kLanesOf<T>;
  using M = vmask<T>;
  using I = lane_t<M>;
  typedef int64_t wide __attribute__((vector_size(L * sizeof(int64_t))));
  const int64_t W = s.W;
  const int64_t full_rows = std::min(s.OH, s.H / 2), full_cols = std::min(s.OW, s.W / 2);
  const int64_t vec_cols = full_cols - full_cols % L;
  const M column = lane_index<T>() * I(2);  // input column of each lane's window, from ow
  for (int64_t oh = 0; oh < full_rows; ++oh) {
    const T* top = x + 2 * oh * W;
    const T* bottom = top + W;
    T* y_row = y + oh * s.OW;
    int64_t* i_row = index + oh * s.OW;
    for (int64_t ow = 0; ow < vec_cols; ow += L) {
      const vec<T> t0 = load(top + 2 * ow), t1 = load(top + 2 * ow + L);
      const vec<T> b0 = load(bottom + 2 * ow), b1 = load(bottom + 2 * ow + L);
      vec<T> best = even_lanes(t0, t1);
      M off = M{};  // offset of the winner from the window's top-left
      auto take = [&](vec<T> v, I v_off) {  // torch's rule: v > best or v is NaN
        const M wins = (v > best) | (v != v);
        best = wins ? v : best;
        off = wins ? M{} + v_off : off;
      };
      take(odd_lanes(t0, t1), I(1));
      take(even_lanes(b0, b1), I(W));
      take(odd_lanes(b0, b1), I(W + 1));
      store(y_row + ow, best);
      const wide flat = __builtin_convertvector(off + column, wide) + (2 * oh * W + 2 * ow);
      std::memcpy(i_row + ow, &flat, sizeof(flat));
    }
    for (int64_t ow = vec_cols; ow < s.OW; ++ow) pool_window(s, x, oh, ow, y_row + ow, i_row + ow);
  }
  for (int64_t oh = full_rows; oh < s.OH; ++oh)
    for (int64_t ow = 0; ow < s.OW; ++ow)
      pool_window(s, x, oh, ow, y + oh * s.OW + ow, index + oh * s.OW + ow);
}

// Large fresh outputs get MADV_HUGEPAGE (common/cpu_tuning.h) before we write them: on this
// VM first-touch faults on a 33.5 MB gradient took ~17 ms in 4 KB pages vs ~3 ms in 2 MB pages,
// against ~3 ms for the kernel itself.
template <typename Elem>
void advise_output(Elem* data, int64_t count) {
  advise_huge_pages(data, static_cast<size_t>(count) * sizeof(Elem));
}

template <typename T>
using PlaneFn = void (*)(const Pool2dShape&, const T*, T*, int64_t*);

template <typename T>
PlaneFn<T> choose_forward(const Pool2dShape& s) {
  if (is_2x2_stride2(s) && !reference_requested()) return pool_plane_2x2<T>;
  return pool_plane_reference<T>;
}

}  // namespace

template <typename T>
void max_pool2d_forward(const Pool2dShape& s, const T* x, T* y, int64_t* indices) {
  const int64_t in_plane = s.H * s.W, out_plane = s.OH * s.OW;
  if (s.planes == 0 || out_plane == 0) return;
  const PlaneFn<T> fn = choose_forward<T>(s);
  advise_output(y, s.planes * out_plane);
  advise_output(indices, s.planes * out_plane);
  parallel_for(s.planes, plane_grain(out_plane * s.kh * s.kw), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      fn(s, x + p * in_plane, y + p * out_plane, indices + p * out_plane);
  });
}

// Scatter, one thread per plane (deterministic): zero the plane while it is hot in cache,
// then add each output gradient at its argmax (+= because overlapping windows may share an
// argmax). An index outside the plane is skipped: a caller passing foreign indices gets a
// wrong gradient, never an out-of-bounds write.
template <typename T>
void max_pool2d_backward(const Pool2dShape& s, const T* gy, const int64_t* indices, T* gx) {
  const int64_t in_plane = s.H * s.W, out_plane = s.OH * s.OW;
  if (s.planes == 0 || in_plane == 0) return;
  advise_output(gx, s.planes * in_plane);
  parallel_for(s.planes, plane_grain(in_plane + out_plane), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      T* g = gx + p * in_plane;
      std::fill(g, g + in_plane, T(0));
      const T* gy_p = gy + p * out_plane;
      const int64_t* idx_p = indices + p * out_plane;
      for (int64_t j = 0; j < out_plane; ++j) {
        const int64_t i = idx_p[j];
        if (static_cast<uint64_t>(i) < static_cast<uint64_t>(in_plane)) g[i] += gy_p[j];
      }
    }
  });
}

// Duplicate indices within a plane: the later input wins (sequential within the plane, as
// torch's CPU kernel does), so the result is deterministic.
template <typename T>
int64_t max_unpool2d_forward(int64_t planes, int64_t in_size, int64_t out_size, const T* x,
                             const int64_t* indices, T* y) {
  if (planes == 0 || out_size == 0) {
    // nothing to write; any index at all is out of range for an empty output plane
    return (planes > 0 && in_size > 0) ? 0 : -1;
  }
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
  advise_output(y, planes * out_size);
  parallel_for(planes, plane_grain(in_size + out_size), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      T* y_p = y + p * out_size;
      std::fill(y_p, y_p + out_size, T(0));
      const T* x_p = x + p * in_size;
      const int64_t* idx_p = indices + p * in_size;
      for (int64_t i = 0; i < in_size; ++i) {
        const int64_t j = idx_p[i];
        if (static_cast<uint64_t>(j) >= static_cast<uint64_t>(out_size)) {
          // planes run in increasing order in a chunk: this is the chunk's first bad index
          int64_t pos = p * in_size + i, seen = first_bad.load();
          while (pos < seen && !first_bad.compare_exchange_weak(seen, pos)) {
          }
          return;
        }
        y_p[j] = x_p[i];
      }
    }
  });
  const int64_t bad = first_bad.load();
  return bad == std::numeric_limits<int64_t>::max() ? -1 : bad;
}

// A gather: gx[i] = gy[indices[i]]. Out-of-range indices (which the forward rejects) give 0
// rather than a read out of bounds.
template <typename T>
void max_unpool2d_backward(int64_t planes, int64_t in_size, int64_t out_size, const T* gy,
                           const int64_t* indices, T* gx) {
  if (planes == 0 || in_size == 0) return;
  advise_output(gx, planes * in_size);
  parallel_for(planes, plane_grain(in_size), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const T* gy_p = gy + p * out_size;
      const int64_t* idx_p = indices + p * in_size;
      T* gx_p = gx + p * in_size;
      for (int64_t i = 0; i < in_size; ++i) {
        const int64_t j = idx_p[i];
        gx_p[i] = static_cast<uint64_t>(j) < static_cast<uint64_t>(out_size) ? gy_p[j] : T(0);
      }
    }
  });
}

template void max_pool2d_forward<float>(const Pool2dShape&, const float*, float*, int64_t*);
template void max_pool2d_forward<double>(const Pool2dShape&, const double*, double*, int64_t*);
template void max_pool2d_backward<float>(const Pool2dShape&, const float*, const int64_t*, float*);
template void max_pool2d_backward<double>(const Pool2dShape&, const double*, const int64_t*, double*);
template int64_t max_unpool2d_forward<float>(int64_t, int64_t, int64_t, const float*, const int64_t*, float*);
template int64_t max_unpool2d_forward<double>(int64_t, int64_t, int64_t, const double*, const int64_t*, double*);
template void max_unpool2d_backward<float>(int64_t, int64_t, int64_t, const float*, const int64_t*, float*);
template void max_unpool2d_backward<double>(int64_t, int64_t, int64_t, const double*, const int64_t*, double*);

}  // namespace pycnn::cpu::PYCNN_ISA

PYCNN_TARGET_END
