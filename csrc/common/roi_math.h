// RoI geometry shared by the CPU (csrc/cpu/roi.cpp, nms.cpp) and CUDA (csrc/cuda/roi.cu, nms.cu)
// kernels: one definition of where RoIAlign samples, how a sample's bilinear weights fall on the
// pixels, where RoIPool's bins start and end, and the IoU of two boxes. torchvision.ops's rules,
// plus guards for NaN/infinite/huge boxes, which must give zeros rather than read out of bounds
// (a float -> int conversion of NaN or of a value out of range is undefined behaviour).
//
// Included before simd/vec.h by the CPU kernels, so these inline functions are compiled without
// the target's instructions wherever they are not inlined (see scripts/check_isa_isolation.py).
#pragma once
#include <cmath>
#include <cstdint>

#include "common/shapes.h"

#ifdef __CUDACC__
#define PYCNN_ROI_FN __host__ __device__ __forceinline__
#else
#define PYCNN_ROI_FN inline __attribute__((always_inline))
#endif

namespace pycnn::roi {

// The adaptive sampling grid (sampling_ratio <= 0: ceil(roi size / bins) per bin side) is capped
// at this many samples per bin side, so a garbage box (1e30 wide) costs bounded work. The cap
// changes results only for boxes over 2^16 bins' worth of feature cells wide.
constexpr int64_t kMaxAdaptiveGrid = int64_t(1) << 16;

// One RoI of RoIAlign in input-pixel units: bin b along an axis covers
// [start + b * bin, start + (b + 1) * bin), sampled at grid points start + b * bin + (i + 0.5) * bin / grid.
template <typename T>
struct AlignRoi {
  int64_t batch;        // -1: batch index out of range or not finite (the RoI gives zeros)
  T start_y, start_x;   // top-left corner
  T bin_h, bin_w;       // bin size
  int64_t grid_h, grid_w;  // samples per bin side (0: none; the bin then gives 0)
  T inv_count;          // 1 / max(grid_h * grid_w, 1): the bin's average
};

PYCNN_ROI_FN int64_t batch_index_of(double v, int64_t N) {
  // v >= 0 && v < N is false for NaN; the cast happens only in range.
  return (v >= 0 && v < double(N)) ? int64_t(v) : int64_t(-1);
}

PYCNN_ROI_FN int64_t adaptive_grid(double roi_size, int64_t bins, int64_t sampling_ratio) {
  if (sampling_ratio > 0) return sampling_ratio;
  const double g = std::ceil(roi_size / double(bins));
  if (!(g >= 1)) return 0;  // NaN, empty or negative size: no samples
  return g < double(kMaxAdaptiveGrid) ? int64_t(g) : kMaxAdaptiveGrid;
}

// box: (batch index, x1, y1, x2, y2). torchvision's roi_align: aligned shifts the box by half a
// pixel (pixel centres at integer + 0.5); without it, RoIs are at least 1x1.
template <typename T>
PYCNN_ROI_FN AlignRoi<T> align_roi(const RoiShape& s, const T* box) {
  AlignRoi<T> r;
  r.batch = batch_index_of(double(box[0]), s.N);
  // Scaled in double and rounded once to T, as torchvision (its spatial_scale is a double).
  const double scale = s.spatial_scale, offset = s.aligned ? 0.5 : 0.0;
  r.start_x = T(double(box[1]) * scale - offset);
  r.start_y = T(double(box[2]) * scale - offset);
  const T end_x = T(double(box[3]) * scale - offset), end_y = T(double(box[4]) * scale - offset);
  T roi_w = end_x - r.start_x, roi_h = end_y - r.start_y;
  if (!(std::isfinite(double(r.start_x)) && std::isfinite(double(r.start_y)) &&
        std::isfinite(double(roi_w)) && std::isfinite(double(roi_h)))) {
    r.batch = -1;  // NaN or infinite box: the RoI gives zeros (and no gradient)
    roi_w = roi_h = T(0);
  }
  if (!s.aligned) {
    roi_w = roi_w > T(1) ? roi_w : T(1);
    roi_h = roi_h > T(1) ? roi_h : T(1);
  }
  r.bin_h = roi_h / T(s.PH);
  r.bin_w = roi_w / T(s.PW);
  r.grid_h = adaptive_grid(double(roi_h), s.PH, s.sampling_ratio);
  r.grid_w = adaptive_grid(double(roi_w), s.PW, s.sampling_ratio);
  const int64_t count = r.grid_h * r.grid_w;
  r.inv_count = T(1) / T(count > 0 ? count : 1);
  return r;
}

// One sample's bilinear weights along one axis of `size` pixels: weight w_low at pixel `low` and
// w_high at `high` (low == high at the far edge, where w_high is 0). Returns false when the
// sample lies outside [-1, size] (torchvision: the whole sample then counts as 0), also for NaN.
template <typename T>
struct AxisTap {
  int64_t low, high;
  T w_low, w_high;
};

template <typename T>
PYCNN_ROI_FN bool axis_tap(T c, int64_t size, AxisTap<T>& t) {
  if (!(c >= T(-1) && c <= T(size))) return false;
  if (c <= T(0)) c = T(0);
  int64_t low = int64_t(c);
  int64_t high;
  if (low >= size - 1) {
    low = high = size - 1;
    c = T(low);
  } else {
    high = low + 1;
  }
  const T l = c - T(low);
  t.low = low;
  t.high = high;
  t.w_low = T(1) - l;
  t.w_high = l;
  return true;
}

// Sample coordinate i of bin b along an axis.
template <typename T>
PYCNN_ROI_FN T sample_at(T start, T bin, int64_t b, int64_t i, int64_t grid) {
  return start + T(b) * bin + (T(i) + T(0.5)) * bin / T(grid);
}

// RoIPool: torchvision's integer geometry. The box corners are rounded to whole pixels (after
// scaling) and the RoI is at least 1x1; bin b along an axis covers pixels
// [start + floor(b * bin), start + ceil((b + 1) * bin)) clipped to the image.
struct PoolRoi {
  int64_t batch;       // -1: out of range or a non-finite box (the RoI gives zeros)
  int64_t start_y, start_x, height, width;
};

template <typename T>
PYCNN_ROI_FN PoolRoi pool_roi(const RoiShape& s, const T* box) {
  PoolRoi r{batch_index_of(double(box[0]), s.N), 0, 0, 1, 1};
  int64_t c[4];
  for (int i = 0; i < 4; ++i) {
    const double v = std::round(double(box[1 + i]) * s.spatial_scale);  // in double, as torchvision
    // NaN/inf: no RoI; huge values are clamped (2^40 is far outside any feature map) so the
    // integer math below cannot overflow.
    if (!std::isfinite(v)) { r.batch = -1; return r; }
    const double lim = 1099511627776.0;
    c[i] = int64_t(v < -lim ? -lim : (v > lim ? lim : v));
  }
  r.start_x = c[0];
  r.start_y = c[1];
  r.width = c[2] - c[0] + 1 > 1 ? c[2] - c[0] + 1 : 1;
  r.height = c[3] - c[1] + 1 > 1 ? c[3] - c[1] + 1 : 1;
  return r;
}

// Pixels [begin, end) of bin b of a RoI axis (start, length) cut into `bins`, clipped to [0, size).
template <typename T>
PYCNN_ROI_FN void pool_bin(int64_t start, int64_t length, int64_t bins, int64_t b, int64_t size,
                           int64_t& begin, int64_t& end) {
  const T bin = T(length) / T(bins);  // in T, as torchvision (float32 rounding included)
  int64_t lo = int64_t(std::floor(T(b) * bin)) + start;
  int64_t hi = int64_t(std::ceil(T(b + 1) * bin)) + start;
  begin = lo < 0 ? 0 : (lo > size ? size : lo);
  end = hi < 0 ? 0 : (hi > size ? size : hi);
}

// IoU of boxes a and b (x1, y1, x2, y2), torchvision's formula; NaN for NaN input, and 0/0 = NaN
// for two empty boxes (NaN compares false: never suppresses).
template <typename T>
PYCNN_ROI_FN T box_iou(const T* a, const T* b) {
  const T area_a = (a[2] - a[0]) * (a[3] - a[1]);
  const T area_b = (b[2] - b[0]) * (b[3] - b[1]);
  const T left = a[0] > b[0] ? a[0] : b[0], top = a[1] > b[1] ? a[1] : b[1];
  const T right = a[2] < b[2] ? a[2] : b[2], bottom = a[3] < b[3] ? a[3] : b[3];
  const T w = right - left > T(0) ? right - left : T(0);
  const T h = bottom - top > T(0) ? bottom - top : T(0);
  const T inter = w * h;
  return inter / (area_a + area_b - inter);
}

}  // namespace pycnn::roi
