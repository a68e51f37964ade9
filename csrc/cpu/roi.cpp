// RoIAlign and RoIPool on CPU, forward and backward (torchvision.ops semantics; the geometry is
// in common/roi_math.h, shared with the CUDA kernels).
//
// Forward: the K * C output planes (one RoI, one channel) are split across parallel_for; a chunk
// computes a RoI's sampling taps once and reuses them for each of its channels. Every output is
// written by exactly one thread.
//
// Backward, deterministic by construction: the N * C input-gradient planes are split across
// threads, and each plane is accumulated by one thread, visiting the RoIs in index order
// (k = 0, 1, ..., K-1), bins in row-major order and samples in row-major order. So every gx
// element receives its additions in the same fixed order whatever the thread count: results are
// bitwise reproducible, with no atomics and no per-RoI partial buffers. A chunk of planes scans
// the RoI list once (taps computed once per RoI per chunk) and applies each RoI to those of its
// planes in the RoI's batch image.
//
// Napkin math (Mask R-CNN box head, float: 512 RoIs x 256 channels x 7x7 bins, 2x2 samples):
// 25.7 M samples x 4 taps = ~100 M multiply-adds forward, the same backward, on inputs of a few
// MB that stay in cache: compute bound, ~20-40 ms on one core with scalar code.
//
// So with channels enough to fill half a vector, both directions run on channel vectors instead:
// a sample's four taps are the same pixels in every channel, so the input is copied once into a
// channels-last scratch ([N, H, W, Cp], Cp = C rounded up to whole vectors, padding lanes zero)
// and each tap becomes one vector multiply-add per Cp / L channels. The forward splits the RoIs
// across threads and writes each RoI's [C, PH, PW] output from a [PH * PW, Cp] buffer. The
// backward splits (image, block of channel vectors) pairs across threads; each accumulates its
// block of one image's gradient channels-last, RoIs in index order and bins and samples in the
// scalar path's order, then writes it back to [C, H, W]: the same fixed order per element, so
// results do not depend on the thread count. Measured in the Mask R-CNN demo's training step
// (2 threads, AVX2, 32 channels, 256 RoIs 7x7 and 64 RoIs 14x14): see README "Detection".
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/parallel.h"
#include "common/roi_math.h"
#include "cpu/kernels.h"
#include "simd/vec.h"

PYCNN_TARGET_BEGIN  // this target's instructions from here to PYCNN_TARGET_END

namespace pycnn::cpu::PYCNN_ISA {
namespace {

// Declared here (not in common/roi_math.h) so std::vector<Tap<T>> is a type of this target's
// namespace: its instantiation below the target pragma must not be shared across targets.
template <typename T>
struct Tap : roi::AxisTap<T> {};

// Work per parallel chunk, in bin samples (a thread hand-off costs ~5-20 us).
constexpr int64_t kGrainSamples = 16384;

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kGrainSamples / std::max<int64_t>(1, work_per_item));
}

// The taps of every sample along one axis of one RoI: bins * grid entries, bin-major. A sample
// outside the image (or a NaN coordinate) gets low = -1: it adds nothing (not even 0 * inf).
template <typename T>
void axis_taps(T start, T bin, int64_t bins, int64_t grid, int64_t size, std::vector<Tap<T>>& taps) {
  taps.resize(static_cast<size_t>(bins * grid));
  for (int64_t b = 0; b < bins; ++b)
    for (int64_t i = 0; i < grid; ++i) {
      Tap<T>& t = taps[b * grid + i];
      if (!roi::axis_tap(roi::sample_at(start, bin, b, i, grid), size, t)) t.low = -1;
    }
}

template <typename T>
struct RoiTaps {
  roi::AlignRoi<T> r;
  std::vector<Tap<T>> ys, xs;
  void compute(const RoiShape& s, const T* box) {
    r = roi::align_roi(s, box);
    if (r.batch < 0) return;
    axis_taps(r.start_y, r.bin_h, s.PH, r.grid_h, s.H, ys);
    axis_taps(r.start_x, r.bin_w, s.PW, r.grid_w, s.W, xs);
  }
};

