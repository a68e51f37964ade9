// Greedy NMS and pairwise IoU on CUDA (same IoU code as the CPU: common/roi_math.h).
//
// NMS in two steps over boxes sorted by descending score (the Python layer sorts):
//  1. overlap mask: thread i of a 64 x 64 tile sets bit j of mask[i][tile column] when j > i,
//     j is in i's category and IoU(i, j) > threshold. n^2 / 2 IoUs, all in parallel;
//  2. the greedy scan: one thread walks the boxes in order, keeping box i unless a kept box
//     already suppressed it, and ORs box i's mask row into the suppressed set. n * n/64 word
//     operations (6000 boxes: 0.56 M, well under a millisecond even on one thread).
// No atomics: deterministic. The mask (n * ceil(n / 64) words) and the suppressed set
// (ceil(n / 64) words) live in a workspace the caller allocates (torch owns GPU memory).
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/kernels.cuh"
#include "cuda/roi_kernels.cuh"

namespace pycnn::cuda {

using namespace roi_detail;

int64_t nms_workspace_words(int64_t n) {
  const int64_t words = (n + kTile - 1) / kTile;
  return n * words + words;
}

template <typename T>
void nms_sorted(Stream stream, int64_t n, const T* boxes, const int64_t* categories, double iou_threshold,
                uint8_t* keep, unsigned long long* workspace) {
  if (n == 0) return;
  const int64_t words = (n + kTile - 1) / kTile;
  if (words > 65535) throw std::runtime_error("nms: too many boxes for the CUDA kernel (" + std::to_string(n) + ")");
  unsigned long long* mask = workspace;
  unsigned long long* suppressed = workspace + n * words;
  nms_mask_kernel<T><<<dim3(unsigned(words), unsigned(words)), kTile, 0, stream>>>(
      n, words, boxes, categories, iou_threshold, mask);
  check_launch("nms");
  nms_scan_kernel<<<1, 1, 0, stream>>>(n, words, mask, suppressed, keep);
  check_launch("nms");
}

template <typename T>
void box_iou(Stream stream, int64_t n, int64_t m, const T* a, const T* b, T* out) {
  if (n == 0 || m == 0) return;
  box_iou_kernel<T><<<grid_for(n * m), kThreads, 0, stream>>>(n, m, a, b, out);
  check_launch("box_iou");
}

template void nms_sorted<float>(Stream, int64_t, const float*, const int64_t*, double, uint8_t*, unsigned long long*);
template void nms_sorted<double>(Stream, int64_t, const double*, const int64_t*, double, uint8_t*, unsigned long long*);
template void box_iou<float>(Stream, int64_t, int64_t, const float*, const float*, float*);
template void box_iou<double>(Stream, int64_t, int64_t, const double*, const double*, double*);

}  // namespace pycnn::cuda
