// The vector layer every fast CPU kernel is written on, once, for every target.
//
// A kernel source (csrc/cpu/*.cpp) is compiled once per target by CMake (pycnn_add_isa in
// CMakeLists.txt) with PYCNN_ISA set to avx512, avx2, neon or generic. Everything it defines
// lives in namespace pycnn::cpu::PYCNN_ISA, so the four builds of one template never share a
// mangled name: the linker cannot keep the AVX-512 copy of a kernel and run it on an AVX2 CPU.
// csrc/cpu/isa.cpp picks one target's kernel table at import.
//
// Why a pragma rather than -mavx2 on the whole file: -m flags would also compile the standard
// library templates the file instantiates (std::vector, std::sort, std::function...) for that
// target, and those are weak symbols merged across targets by the linker (checked with objdump:
// with -mavx2 std::sort's helpers came out as AVX code, with the pragma as baseline code). The
// target region (PYCNN_TARGET_BEGIN below) starts after every standard header, so only the kernel
// code gets the target's instructions. Rule: include this header LAST in a kernel source.
//
// The vectors are GCC/Clang vector extensions, `vec<T>` = kVectorBytes / sizeof(T) lanes of T:
// + - * / compare and ?: work lane-wise; loads and stores go through memcpy (unaligned). A few
// per-target intrinsics: fma, and loads/stores of a lane range (the zero padding of convs).
#pragma once

#if !defined(PYCNN_ISA)
#error "kernel sources are compiled per target: define PYCNN_ISA (avx512, avx2, neon or generic)"
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(PYCNN_ISA_AVX512) || defined(PYCNN_ISA_AVX2)
#include <immintrin.h>
#elif defined(PYCNN_ISA_NEON)
#include <arm_neon.h>
#endif

// ---- the target's instructions: between PYCNN_TARGET_BEGIN and PYCNN_TARGET_END ------------
// A kernel source writes PYCNN_TARGET_BEGIN after its last #include (this header) and
// PYCNN_TARGET_END at its very end; this header brackets its own code the same way. Macros
// rather than one pragma left open to the end of the file because Clang wants each
// `#pragma clang attribute push` popped in the file that pushed it. GCC: a target pragma;
// Clang: the target attribute on every function (lambdas included) in between.
#define PYCNN_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define PYCNN_TARGET_PUSH(features) \
  PYCNN_PRAGMA(clang attribute push(__attribute__((target(features))), apply_to = function))
#define PYCNN_TARGET_POP PYCNN_PRAGMA(clang attribute pop)
#else
#define PYCNN_TARGET_PUSH(features) PYCNN_PRAGMA(GCC push_options) PYCNN_PRAGMA(GCC target(features))
#define PYCNN_TARGET_POP PYCNN_PRAGMA(GCC pop_options)
#endif
// PYCNN_EMULATE_AVX512 (CMake option of that name, developers and CI only, never a
// release): the avx512 target keeps its 64-byte vectors, 32-register tiles and lane masks, but is
// compiled for AVX2 + FMA, its few AVX-512 intrinsics replaced below (FMA on the two 256-bit
// halves, lane ranges through the portable path). Its kernels then run, and are checked against
// the reference loops and torch, on CPUs without AVX-512; only the instruction encoding differs.
#if defined(PYCNN_ISA_AVX512) && defined(PYCNN_EMULATE_AVX512)
#define PYCNN_AVX512_EMULATED 1
#elif defined(PYCNN_ISA_AVX512)
#define PYCNN_NATIVE_AVX512 1
#endif
#if defined(PYCNN_AVX512_EMULATED)
#define PYCNN_TARGET_BEGIN PYCNN_TARGET_PUSH("avx2,fma,bmi,bmi2")
#elif defined(PYCNN_ISA_AVX512) && defined(__clang__)
// (Clang's target attribute takes no vector-width preference; explicit 64-byte vectors are
// compiled as 512-bit code anyway.)
#define PYCNN_TARGET_BEGIN PYCNN_TARGET_PUSH("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi,bmi2")
#elif defined(PYCNN_ISA_AVX512)
#define PYCNN_TARGET_BEGIN \
  PYCNN_TARGET_PUSH("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi,bmi2,prefer-vector-width=512")