// Calls f(ty, tx) for every sample of bin (ph, pw) that lies in the image, row-major: the one
// walk over a bin's samples that all four RoIAlign kernels share (and so their summation order).
template <typename T, typename F>
PYCNN_INLINE void for_each_sample(const RoiTaps<T>& t, int64_t ph, int64_t pw, F&& f) {
  const int64_t gh = t.r.grid_h, gw = t.r.grid_w;
  for (int64_t iy = 0; iy < gh; ++iy) {
    const Tap<T>& ty = t.ys[ph * gh + iy];
    if (ty.low < 0) continue;
    for (int64_t ix = 0; ix < gw; ++ix) {
      const Tap<T>& tx = t.xs[pw * gw + ix];
      if (tx.low >= 0) f(ty, tx);
    }
  }
}

// One output plane [PH, PW] of RoIAlign from one input plane.
template <typename T>
void align_plane_forward(const RoiShape& s, const RoiTaps<T>& t, const T* x, T* y) {
  for (int64_t ph = 0; ph < s.PH; ++ph)
    for (int64_t pw = 0; pw < s.PW; ++pw) {
      T sum = T(0);
      for_each_sample(t, ph, pw, [&](const Tap<T>& ty, const Tap<T>& tx) {
        const T* row_low = x + ty.low * s.W;
        const T* row_high = x + ty.high * s.W;
        sum += ty.w_low * (tx.w_low * row_low[tx.low] + tx.w_high * row_low[tx.high]) +
               ty.w_high * (tx.w_low * row_high[tx.low] + tx.w_high * row_high[tx.high]);
      });
      y[ph * s.PW + pw] = sum * t.r.inv_count;
    }
}

// The transpose of align_plane_forward: adds one RoI's output gradient into an input plane.
template <typename T>
void align_plane_backward(const RoiShape& s, const RoiTaps<T>& t, const T* gy, T* gx) {
  for (int64_t ph = 0; ph < s.PH; ++ph)
    for (int64_t pw = 0; pw < s.PW; ++pw) {
      const T g = gy[ph * s.PW + pw] * t.r.inv_count;
      if (g == T(0)) continue;
      for_each_sample(t, ph, pw, [&](const Tap<T>& ty, const Tap<T>& tx) {
        T* row_low = gx + ty.low * s.W;
        T* row_high = gx + ty.high * s.W;
        const T g_low = g * ty.w_low, g_high = g * ty.w_high;
        row_low[tx.low] += g_low * tx.w_low;
        row_low[tx.high] += g_low * tx.w_high;
        row_high[tx.low] += g_high * tx.w_low;
        row_high[tx.high] += g_high * tx.w_high;
      });
    }
}

// ---- channel-vectorised RoIAlign ------------------------------------------------------------

constexpr int kChannelVectors = 4;  // channel vectors a bin keeps in registers at a time

template <typename T>
bool channel_vectorised(const RoiShape& s) {
  return 2 * s.C >= kLanesOf<T>;  // at least half a vector of channels
}

template <typename T>
int64_t padded_channels(const RoiShape& s) {
  constexpr int64_t L = kLanesOf<T>;
  return (s.C + L - 1) / L * L;
}

// x [N, C, H, W] -> xt [N, H, W, cp], padding lanes zero.
template <typename T>
void to_channels_last(const RoiShape& s, int64_t cp, const T* x, T* xt) {
  parallel_for(s.N * s.H, grain_for(s.W * cp), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / s.H, h = r % s.H;
      T* dst = xt + r * s.W * cp;
      for (int64_t c = 0; c < s.C; ++c) {
        const T* src = x + ((n * s.C + c) * s.H + h) * s.W;
        for (int64_t w = 0; w < s.W; ++w) dst[w * cp + c] = src[w];
      }
      for (int64_t w = 0; w < s.W; ++w) std::fill(dst + w * cp + s.C, dst + (w + 1) * cp, T(0));
    }
  });
}

// One bin of one RoI over NV channel vectors starting at img (a channels-last image plus the
// block's channel offset); row stride `row`, pixel stride cp. Writes the bin's average to out.
template <typename T, int NV>
PYCNN_INLINE void bin_forward_vec(const RoiTaps<T>& t, int64_t ph, int64_t pw, const T* img, int64_t row,
                                  int64_t cp, T* out) {
  constexpr int L = kLanesOf<T>;
  vec<T> acc[NV];
  for (int j = 0; j < NV; ++j) acc[j] = zero<T>();
  for_each_sample(t, ph, pw, [&](const Tap<T>& ty, const Tap<T>& tx) {
    const vec<T> w_ll = broadcast<T>(ty.w_low * tx.w_low), w_lh = broadcast<T>(ty.w_low * tx.w_high);
    const vec<T> w_hl = broadcast<T>(ty.w_high * tx.w_low), w_hh = broadcast<T>(ty.w_high * tx.w_high);
    const T* a = img + ty.low * row + tx.low * cp;
    const T* b = img + ty.low * row + tx.high * cp;
    const T* c = img + ty.high * row + tx.low * cp;
    const T* d = img + ty.high * row + tx.high * cp;
    for (int j = 0; j < NV; ++j) {
      acc[j] = fma(w_ll, load<T>(a + j * L), acc[j]);
      acc[j] = fma(w_lh, load<T>(b + j * L), acc[j]);
      acc[j] = fma(w_hl, load<T>(c + j * L), acc[j]);
      acc[j] = fma(w_hh, load<T>(d + j * L), acc[j]);
    }
  });
  const vec<T> scale = broadcast<T>(t.r.inv_count);
  for (int j = 0; j < NV; ++j) store(out + j * L, acc[j] * scale);
}

