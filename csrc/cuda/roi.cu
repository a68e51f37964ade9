// RoIAlign and RoIPool on CUDA: one thread per output in the forward passes; the backward passes
// are gathers, one thread per input-gradient element, so they are deterministic without atomics.
// The geometry (where samples fall, bilinear taps, bin edges, NaN guards) is common/roi_math.h,
// the same code the CPU kernels run.
//
// Backward as a gather: the thread of pixel (n, c, h, w) visits the RoIs in index order, skips
// those of other images or whose support misses row h or column w, and within a RoI only the bins
// whose interval reaches within one pixel of (h, w) (a bilinear tap touches pixels within 1 of
// the sample; clamped edge samples stay within that too). It adds each sample's weight on this
// pixel, in a fixed order (RoI, bin row, bin column, sample): bitwise reproducible. The price is
// that every pixel scans the RoI list: K checks of a few flops per input element (512 RoIs x a
// 2 x 256 x 50 x 50 map: ~0.7 G cheap checks, ~1 ms on a large GPU) on top of the real work.
#include <algorithm>

#include "common/roi_math.h"
#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

namespace pycnn::cuda {
namespace {

template <typename T>
__global__ void roi_align_forward_kernel(RoiShape s, int64_t total, const T* __restrict__ x,
                                         const T* __restrict__ rois, T* __restrict__ y) {
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pw = idx % s.PW, ph = (idx / s.PW) % s.PH;
    const int64_t c = (idx / (s.PW * s.PH)) % s.C, k = idx / (s.PW * s.PH * s.C);
    const roi::AlignRoi<T> r = roi::align_roi(s, rois + 5 * k);
    T sum = T(0);
    if (r.batch >= 0) {
      const T* plane = x + (r.batch * s.C + c) * s.H * s.W;
      for (int64_t iy = 0; iy < r.grid_h; ++iy) {
        roi::AxisTap<T> ty;
        if (!roi::axis_tap(roi::sample_at(r.start_y, r.bin_h, ph, iy, r.grid_h), s.H, ty)) continue;
        for (int64_t ix = 0; ix < r.grid_w; ++ix) {
          roi::AxisTap<T> tx;
          if (!roi::axis_tap(roi::sample_at(r.start_x, r.bin_w, pw, ix, r.grid_w), s.W, tx)) continue;
          const T* lo = plane + ty.low * s.W;
          const T* hi = plane + ty.high * s.W;
          sum += ty.w_low * (tx.w_low * lo[tx.low] + tx.w_high * lo[tx.high]) +
                 ty.w_high * (tx.w_low * hi[tx.low] + tx.w_high * hi[tx.high]);
        }
      }
    }
    y[idx] = sum * r.inv_count;
  }
}

// The weight that the samples of bin b (along one axis) put on pixel p.
template <typename T>
__device__ T axis_weight(T start, T bin, int64_t b, int64_t grid, int64_t size, int64_t p) {
  T w = T(0);
  for (int64_t i = 0; i < grid; ++i) {
    roi::AxisTap<T> t;
    if (!roi::axis_tap(roi::sample_at(start, bin, b, i, grid), size, t)) continue;
    if (t.low == p) w += t.w_low;
    if (t.high == p) w += t.w_high;
  }
  return w;
}

// Bins [first, last] of an axis whose interval [start + b * bin, start + (b + 1) * bin] meets
// [p - 1, p + 1]; first > last when none does. Computed in double and clamped before any cast.
template <typename T>
__device__ void bins_near(T start, T bin, int64_t bins, int64_t p, int64_t& first, int64_t& last) {
  if (!(bin > T(0))) {  // a zero-size or reversed box (fixed sampling_ratio): check every bin
    first = 0;
    last = bins - 1;
    return;
  }
  const double lo = std::floor((double(p) - 1 - double(start)) / double(bin)) - 1;
  const double hi = std::floor((double(p) + 1 - double(start)) / double(bin)) + 1;
  first = lo < 0 ? 0 : (lo > double(bins) ? bins : int64_t(lo));
  last = hi < 0 ? -1 : (hi > double(bins - 1) ? bins - 1 : int64_t(hi));
}

template <typename T>
__global__ void roi_align_backward_kernel(RoiShape s, int64_t total, const T* __restrict__ gy,
                                          const T* __restrict__ rois, T* __restrict__ gx) {
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t w = idx % s.W, h = (idx / s.W) % s.H;
    const int64_t c = (idx / (s.W * s.H)) % s.C, n = idx / (s.W * s.H * s.C);
    T g = T(0);
    for (int64_t k = 0; k < s.K; ++k) {
      if (roi::batch_index_of(double(rois[5 * k]), s.N) != n) continue;
      const roi::AlignRoi<T> r = roi::align_roi(s, rois + 5 * k);
      if (r.batch < 0 || r.grid_h == 0 || r.grid_w == 0) continue;
      int64_t ph0, ph1, pw0, pw1;
      bins_near(r.start_y, r.bin_h, s.PH, h, ph0, ph1);
      if (ph0 > ph1) continue;
      bins_near(r.start_x, r.bin_w, s.PW, w, pw0, pw1);
      if (pw0 > pw1) continue;
      const T* g_roi = gy + (k * s.C + c) * s.PH * s.PW;
      for (int64_t ph = ph0; ph <= ph1; ++ph) {
        const T wy = axis_weight(r.start_y, r.bin_h, ph, r.grid_h, s.H, h);
        if (wy == T(0)) continue;
        for (int64_t pw = pw0; pw <= pw1; ++pw) {
          const T wx = axis_weight(r.start_x, r.bin_w, pw, r.grid_w, s.W, w);
          if (wx == T(0)) continue;
          g += wy * wx * (g_roi[ph * s.PW + pw] * r.inv_count);
        }
      }
    }
    gx[idx] = g;
  }
}