#elif defined(PYCNN_ISA_AVX2)
#define PYCNN_TARGET_BEGIN PYCNN_TARGET_PUSH("avx2,fma,bmi,bmi2")
#endif
#if defined(PYCNN_TARGET_BEGIN)
#define PYCNN_TARGET_END PYCNN_TARGET_POP
#else  // neon: baseline on aarch64. generic: the baseline of the build (SSE2 on x86-64).
#define PYCNN_TARGET_BEGIN
#define PYCNN_TARGET_END
#endif

#define PYCNN_INLINE inline __attribute__((always_inline))

PYCNN_TARGET_BEGIN

namespace pycnn::cpu::PYCNN_ISA {

#if defined(PYCNN_ISA_AVX512)
constexpr int kVectorBytes = 64;
constexpr int kRegisters = 32;
constexpr const char* kIsaName = "avx512";
#elif defined(PYCNN_ISA_AVX2)
constexpr int kVectorBytes = 32;
constexpr int kRegisters = 16;
constexpr const char* kIsaName = "avx2";
#elif defined(PYCNN_ISA_NEON)
constexpr int kVectorBytes = 16;
constexpr int kRegisters = 32;
constexpr const char* kIsaName = "neon";
#else
constexpr int kVectorBytes = 16;
constexpr int kRegisters = 16;
constexpr const char* kIsaName = "generic";
#endif

template <typename T>
constexpr int kLanesOf = kVectorBytes / int(sizeof(T));

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(kVectorBytes)));
  typedef int32_t mask __attribute__((vector_size(kVectorBytes)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(kVectorBytes)));
  typedef int64_t mask __attribute__((vector_size(kVectorBytes)));
};
template <typename T>
using vec = typename VecOf<T>::type;
// Lane-wise comparison results (all bits set = true) and integer lane indices.
template <typename T>
using vmask = typename VecOf<T>::mask;
// The lane type of a vector (functions that take only vectors deduce it from them).
template <typename V>
using lane_t = std::remove_cv_t<std::remove_reference_t<decltype(std::declval<V>()[0])>>;