// The transpose of bin_forward_vec: adds g (NV vectors, already times inv_count) at the bin's taps.
template <typename T, int NV>
PYCNN_INLINE void bin_backward_vec(const RoiTaps<T>& t, int64_t ph, int64_t pw, const vec<T>* g, T* img,
                                   int64_t row, int64_t cp) {
  constexpr int L = kLanesOf<T>;
  for_each_sample(t, ph, pw, [&](const Tap<T>& ty, const Tap<T>& tx) {
    const vec<T> w_ll = broadcast<T>(ty.w_low * tx.w_low), w_lh = broadcast<T>(ty.w_low * tx.w_high);
    const vec<T> w_hl = broadcast<T>(ty.w_high * tx.w_low), w_hh = broadcast<T>(ty.w_high * tx.w_high);
    // In the scalar kernel's order; low == high at the far edge adds twice to one pixel.
    T* a = img + ty.low * row + tx.low * cp;
    T* b = img + ty.low * row + tx.high * cp;
    T* c = img + ty.high * row + tx.low * cp;
    T* d = img + ty.high * row + tx.high * cp;
    for (int j = 0; j < NV; ++j) store(a + j * L, fma(w_ll, g[j], load<T>(a + j * L)));
    for (int j = 0; j < NV; ++j) store(b + j * L, fma(w_lh, g[j], load<T>(b + j * L)));
    for (int j = 0; j < NV; ++j) store(c + j * L, fma(w_hl, g[j], load<T>(c + j * L)));
    for (int j = 0; j < NV; ++j) store(d + j * L, fma(w_hh, g[j], load<T>(d + j * L)));
  });
}

template <int NV>
using Vectors = std::integral_constant<int, NV>;

// f(Vectors<nv>{}) for nv = 1 .. kChannelVectors: a block's vector count as a compile-time
// constant, so its accumulators stay in registers.
template <typename F>
PYCNN_INLINE void with_vectors(int64_t nv, F&& f) {
  static_assert(kChannelVectors == 4, "with_vectors: one case per block size");
  switch (nv) {
    case 4: f(Vectors<4>{}); break;
    case 3: f(Vectors<3>{}); break;
    case 2: f(Vectors<2>{}); break;
    default: f(Vectors<1>{}); break;
  }
}

template <typename T>
std::vector<T>& channels_last_scratch() {
  // Kept per calling thread (a fresh buffer per call would be page faults); every element is
  // written before it is read.
  thread_local std::vector<T> buffer;
  return buffer;
}

template <typename T>
void roi_align_forward_vec(const RoiShape& s, const T* x, const T* rois, T* y) {
  constexpr int64_t L = kLanesOf<T>;
  const int64_t cp = padded_channels<T>(s), vectors = cp / L, bins = s.PH * s.PW, row = s.W * cp;
  std::vector<T>& xt = channels_last_scratch<T>();
  if (xt.size() < size_t(s.N * s.H * row)) xt.resize(size_t(s.N * s.H * row));
  to_channels_last(s, cp, x, xt.data());
  const T* xt_data = xt.data();
  parallel_for(s.K, grain_for(bins * 4 * cp), [&](int64_t k0, int64_t k1) {
    RoiTaps<T> taps;
    std::vector<T> buf(size_t(bins * cp));
    for (int64_t k = k0; k < k1; ++k) {
      taps.compute(s, rois + 5 * k);
      T* out = y + k * s.C * bins;
      if (taps.r.batch < 0) {
        std::fill(out, out + s.C * bins, T(0));
        continue;
      }
      const T* img = xt_data + taps.r.batch * s.H * row;
      for (int64_t ph = 0; ph < s.PH; ++ph)
        for (int64_t pw = 0; pw < s.PW; ++pw) {
          T* bin_out = buf.data() + (ph * s.PW + pw) * cp;
          for (int64_t v = 0; v < vectors; v += kChannelVectors)
            with_vectors(std::min<int64_t>(kChannelVectors, vectors - v), [&](auto nv) {
              bin_forward_vec<T, decltype(nv)::value>(taps, ph, pw, img + v * L, row, cp, bin_out + v * L);
            });
        }
      for (int64_t c = 0; c < s.C; ++c)
        for (int64_t b = 0; b < bins; ++b) out[c * bins + b] = buf[size_t(b * cp + c)];
    }
  });
}

