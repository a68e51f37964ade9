// Greedy non-maximum suppression and pairwise IoU on CPU (torchvision.ops semantics; the IoU
// formula is common/roi_math.h's, shared with the CUDA kernels).
//
// nms_sorted works on boxes already sorted by descending score (the Python layer sorts, stably,
// so ties keep their input order): box i is kept unless a kept box before it, of the same
// category when categories are given, overlaps it with IoU > iou_threshold. O(n^2) IoUs at
// worst, ~2 ns each: 6000 RPN proposals take ~30 ms when few are suppressed; suppressed boxes
// are skipped as soon as they are found, so crowded scenes are faster.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/parallel.h"
#include "common/roi_math.h"
#include "cpu/kernels.h"
#include "simd/vec.h"

namespace pycnn::cpu::PYCNN_ISA {

template <typename T>
int64_t nms_sorted(int64_t n, const T* boxes, const int64_t* categories, double iou_threshold,
                   uint8_t* keep) {
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
