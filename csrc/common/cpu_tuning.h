// Two small CPU helpers shared by the memory-bound kernels (batchnorm, depthwise).
//
// 1. ISA variants. The wheel is built for baseline x86-64 (SSE2), but the hot inner loops are
//    worth 4x more lanes on AVX-512 machines. A kernel body is written once as an
//    always-inline template; thin wrappers compile it under `PYCNN_TARGET_AVX512` and under the
//    default target, and `cpu_has_avx512()` (checked once) picks one at run time.
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

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define PYCNN_X86_DISPATCH 1
#define PYCNN_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma,prefer-vector-width=512")))
#define PYCNN_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define PYCNN_X86_DISPATCH 0
#define PYCNN_TARGET_AVX512
#define PYCNN_ALWAYS_INLINE inline
#endif

namespace pycnn {

inline bool cpu_has_avx512() {
#if PYCNN_X86_DISPATCH
  // PYCNN_CPU_BASELINE=1 forces the portable build of the kernels (to test it on any machine).
  static const bool has = [] {
    const char* v = std::getenv("PYCNN_CPU_BASELINE");
    if (v && std::strcmp(v, "1") == 0) return false;
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
  }();
  return has;
#else
  return false;
#endif
}

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


// Independent partial sums for vectorised reductions: 32 floats or 16 doubles = two AVX-512
// registers, so the compiler vectorises without -ffast-math and two FMA chains hide the add
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