template <typename T>
void roi_align_backward_vec(const RoiShape& s, const T* gy, const T* rois, T* gx) {
  constexpr int64_t L = kLanesOf<T>;
  const int64_t cp = padded_channels<T>(s), vectors = cp / L, bins = s.PH * s.PW, in_plane = s.H * s.W;
  const int64_t blocks = (vectors + kChannelVectors - 1) / kChannelVectors;
  parallel_for(s.N * blocks, 1, [&](int64_t t0, int64_t t1) {
    RoiTaps<T> taps;
    std::vector<T> acc;  // one image's block of gradient channels, channels-last [H, W, width]
    std::vector<T> g;    // one RoI's output gradient for the block, [bins, width], times inv_count
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t n = task / blocks, v0 = task % blocks * kChannelVectors;
      const int64_t nv = std::min<int64_t>(kChannelVectors, vectors - v0);
      const int64_t width = nv * L, c0 = v0 * L, c1 = std::min(s.C, c0 + width);
      acc.assign(size_t(in_plane * width), T(0));
      g.assign(size_t(bins * width), T(0));
      for (int64_t k = 0; k < s.K; ++k) {  // RoIs in index order: the fixed accumulation order
        if (roi::batch_index_of(double(rois[5 * k]), s.N) != n) continue;
        taps.compute(s, rois + 5 * k);
        if (taps.r.batch < 0) continue;
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t b = 0; b < bins; ++b)
            g[size_t(b * width + c - c0)] = gy[(k * s.C + c) * bins + b] * taps.r.inv_count;
        for (int64_t ph = 0; ph < s.PH; ++ph)
          for (int64_t pw = 0; pw < s.PW; ++pw) {
            const T* gb = g.data() + (ph * s.PW + pw) * width;
            with_vectors(nv, [&](auto nv_const) {
              constexpr int NV = decltype(nv_const)::value;
              vec<T> gv[NV];
              for (int j = 0; j < NV; ++j) gv[j] = load<T>(gb + j * L);
              bin_backward_vec<T, NV>(taps, ph, pw, gv, acc.data(), s.W * width, width);
            });
          }
      }
      for (int64_t c = c0; c < c1; ++c) {
        T* plane = gx + (n * s.C + c) * in_plane;
        for (int64_t i = 0; i < in_plane; ++i) plane[i] = acc[size_t(i * width + c - c0)];
      }
    }
  });
}

}  // namespace

template <typename T>
void roi_align_forward(const RoiShape& s, const T* x, const T* rois, T* y) {
  const int64_t out_plane = s.PH * s.PW, in_plane = s.H * s.W;
  if (s.K == 0 || s.C == 0 || out_plane == 0) return;
  if (channel_vectorised<T>(s) && in_plane > 0) return roi_align_forward_vec(s, x, rois, y);
  parallel_for(s.K * s.C, grain_for(out_plane * 4), [&](int64_t begin, int64_t end) {
    RoiTaps<T> taps;
    int64_t current = -1;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t k = item / s.C, c = item % s.C;
      if (k != current) {
        taps.compute(s, rois + 5 * k);
        current = k;
      }
      T* out = y + item * out_plane;
      if (taps.r.batch < 0) {
        std::fill(out, out + out_plane, T(0));
        continue;
      }
      align_plane_forward(s, taps, x + (taps.r.batch * s.C + c) * in_plane, out);
    }
  });
}