template <typename T>
PYCNN_INLINE vec<T> zero() {
  return vec<T>{};
}
// Every lane = x (a lane-list initialiser: `vec<T>{} + x` would add 0, one more instruction and
// -0.0 turned into +0.0).
template <typename T, size_t... I>
PYCNN_INLINE vec<T> broadcast_impl(T x, std::index_sequence<I...>) {
  return vec<T>{((void)I, x)...};
}
template <typename T>
PYCNN_INLINE vec<T> broadcast(T x) {
  return broadcast_impl<T>(x, std::make_index_sequence<kLanesOf<T>>());
}
template <typename T>
PYCNN_INLINE vec<T> load(const T* p) {
  vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T, typename V>
PYCNN_INLINE void store(T* p, V v) {
  static_assert(std::is_same_v<V, vec<T>>, "store: vector and pointer types differ");
  std::memcpy(p, &v, sizeof(v));
}

// a * b + c, fused where the target has FMA (one rounding; the generic build rounds twice).
#if defined(PYCNN_AVX512_EMULATED)
// a * b + c lane-wise with one rounding, as AVX2 FMAs (fma256) on each 256-bit piece P of V.
template <typename P, typename V, typename F>
PYCNN_INLINE V fma_by_pieces(V a, V b, V c, F fma256) {
  constexpr int n = int(sizeof(V) / sizeof(P));
  P pa[n], pb[n], pc[n];
  std::memcpy(pa, &a, sizeof(V)), std::memcpy(pb, &b, sizeof(V)), std::memcpy(pc, &c, sizeof(V));
  for (int i = 0; i < n; ++i) pa[i] = fma256(pa[i], pb[i], pc[i]);
  std::memcpy(&a, pa, sizeof(V));
  return a;
}
#endif

PYCNN_INLINE vec<float> fma(vec<float> a, vec<float> b, vec<float> c) {
#if defined(PYCNN_AVX512_EMULATED)
  return fma_by_pieces<__m256>(a, b, c, [](__m256 x, __m256 y, __m256 z) { return _mm256_fmadd_ps(x, y, z); });
#elif defined(PYCNN_NATIVE_AVX512)
  return _mm512_fmadd_ps(a, b, c);
#elif defined(PYCNN_ISA_AVX2)
  return _mm256_fmadd_ps(a, b, c);
#elif defined(PYCNN_ISA_NEON)
  return vfmaq_f32(c, a, b);
#else
  return a * b + c;
#endif
}
PYCNN_INLINE vec<double> fma(vec<double> a, vec<double> b, vec<double> c) {
#if defined(PYCNN_AVX512_EMULATED)
  return fma_by_pieces<__m256d>(a, b, c, [](__m256d x, __m256d y, __m256d z) { return _mm256_fmadd_pd(x, y, z); });
#elif defined(PYCNN_NATIVE_AVX512)
  return _mm512_fmadd_pd(a, b, c);
#elif defined(PYCNN_ISA_AVX2)
  return _mm256_fmadd_pd(a, b, c);
#elif defined(PYCNN_ISA_NEON)
  return vfmaq_f64(c, a, b);
#else
  return a * b + c;
#endif
}

// {0, 1, 2, ...}: lane indices, for lane masks built by comparison.
template <typename T, size_t... I>
PYCNN_INLINE vmask<T> iota_impl(std::index_sequence<I...>) {
  return vmask<T>{typename std::remove_reference<decltype(vmask<T>{}[0])>::type(I)...};
}
template <typename T>
PYCNN_INLINE vmask<T> lane_index() {
  return iota_impl<T>(std::make_index_sequence<kLanesOf<T>>());
}

// Lanes [lo, hi) of p (p[lo] .. p[hi-1]); the other lanes are 0 and their memory is never read,
// so p + lane may point outside the tensor for lanes outside the range. lo, hi are clamped to
// [0, lanes].
template <typename T>
PYCNN_INLINE vec<T> load_range(const T* p, int64_t lo, int64_t hi) {
  constexpr int L = kLanesOf<T>;
  lo = std::clamp<int64_t>(lo, 0, L);
  hi = std::clamp<int64_t>(hi, lo, L);
  if (lo == 0 && hi == L) return load(p);
#if defined(PYCNN_NATIVE_AVX512)
  const auto m = static_cast<uint32_t>(((uint64_t(1) << hi) - 1) & ~((uint64_t(1) << lo) - 1));
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);  // lanes off the mask are not dereferenced
  if constexpr (sizeof(T) == 4) return _mm512_maskz_loadu_ps(__mmask16(m), reinterpret_cast<const float*>(a));
  else return _mm512_maskz_loadu_pd(__mmask8(m), reinterpret_cast<const double*>(a));
#elif defined(PYCNN_ISA_AVX2)
  using I = lane_t<vmask<T>>;
  const vmask<T> idx = lane_index<T>();
  const vmask<T> m = (idx >= I(lo)) & (idx < I(hi));
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if constexpr (sizeof(T) == 4) return _mm256_maskload_ps(reinterpret_cast<const float*>(a), __m256i(m));
  else return _mm256_maskload_pd(reinterpret_cast<const double*>(a), __m256i(m));
#else
  T buf[L] = {};
  if (hi > lo) std::memcpy(buf + lo, reinterpret_cast<const T*>(reinterpret_cast<uintptr_t>(p) + lo * sizeof(T)),
                           size_t(hi - lo) * sizeof(T));
  return load(buf);
#endif
}

