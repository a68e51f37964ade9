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

#include "common/roi_math.h"
#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

namespace pycnn::cuda {
namespace {

constexpr int kTile = 64;

template <typename T>
__global__ void nms_mask_kernel(int64_t n, int64_t words, const T* __restrict__ boxes,
                                const int64_t* __restrict__ categories, double threshold,
                                unsigned long long* __restrict__ mask) {
  const int64_t row_tile = blockIdx.y, col_tile = blockIdx.x;
  if (col_tile < row_tile) return;
  __shared__ T tile[kTile * 4];
  const int64_t col0 = col_tile * kTile;
  const int cols = int(min<int64_t>(kTile, n - col0));
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
