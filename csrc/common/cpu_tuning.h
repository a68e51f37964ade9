// Two small CPU helpers shared by the memory-bound kernels (batchnorm, depthwise, pool).
//
// 1. Independent partial sums (fold_lanes): reductions the compiler vectorises for each target
//    without -ffast-math (the kernels are compiled once per target, see simd/vec.h).
// 2. Huge pages for large fresh outputs. Outputs come from torch's allocator; a 32 MiB tensor
//    is a fresh mmap whose first touch costs one page fault per 4 KiB page: measured ~16 ms per
//    32 MiB on the dev VM, as much as the kernel itself. MADV_HUGEPAGE on the 2 MiB-aligned part
//    of the buffer (before the kernel writes it) turns 8192 faults into 16. Only a hint: where
//    THP is off the call does nothing. PYCNN_HUGEPAGES=0 in the environment disables it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#define PYCNN_ALWAYS_INLINE inline __attribute__((always_inline))

namespace pycnn {

inline void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = [] {
    const char* v = std::getenv("PYCNN_HUGEPAGES");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  // Below 8 MiB the faults cost little and a partly covered buffer gains little.
  if (!enabled || data == nullptr || bytes < 4 * kHuge) return;
  uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}


// Independent partial sums for vectorised reductions: 32 floats or 16 doubles (two AVX-512
// registers, four AVX2 ones), so the compiler vectorises without -ffast-math and two FMA chains hide the add
// latency. fold_lanes adds them pairwise (compile-time widths: each step is one vector add).
template <typename T>
constexpr int kLanes = int(128 / sizeof(T));

template <int Width, typename T>
PYCNN_ALWAYS_INLINE void fold_step(T* acc) {
  for (int j = 0; j < Width; ++j) acc[j] += acc[j + Width];
  if constexpr (Width > 1) fold_step<Width / 2>(acc);
}

template <typename T>
PYCNN_ALWAYS_INLINE T fold_lanes(T* acc) {
  fold_step<kLanes<T> / 2>(acc);
  return acc[0];
}

}  // namespace pycnn