// p[lane] = v[lane] for lanes [0, n) (clamped); memory past p + n is not touched.
template <typename T, typename V>
PYCNN_INLINE void store_first(T* p, V v, int64_t n) {
  static_assert(std::is_same_v<V, vec<T>>, "store_first: vector and pointer types differ");
  constexpr int L = kLanesOf<T>;
  n = std::clamp<int64_t>(n, 0, L);
  if (n == L) return store(p, v);
#if defined(PYCNN_NATIVE_AVX512)
  const auto m = static_cast<uint32_t>((uint64_t(1) << n) - 1);
  if constexpr (sizeof(T) == 4) _mm512_mask_storeu_ps(p, __mmask16(m), v);
  else _mm512_mask_storeu_pd(p, __mmask8(m), v);
#elif defined(PYCNN_ISA_AVX2)
  const vmask<T> m = lane_index<T>() < lane_t<vmask<T>>(n);
  if constexpr (sizeof(T) == 4) _mm256_maskstore_ps(p, __m256i(m), v);
  else _mm256_maskstore_pd(p, __m256i(m), v);
#else
  T buf[L];
  store(buf, v);
  std::memcpy(p, buf, size_t(n) * sizeof(T));
#endif
}

// Streaming (non-temporal) stores, for outputs larger than the caches. A plain store to a line
// that is not in cache first reads the whole line from memory (read-for-ownership); in a
// training step the fresh output buffers of the large layers are such memory (the step's
// saved activations exceed L3). A non-temporal store writes the line without that read. x86:
// p must be aligned to the vector's size (store_stream_first checks and falls back to store);
// other targets: plain stores. After its last streaming store each thread calls stream_fence()
// (x86 sfence: the stores are weakly ordered, and another thread reads the output next).
template <typename T, typename V>
PYCNN_INLINE void store_stream(T* p, V v) {
  static_assert(std::is_same_v<V, vec<T>>, "store_stream: vector and pointer types differ");
#if defined(PYCNN_NATIVE_AVX512)
  if constexpr (sizeof(T) == 4) _mm512_stream_ps(p, v);
  else _mm512_stream_pd(p, v);
#elif defined(PYCNN_ISA_AVX2) || defined(PYCNN_AVX512_EMULATED)
  // (emulated avx512: its 64-byte vector as two 32-byte halves)
  for (size_t h = 0; h < sizeof(V); h += 32) {
    __m256 piece;
    std::memcpy(&piece, reinterpret_cast<const char*>(&v) + h, 32);
    _mm256_stream_ps(reinterpret_cast<float*>(reinterpret_cast<char*>(p) + h), piece);
  }
#else
  store(p, v);
#endif
}
// store_first, streamed where the whole vector is stored to an aligned address.
template <typename T, typename V>
PYCNN_INLINE void store_stream_first(T* p, V v, int64_t n) {
  if (n >= kLanesOf<T> && reinterpret_cast<uintptr_t>(p) % sizeof(V) == 0) return store_stream(p, v);
  store_first(p, v, n);
}
PYCNN_INLINE void stream_fence() {
#if defined(PYCNN_ISA_AVX2) || defined(PYCNN_ISA_AVX512)
  _mm_sfence();
#endif
}

// The first n lanes of p (the rest 0); never reads past p + n.
template <typename T>
PYCNN_INLINE vec<T> load_first(const T* p, int64_t n) {
  return load_range(p, 0, n);
}

// Lane-wise select: m ? a : b (m from a comparison of vectors).
template <typename M, typename V>
PYCNN_INLINE V select(M m, V a, V b) {
  return m ? a : b;
}

// Sum of the lanes in a fixed order (halves added pairwise), the same on every call.
template <typename V>
PYCNN_INLINE lane_t<V> reduce_add(V v) {
  using T = lane_t<V>;
  constexpr int L = kLanesOf<T>;
  T a[L];
  store(a, v);
  for (int w = L / 2; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) a[i] += a[i + w];
  return a[0];
}