template <typename T>
void roi_align_backward(const RoiShape& s, const T* gy, const T* rois, T* gx) {
  const int64_t out_plane = s.PH * s.PW, in_plane = s.H * s.W;
  const int64_t planes = s.N * s.C;
  if (planes == 0 || in_plane == 0) return;
  if (channel_vectorised<T>(s) && out_plane > 0) return roi_align_backward_vec(s, gy, rois, gx);
  const int64_t per_plane = in_plane + s.K * out_plane * 4 / std::max<int64_t>(1, s.N);
  parallel_for(planes, grain_for(per_plane), [&](int64_t begin, int64_t end) {
    std::fill(gx + begin * in_plane, gx + end * in_plane, T(0));
    if (out_plane == 0) return;
    const int64_t n_first = begin / s.C, n_last = (end - 1) / s.C;
    RoiTaps<T> taps;
    for (int64_t k = 0; k < s.K; ++k) {  // RoIs in index order: the fixed accumulation order
      const int64_t n = roi::batch_index_of(double(rois[5 * k]), s.N);
      if (n < n_first || n > n_last) continue;
      taps.compute(s, rois + 5 * k);
      if (taps.r.batch < 0) continue;
      const int64_t p_begin = std::max(begin, n * s.C), p_end = std::min(end, (n + 1) * s.C);
      for (int64_t p = p_begin; p < p_end; ++p) {
        const int64_t c = p - n * s.C;
        align_plane_backward(s, taps, gy + (k * s.C + c) * out_plane, gx + p * in_plane);
      }
    }
  });
}

// The position (h * W + w) of a non-empty bin's maximum by torch's max-pooling rule (the rule's
// own loop is `if (v > best || isnan(v))` per pixel): the first of tied maxima, the last NaN if the
// bin holds one (once the running max is NaN only a NaN replaces it), the first pixel when all are
// -inf. That branch mispredicts on real data (~10 cycles a pixel), so: narrow bins (small RoIs,
// the usual case) run the rule branch-free; wide ones a vector of the row at a time, each lane
// keeping its own first maximum and position, the lanes then reduced to the first overall (a lane
// sees its pixels in increasing position, so the smallest position among the lanes holding the
// maximum is the first), with a scan for the last NaN only when there is one.
template <typename T>
static int64_t pool_bin_argmax(const T* plane, int64_t W, int64_t h0, int64_t h1, int64_t w0, int64_t w1) {
  using V = vec<T>;
  using M = vmask<T>;
  using I = std::remove_reference_t<decltype(M{}[0])>;
  constexpr int L = kLanesOf<T>;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const int64_t first = h0 * W + w0, last = (h1 - 1) * W + w1 - 1;
  // Lane positions are computed in the mask's integer type, past the bin's end by up to L - 1:
  // planes too large for it take the scalar path.
  if (w1 - w0 < L / 2 || last + L > int64_t(std::numeric_limits<I>::max())) {
    T m = neg_inf;
    int64_t at = first;
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t w = w0; w < w1; ++w) {
        const T v = plane[h * W + w];
        const bool take = (v > m) | (v != v);
        m = take ? v : m;
        at = take ? h * W + w : at;
      }
    return at;
  }
  const M lanes = lane_index<T>();
  V best = broadcast<T>(neg_inf);
  M at = M{} - I(1), nan = M{};
  for (int64_t h = h0; h < h1; ++h) {
    const T* row = plane + h * W;
    for (int64_t w = w0; w < w1; w += L) {
      const int64_t n = std::min<int64_t>(L, w1 - w);
      const V v = select(lanes < I(n), load_first(row + w, n), broadcast<T>(neg_inf));  // past the bin: -inf
      const M take = v > best;
      best = select(take, v, best);
      at = select(take, lanes + I(h * W + w), at);
      nan |= v != v;
    }
  }
  T m = neg_inf;
  int64_t where = first;  // every lane -inf (or NaN): the first pixel
  bool any_nan = false;
  for (int j = 0; j < L; ++j) {
    any_nan |= nan[j] != 0;
    if (at[j] >= 0 && (best[j] > m || (best[j] == m && at[j] < where))) m = best[j], where = at[j];
  }
  if (any_nan) {
    for (int64_t h = h1 - 1; h >= h0; --h)
      for (int64_t w = w1 - 1; w >= w0; --w)
        if (std::isnan(plane[h * W + w])) return h * W + w;
  }
  return where;
}

