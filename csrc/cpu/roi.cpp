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
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/parallel.h"
#include "common/roi_math.h"
#include "cpu/kernels.h"
#include "simd/vec.h"

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

// One output plane [PH, PW] of RoIAlign from one input plane.
template <typename T>
void align_plane_forward(const RoiShape& s, const RoiTaps<T>& t, const T* x, T* y) {
  const int64_t gh = t.r.grid_h, gw = t.r.grid_w, W = s.W;
  for (int64_t ph = 0; ph < s.PH; ++ph)
    for (int64_t pw = 0; pw < s.PW; ++pw) {
      T sum = T(0);
      for (int64_t iy = 0; iy < gh; ++iy) {
        const Tap<T>& ty = t.ys[ph * gh + iy];
        if (ty.low < 0) continue;
        const T* row_low = x + ty.low * W;
        const T* row_high = x + ty.high * W;
        for (int64_t ix = 0; ix < gw; ++ix) {
          const Tap<T>& tx = t.xs[pw * gw + ix];
          if (tx.low < 0) continue;
          sum += ty.w_low * (tx.w_low * row_low[tx.low] + tx.w_high * row_low[tx.high]) +
                 ty.w_high * (tx.w_low * row_high[tx.low] + tx.w_high * row_high[tx.high]);
        }
      }
      y[ph * s.PW + pw] = sum * t.r.inv_count;
    }
}

// The transpose of align_plane_forward: adds one RoI's output gradient into an input plane.
template <typename T>
void align_plane_backward(const RoiShape& s, const RoiTaps<T>& t, const T* gy, T* gx) {
  const int64_t gh = t.r.grid_h, gw = t.r.grid_w, W = s.W;
  for (int64_t ph = 0; ph < s.PH; ++ph)
    for (int64_t pw = 0; pw < s.PW; ++pw) {
      const T g = gy[ph * s.PW + pw] * t.r.inv_count;
      if (g == T(0)) continue;
      for (int64_t iy = 0; iy < gh; ++iy) {
        const Tap<T>& ty = t.ys[ph * gh + iy];
        if (ty.low < 0) continue;
        T* row_low = gx + ty.low * W;
        T* row_high = gx + ty.high * W;
        const T g_low = g * ty.w_low, g_high = g * ty.w_high;
        for (int64_t ix = 0; ix < gw; ++ix) {
          const Tap<T>& tx = t.xs[pw * gw + ix];
          if (tx.low < 0) continue;
          row_low[tx.low] += g_low * tx.w_low;
          row_low[tx.high] += g_low * tx.w_high;
          row_high[tx.low] += g_high * tx.w_low;
          row_high[tx.high] += g_high * tx.w_high;
        }
      }
    }
}

}  // namespace

template <typename T>
void roi_align_forward(const RoiShape& s, const T* x, const T* rois, T* y) {
  const int64_t out_plane = s.PH * s.PW, in_plane = s.H * s.W;
  if (s.K == 0 || s.C == 0 || out_plane == 0) return;
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
    for (int64_t item = begin; item < end; ++item) {
      const int64_t k = item / s.C, c = item % s.C;
      const roi::PoolRoi r = roi::pool_roi(s, rois + 5 * k);
      T* out = y + item * out_plane;
      int64_t* arg = argmax + item * out_plane;
      const T* plane = r.batch >= 0 ? x + (r.batch * s.C + c) * in_plane : nullptr;
      for (int64_t ph = 0; ph < s.PH; ++ph) {
        int64_t h0, h1;
        roi::pool_bin<T>(r.start_y, r.height, s.PH, ph, s.H, h0, h1);
        for (int64_t pw = 0; pw < s.PW; ++pw) {
          int64_t w0, w1;
          roi::pool_bin<T>(r.start_x, r.width, s.PW, pw, s.W, w0, w1);
          T best = T(0);
          int64_t best_index = -1;
          if (plane != nullptr && h1 > h0 && w1 > w0) {
            best = -std::numeric_limits<T>::infinity();
            best_index = h0 * s.W + w0;
            for (int64_t h = h0; h < h1; ++h)
              for (int64_t w = w0; w < w1; ++w) {
                const T v = plane[h * s.W + w];
                if (v > best || std::isnan(v)) {
                  best = v;
                  best_index = h * s.W + w;
                }
              }
          }
          out[ph * s.PW + pw] = best;
          arg[ph * s.PW + pw] = best_index;
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