// ---- shuffles with compile-time patterns -----------------------------------------------
// The lanes of the pair (a, b) numbered 0 .. 2L-1 (a first); the result takes lane f(i).
template <typename T, typename F, size_t... I>
PYCNN_INLINE vec<T> shuffle2_impl(vec<T> a, vec<T> b, std::index_sequence<I...>) {
#if defined(__clang__)
  return __builtin_shufflevector(a, b, F::at(I)...);
#else
  using E = typename std::remove_reference<decltype(vmask<T>{}[0])>::type;
  constexpr vmask<T> idx = {E(F::at(I))...};
  return __builtin_shuffle(a, b, idx);
#endif
}
struct EvenPattern { static constexpr int at(size_t i) { return int(2 * i); } };
struct OddPattern { static constexpr int at(size_t i) { return int(2 * i + 1); } };
template <int L>
struct InterleaveLoPattern { static constexpr int at(size_t i) { return int(i / 2 + (i % 2) * L); } };
template <int L>
struct InterleaveHiPattern { static constexpr int at(size_t i) { return int(L / 2 + i / 2 + (i % 2) * L); } };

// Even lanes of the pair: {a0, a2, ..., b0, b2, ...} (a row read at stride 2).
template <typename V>
PYCNN_INLINE V even_lanes(V a, V b) {
  using T = lane_t<V>;
  return shuffle2_impl<T, EvenPattern>(a, b, std::make_index_sequence<kLanesOf<T>>());
}
template <typename V>
PYCNN_INLINE V odd_lanes(V a, V b) {
  using T = lane_t<V>;
  return shuffle2_impl<T, OddPattern>(a, b, std::make_index_sequence<kLanesOf<T>>());
}
// {a0, b0, a1, b1, ...} for the first half of the lanes, and for the second half.
template <typename V>
PYCNN_INLINE V interleave_lo(V a, V b) {
  using T = lane_t<V>;
  return shuffle2_impl<T, InterleaveLoPattern<kLanesOf<T>>>(a, b, std::make_index_sequence<kLanesOf<T>>());
}
template <typename V>
PYCNN_INLINE V interleave_hi(V a, V b) {
  using T = lane_t<V>;
  return shuffle2_impl<T, InterleaveHiPattern<kLanesOf<T>>>(a, b, std::make_index_sequence<kLanesOf<T>>());
}

// Lanes [first, first + n) of a row read at stride sw (1 or 2): lane t = row[first + t*sw] for
// t in [lo, hi), 0 elsewhere; elements outside those lanes are never read (row + first may
// point outside the tensor). Stride 2 loads the even elements of 2L and compacts them.
template <typename T>
PYCNN_INLINE vec<T> load_row_strided(const T* row, int64_t first, int64_t lo, int64_t hi, int64_t sw) {
  constexpr int L = kLanesOf<T>;
  const T* p = reinterpret_cast<const T*>(reinterpret_cast<uintptr_t>(row) + first * int64_t(sizeof(T)));
  if (sw == 1) return load_range(p, lo, hi);
  // Element 2t lies in the first vector for t < L/2; the odd elements in between may be read
  // only where they are inside [2 lo, 2 hi - 1) (so never outside the live range).
  lo = std::clamp<int64_t>(lo, 0, L);
  hi = std::clamp<int64_t>(hi, lo, L);
  const vec<T> a = load_range(p, 2 * lo, 2 * hi - 1);
  const vec<T> b = load_range(reinterpret_cast<const T*>(reinterpret_cast<uintptr_t>(p) + L * sizeof(T)),
                              2 * lo - L, 2 * hi - 1 - L);
  return even_lanes(a, b);
}

}  // namespace pycnn::cpu::PYCNN_ISA

PYCNN_TARGET_END
