// CPU emulator for the RoI and NMS kernels' device code (csrc/cuda/roi_kernels.cuh), in the
// manner of emulate.cpp: the same source compiled with a host compiler, each CUDA block run as
// one std::thread per CUDA thread with a std::barrier for __syncthreads. roi_check.py compares
// it with pycnn's CPU kernels. Grids are deliberately small (3 blocks of 5 threads) so the
// grid-stride loops wrap many times. Checks indexing, bounds and the gather formulation of the
// backward passes; nothing GPU-specific.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
static std::barrier<>* g_barrier = nullptr;
inline void __syncthreads() { g_barrier->arrive_and_wait(); }
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static

#include "cuda/roi_kernels.cuh"

using namespace pycnn;
using namespace pycnn::cuda::roi_detail;

template <class Body>
void run_grid(dim3 grid, unsigned threads, Body body) {
  blockDim = {threads, 1, 1};
  gridDim = grid;
  for (unsigned y = 0; y < grid.y; ++y)
    for (unsigned x = 0; x < grid.x; ++x) {
      std::barrier<> bar(threads);
      g_barrier = &bar;
      std::vector<std::thread> ts;
      for (unsigned t = 0; t < threads; ++t)
        ts.emplace_back([&, t, x, y] {
          threadIdx = {t, 0, 0};
          blockIdx = {x, y, 0};
          body();
        });
      for (auto& th : ts) th.join();
    }
}

static RoiShape shape_of(const int64_t* v, double scale, int64_t ratio, bool aligned) {
  return RoiShape::from(std::vector<int64_t>(v, v + 7), scale, ratio, aligned);
}
static const dim3 kSmallGrid{3, 1, 1};
static constexpr unsigned kSmallBlock = 5;

extern "C" {

// backward == 0: y = roi_align(x); else y = the input gradient for output gradient x.
void emu_roi_align_f64(const int64_t* v, double scale, int64_t ratio, int aligned, const double* x,
                       const double* rois, double* y, int backward) {
  const RoiShape s = shape_of(v, scale, ratio, aligned != 0);
  if (!backward) {
    const int64_t total = s.K * s.C * s.PH * s.PW;
    run_grid(kSmallGrid, kSmallBlock, [&] { roi_align_forward_kernel<double>(s, total, x, rois, y); });
  } else {
    const int64_t total = s.N * s.C * s.H * s.W;
    run_grid(kSmallGrid, kSmallBlock, [&] { roi_align_backward_kernel<double>(s, total, x, rois, y); });
  }
}

void emu_roi_pool_f64(const int64_t* v, double scale, const double* x, const double* rois, double* y,
                      int64_t* argmax, int backward) {
  const RoiShape s = shape_of(v, scale, 0, false);
  if (!backward) {
    const int64_t total = s.K * s.C * s.PH * s.PW;
    run_grid(kSmallGrid, kSmallBlock, [&] { roi_pool_forward_kernel<double>(s, total, x, rois, y, argmax); });
  } else {
    const int64_t total = s.N * s.C * s.H * s.W;
    run_grid(kSmallGrid, kSmallBlock, [&] { roi_pool_backward_kernel<double>(s, total, x, rois, argmax, y); });
  }
}

// keep[i] for n boxes sorted by descending score (the launch of nms.cu: 64-thread tiles, then the scan).
void emu_nms_f64(int64_t n, const double* boxes, const int64_t* categories, double threshold, uint8_t* keep) {
  const int64_t words = (n + kTile - 1) / kTile;
  std::vector<unsigned long long> mask(n * words, 0xdeadbeefull), suppressed(words);
  run_grid(dim3{unsigned(words), unsigned(words), 1}, kTile,
           [&] { nms_mask_kernel<double>(n, words, boxes, categories, threshold, mask.data()); });
  run_grid(dim3{1, 1, 1}, 1, [&] { nms_scan_kernel(n, words, mask.data(), suppressed.data(), keep); });
}

void emu_box_iou_f64(int64_t n, int64_t m, const double* a, const double* b, double* out) {
  run_grid(kSmallGrid, kSmallBlock, [&] { box_iou_kernel<double>(n, m, a, b, out); });
}

}  // extern "C"
