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

#include "cuda/common.cuh"
#include "cuda/kernels.cuh"
#include "cuda/roi_kernels.cuh"

namespace pycnn::cuda {

using namespace roi_detail;

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