template <typename T>
__global__ void roi_pool_forward_kernel(RoiShape s, int64_t total, const T* __restrict__ x,
                                        const T* __restrict__ rois, T* __restrict__ y,
                                        int64_t* __restrict__ argmax) {
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pw = idx % s.PW, ph = (idx / s.PW) % s.PH;
    const int64_t c = (idx / (s.PW * s.PH)) % s.C, k = idx / (s.PW * s.PH * s.C);
    const roi::PoolRoi r = roi::pool_roi(s, rois + 5 * k);
    int64_t h0, h1, w0, w1;
    roi::pool_bin<T>(r.start_y, r.height, s.PH, ph, s.H, h0, h1);
    roi::pool_bin<T>(r.start_x, r.width, s.PW, pw, s.W, w0, w1);
    T best = T(0);
    int64_t best_index = -1;
    if (r.batch >= 0 && h1 > h0 && w1 > w0) {  // torch's max rule, as the CPU kernel
      const T* plane = x + (r.batch * s.C + c) * s.H * s.W;
      best = -INFINITY;
      best_index = h0 * s.W + w0;
      for (int64_t hh = h0; hh < h1; ++hh)
        for (int64_t ww = w0; ww < w1; ++ww) {
          const T v = plane[hh * s.W + ww];
          if (v > best || v != v) {
            best = v;
            best_index = hh * s.W + ww;
          }
        }
    }
    y[idx] = best;
    argmax[idx] = best_index;
  }
}

template <typename T>
__global__ void roi_pool_backward_kernel(RoiShape s, int64_t total, const T* __restrict__ gy,
                                         const T* __restrict__ rois, const int64_t* __restrict__ argmax,
                                         T* __restrict__ gx) {
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t w = idx % s.W, h = (idx / s.W) % s.H;
    const int64_t c = (idx / (s.W * s.H)) % s.C, n = idx / (s.W * s.H * s.C);
    const int64_t pos = h * s.W + w;
    T g = T(0);
    for (int64_t k = 0; k < s.K; ++k) {
      if (roi::batch_index_of(double(rois[5 * k]), s.N) != n) continue;
      const roi::PoolRoi r = roi::pool_roi(s, rois + 5 * k);
      if (r.batch < 0) continue;
      const int64_t base = (k * s.C + c) * s.PH * s.PW;
      for (int64_t ph = 0; ph < s.PH; ++ph) {
        int64_t h0, h1;
        roi::pool_bin<T>(r.start_y, r.height, s.PH, ph, s.H, h0, h1);
        if (h < h0 || h >= h1) continue;
        for (int64_t pw = 0; pw < s.PW; ++pw) {
          if (argmax[base + ph * s.PW + pw] == pos) g += gy[base + ph * s.PW + pw];
        }
      }
    }
    gx[idx] = g;
  }
}

}  // namespace

template <typename T>
void roi_align_forward(Stream stream, const RoiShape& s, const T* x, const T* rois, T* y) {
  const int64_t total = s.K * s.C * s.PH * s.PW;
  if (total == 0) return;
  roi_align_forward_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(s, total, x, rois, y);
  check_launch("roi_align");
}

template <typename T>
void roi_align_backward(Stream stream, const RoiShape& s, const T* gy, const T* rois, T* gx) {
  const int64_t total = s.N * s.C * s.H * s.W;
  if (total == 0) return;
  roi_align_backward_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(s, total, gy, rois, gx);
  check_launch("roi_align_backward");
}

template <typename T>
void roi_pool_forward(Stream stream, const RoiShape& s, const T* x, const T* rois, T* y, int64_t* argmax) {
  const int64_t total = s.K * s.C * s.PH * s.PW;
  if (total == 0) return;
  roi_pool_forward_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(s, total, x, rois, y, argmax);
  check_launch("roi_pool");
}

template <typename T>
void roi_pool_backward(Stream stream, const RoiShape& s, const T* gy, const T* rois, const int64_t* argmax, T* gx) {
  const int64_t total = s.N * s.C * s.H * s.W;
  if (total == 0) return;
  roi_pool_backward_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(s, total, gy, rois, argmax, gx);
  check_launch("roi_pool_backward");
}

#define PYCNN_INSTANTIATE(T)                                                                          \
  template void roi_align_forward<T>(Stream, const RoiShape&, const T*, const T*, T*);                \
  template void roi_align_backward<T>(Stream, const RoiShape&, const T*, const T*, T*);               \
  template void roi_pool_forward<T>(Stream, const RoiShape&, const T*, const T*, T*, int64_t*);       \
  template void roi_pool_backward<T>(Stream, const RoiShape&, const T*, const T*, const int64_t*, T*);
PYCNN_INSTANTIATE(float)
PYCNN_INSTANTIATE(double)
#undef PYCNN_INSTANTIATE

}  // namespace pycnn::cuda
