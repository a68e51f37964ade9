// The device code of the RoI and NMS kernels (roi.cu, nms.cu launch them), in a header so the
// CPU emulator (host_check/roi_check.py) compiles the very same code with a host compiler.
// See roi.cu and nms.cu for what each kernel does and why.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/roi_math.h"
#include "common/shapes.h"

namespace pycnn::cuda::roi_detail {
// Internal linkage: roi.cu and nms.cu both include this header and each launches its own kernels.
namespace {

// ---- RoIAlign / RoIPool (roi.cu) ---------------------------------------------------------------
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

// ---- NMS and box IoU (nms.cu) ------------------------------------------------------------------
constexpr int kTile = 64;

template <typename T>
__global__ void nms_mask_kernel(int64_t n, int64_t words, const T* __restrict__ boxes,
                                const int64_t* __restrict__ categories, double threshold,
                                unsigned long long* __restrict__ mask) {
  const int64_t row_tile = blockIdx.y, col_tile = blockIdx.x;
  if (col_tile < row_tile) return;
  __shared__ T tile[kTile * 4];
  const int64_t col0 = col_tile * kTile;
  const int cols = int(n - col0 < kTile ? n - col0 : int64_t(kTile));
  if (threadIdx.x < cols)
    for (int e = 0; e < 4; ++e) tile[threadIdx.x * 4 + e] = boxes[(col0 + threadIdx.x) * 4 + e];
  __syncthreads();
  const int64_t i = row_tile * kTile + threadIdx.x;
  if (i >= n) return;
  unsigned long long bits = 0;
  for (int j = 0; j < cols; ++j) {
    const int64_t jj = col0 + j;
    if (jj <= i) continue;
    if (categories != nullptr && categories[jj] != categories[i]) continue;
    if (double(roi::box_iou(boxes + 4 * i, tile + 4 * j)) > threshold) bits |= 1ull << j;
  }
  mask[i * words + col_tile] = bits;
}

__global__ void nms_scan_kernel(int64_t n, int64_t words, const unsigned long long* __restrict__ mask,
                                unsigned long long* __restrict__ suppressed, uint8_t* __restrict__ keep) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  for (int64_t w = 0; w < words; ++w) suppressed[w] = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool kept = !((suppressed[i / kTile] >> (i % kTile)) & 1ull);
    keep[i] = kept ? 1 : 0;
    if (!kept) continue;
    const unsigned long long* row = mask + i * words;
    for (int64_t w = i / kTile; w < words; ++w) suppressed[w] |= row[w];
  }
}

template <typename T>
__global__ void box_iou_kernel(int64_t n, int64_t m, const T* __restrict__ a, const T* __restrict__ b,
                               T* __restrict__ out) {
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n * m;
       idx += int64_t(gridDim.x) * blockDim.x)
    out[idx] = roi::box_iou(a + 4 * (idx / m), b + 4 * (idx % m));
}

}  // namespace
}  // namespace pycnn::cuda::roi_detail