// RoIPool: max over each bin, the flat input position (h * W + w) of the winner recorded.
// torch's max-pooling rule (take v if v > max or v is NaN, starting from -inf at the bin's first
// pixel), so NaN propagates and an all -inf bin reports its first pixel: the same rule as
// max_pool2d and adaptive_max_pool2d. An empty bin (or a RoI with a bad box or batch index)
// gives 0 and argmax -1 (no gradient).
template <typename T>
void roi_pool_forward(const RoiShape& s, const T* x, const T* rois, T* y, int64_t* argmax) {
  const int64_t out_plane = s.PH * s.PW, in_plane = s.H * s.W;
  if (s.K == 0 || s.C == 0 || out_plane == 0) return;
  parallel_for(s.K * s.C, grain_for(out_plane * 4), [&](int64_t begin, int64_t end) {
    std::vector<int64_t> col(2 * s.PW);  // each output column's [w0, w1), the same for every row
    for (int64_t item = begin; item < end; ++item) {
      const int64_t k = item / s.C, c = item % s.C;
      const roi::PoolRoi r = roi::pool_roi(s, rois + 5 * k);
      T* out = y + item * out_plane;
      int64_t* arg = argmax + item * out_plane;
      if (r.batch < 0) {
        std::fill(out, out + out_plane, T(0));
        std::fill(arg, arg + out_plane, int64_t(-1));
        continue;
      }
      const T* plane = x + (r.batch * s.C + c) * in_plane;
      for (int64_t pw = 0; pw < s.PW; ++pw)
        roi::pool_bin<T>(r.start_x, r.width, s.PW, pw, s.W, col[2 * pw], col[2 * pw + 1]);
      for (int64_t ph = 0; ph < s.PH; ++ph) {
        int64_t h0, h1;
        roi::pool_bin<T>(r.start_y, r.height, s.PH, ph, s.H, h0, h1);
        for (int64_t pw = 0; pw < s.PW; ++pw) {
          const int64_t w0 = col[2 * pw], w1 = col[2 * pw + 1];
          const int64_t i = h1 > h0 && w1 > w0 ? pool_bin_argmax(plane, s.W, h0, h1, w0, w1) : -1;
          out[ph * s.PW + pw] = i >= 0 ? plane[i] : T(0);
          arg[ph * s.PW + pw] = i;
        }
      }
    }
  });
}

// Each output gradient added at its argmax; planes split across threads, RoIs in index order
// (deterministic, as roi_align_backward). An argmax outside the plane is skipped.
template <typename T>
void roi_pool_backward(const RoiShape& s, const T* gy, const T* rois, const int64_t* argmax, T* gx) {
  const int64_t out_plane = s.PH * s.PW, in_plane = s.H * s.W;
  const int64_t planes = s.N * s.C;
  if (planes == 0 || in_plane == 0) return;
  const int64_t per_plane = in_plane + s.K * out_plane / std::max<int64_t>(1, s.N);
  parallel_for(planes, grain_for(per_plane), [&](int64_t begin, int64_t end) {
    std::fill(gx + begin * in_plane, gx + end * in_plane, T(0));
    const int64_t n_first = begin / s.C, n_last = (end - 1) / s.C;
    for (int64_t k = 0; k < s.K; ++k) {
      const int64_t n = roi::batch_index_of(double(rois[5 * k]), s.N);
      if (n < n_first || n > n_last) continue;
      const int64_t p_begin = std::max(begin, n * s.C), p_end = std::min(end, (n + 1) * s.C);
      for (int64_t p = p_begin; p < p_end; ++p) {
        const int64_t c = p - n * s.C;
        const T* g = gy + (k * s.C + c) * out_plane;
        const int64_t* arg = argmax + (k * s.C + c) * out_plane;
        T* plane = gx + p * in_plane;
        for (int64_t j = 0; j < out_plane; ++j) {
          const int64_t i = arg[j];
          if (static_cast<uint64_t>(i) < static_cast<uint64_t>(in_plane)) plane[i] += g[j];
        }
      }
    }
  });
}

template void roi_align_forward<float>(const RoiShape&, const float*, const float*, float*);
template void roi_align_forward<double>(const RoiShape&, const double*, const double*, double*);
template void roi_align_backward<float>(const RoiShape&, const float*, const float*, float*);
template void roi_align_backward<double>(const RoiShape&, const double*, const double*, double*);
template void roi_pool_forward<float>(const RoiShape&, const float*, const float*, float*, int64_t*);
template void roi_pool_forward<double>(const RoiShape&, const double*, const double*, double*, int64_t*);
template void roi_pool_backward<float>(const RoiShape&, const float*, const float*, const int64_t*, float*);
template void roi_pool_backward<double>(const RoiShape&, const double*, const double*, const int64_t*, double*);

}  // namespace pycnn::cpu::PYCNN_ISA

PYCNN_TARGET_END
