// Greedy non-maximum suppression and pairwise IoU on CPU (torchvision.ops semantics; the IoU
// formula is common/roi_math.h's, shared with the CUDA kernels).
//
// nms_sorted works on boxes already sorted by descending score (the Python layer sorts, stably,
// so ties keep their input order): box i is kept unless a kept box before it, of the same
// category when categories are given, overlaps it with IoU > iou_threshold. O(n^2) IoUs at
// worst; suppressed boxes are skipped as soon as they are found, so crowded scenes are faster.
// Without categories (nms, the RPN's proposals) the IoUs of box i with the boxes after it are
// computed L at a time from coordinate rows (vec.h lanes): 600 random boxes (~170k pairs), one
// thread, AVX-512: 0.08 ms against 0.94 ms for the scalar pair loop, which batched_nms keeps.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common/parallel.h"
#include "common/roi_math.h"
#include "cpu/kernels.h"
#include "simd/vec.h"

PYCNN_TARGET_BEGIN  // this target's instructions from here to PYCNN_TARGET_END

namespace pycnn::cpu::PYCNN_ISA {

namespace {

// The scalar pair loop (categories given: batched_nms).
template <typename T>
int64_t nms_pairs(int64_t n, const T* boxes, const int64_t* categories, double iou_threshold, uint8_t* keep) {
  std::fill(keep, keep + n, uint8_t(1));
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (!keep[i]) continue;
    ++kept;
    const T* a = boxes + 4 * i;
    for (int64_t j = i + 1; j < n; ++j) {
      if (!keep[j]) continue;
      if (categories != nullptr && categories[j] != categories[i]) continue;
      // compared in double, as torchvision (the threshold is a double)
      if (double(roi::box_iou(a, boxes + 4 * j)) > iou_threshold) keep[j] = 0;
    }
  }
  return kept;
}

// The largest T t with t <= threshold: for any T value v, double(v) > threshold exactly when
// v > t, so the lanes compare in T what the pair loop compares in double (NaN: nothing passes).
template <typename T>
T threshold_below(double threshold) {
  constexpr T big = std::numeric_limits<T>::max(), inf = std::numeric_limits<T>::infinity();
  if (threshold != threshold) return std::numeric_limits<T>::quiet_NaN();
  if (threshold > double(big)) return big;
  if (threshold < -double(big)) return -inf;
  T t = static_cast<T>(threshold);
  if (double(t) > threshold) t = std::nextafter(t, -inf);
  return t;
}

// The pair loop's arithmetic (roi::box_iou, operation for operation) on L boxes j at once,
// from coordinate rows x1, y1, x2, y2 (np apart). Padding boxes are all zero: IoU 0 / 0 or 0.
template <typename T>
int64_t nms_lanes(int64_t n, const T* boxes, double iou_threshold, uint8_t* keep) {
  using V = vec<T>;
  using M = vmask<T>;
  using I = lane_t<M>;
  constexpr int L = kLanesOf<T>;
  const int64_t np = (n + L - 1) / L * L + L;  // a vector from any j < n stays inside
  std::vector<T> rows(size_t(4 * np), T(0));
  std::vector<I> alive(size_t(np), I(0));    // all bits set: not suppressed (a lane mask)
  for (int64_t i = 0; i < n; ++i) {
    for (int k = 0; k < 4; ++k) rows[size_t(k * np + i)] = boxes[4 * i + k];
    alive[size_t(i)] = I(-1);
  }
  const T* x1 = rows.data();
  const T *y1 = x1 + np, *x2 = y1 + np, *y2 = x2 + np;
  const V t = broadcast(threshold_below<T>(iou_threshold)), z = zero<T>();
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    keep[i] = alive[size_t(i)] != 0;
    if (!keep[i]) continue;
    ++kept;
    const V a0 = broadcast(x1[i]), a1 = broadcast(y1[i]), a2 = broadcast(x2[i]), a3 = broadcast(y2[i]);
    const V area_a = (a2 - a0) * (a3 - a1);
    for (int64_t j = i + 1; j < n; j += L) {
      const V b0 = load(x1 + j), b1 = load(y1 + j), b2 = load(x2 + j), b3 = load(y2 + j);
      const V area_b = (b2 - b0) * (b3 - b1);
      const V left = select(a0 > b0, a0, b0), top = select(a1 > b1, a1, b1);
      const V right = select(a2 < b2, a2, b2), bottom = select(a3 < b3, a3, b3);
      const V w = select(right - left > z, right - left, z);
      const V h = select(bottom - top > z, bottom - top, z);
      const V inter = w * h;
      const V iou = inter / (area_a + area_b - inter);
      M live;
      std::memcpy(&live, alive.data() + j, sizeof(live));
      live &= ~M(iou > t);
      std::memcpy(alive.data() + j, &live, sizeof(live));
    }
  }
  return kept;
}

}  // namespace

template <typename T>
int64_t nms_sorted(int64_t n, const T* boxes, const int64_t* categories, double iou_threshold,
                   uint8_t* keep) {
  if (categories != nullptr) return nms_pairs(n, boxes, categories, iou_threshold, keep);
  return nms_lanes(n, boxes, iou_threshold, keep);
}

template <typename T>
void box_iou(int64_t n, int64_t m, const T* a, const T* b, T* out) {
  if (n == 0 || m == 0) return;
  parallel_for(n, std::max<int64_t>(1, 16384 / m), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int64_t j = 0; j < m; ++j) out[i * m + j] = roi::box_iou(a + 4 * i, b + 4 * j);
  });
}

template int64_t nms_sorted<float>(int64_t, const float*, const int64_t*, double, uint8_t*);
template int64_t nms_sorted<double>(int64_t, const double*, const int64_t*, double, uint8_t*);
template void box_iou<float>(int64_t, int64_t, const float*, const float*, float*);
template void box_iou<double>(int64_t, int64_t, const double*, const double*, double*);

}  // namespace pycnn::cpu::PYCNN_ISA

PYCNN_TARGET_END
