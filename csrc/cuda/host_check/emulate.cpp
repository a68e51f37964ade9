// CPU emulator for the CUDA kernels' device code: compiles the very same sources
// (gemm_kernel.cuh, index_math.cuh, conv_plan.cuh) with a host compiler, runs each CUDA block
// as one std::thread per CUDA thread with a std::barrier for __syncthreads, and exposes
// extern "C" entry points that check.py compares with torch on the CPU. It checks tiling,
// bounds, vector-load conditions and index math on machines without a GPU; it says nothing
// about timing, memory-model or compiler issues specific to the GPU.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <memory>
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
#define __launch_bounds__(n)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
using std::fma;

#include "cuda/conv_plan.cuh"
#include "cuda/gemm_kernel.cuh"
#include "cuda/index_math.cuh"

using namespace pycnn;
using namespace pycnn::cuda;
using namespace pycnn::cuda::gemm_detail;

template <class Body>
void run_grid(dim3 grid, unsigned threads, Body body) {
  blockDim = {threads, 1, 1};
  gridDim = grid;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        std::barrier<> bar(threads);
        g_barrier = &bar;
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < threads; ++t)
          ts.emplace_back([&, t] {
            threadIdx = {t, 1, 1};
            threadIdx.y = threadIdx.z = 0;
            blockIdx = {x, y, z};
            body();
          });
        for (auto& th : ts) th.join();
      }
}

// Same launch logic as gemm.cu's launch_gemm (one grid; the tests stay below the y/z limits).
template <typename T, class Cfg, bool TA, bool TB>
void emu_launch(const GemmProblem<T>& p) {
  bool va, vb;
  vector_flags<T, Cfg>(p, va, vb);
  const unsigned tm = unsigned((p.M + Cfg::BM - 1) / Cfg::BM), tn = unsigned((p.N + Cfg::BN - 1) / Cfg::BN);
  const unsigned nb = unsigned(p.outer_count * p.inner_count);
  if (!tm || !tn || !nb) return;
  run_grid({tn, tm, nb}, Cfg::kThreads, [&] { gemm_kernel<T, Cfg, TA, TB>(p, 0, 0, va, vb); });
}

template <typename T, class Cfg>
void emu_cfg(const GemmProblem<T>& p) {
  if (p.trans_a) {
    if (p.trans_b) emu_launch<T, Cfg, true, true>(p); else emu_launch<T, Cfg, true, false>(p);
  } else {
    if (p.trans_b) emu_launch<T, Cfg, false, true>(p); else emu_launch<T, Cfg, false, false>(p);
  }
}

template <typename T>
void emu_gemm(const GemmProblem<T>& p, int cfg) {
  using C = Configs<T>;
  if (cfg == 0) emu_cfg<T, typename C::Big>(p);
  else if (cfg == 1) emu_cfg<T, typename C::Mid>(p);
  else emu_cfg<T, typename C::Small>(p);
}

Conv2dShape shape_of(const int64_t* v) {
  return Conv2dShape::from(std::vector<int64_t>(v, v + 16));
}

template <typename T>
void emu_conv(int which, const int64_t* sv, int cfg, const T* x, const T* w, const T* bias, const T* gy,
              T* out, T* out2, int64_t ws_elems) {
  const Conv2dShape s = shape_of(sv);
  std::vector<T> ws(size_t(std::max<int64_t>(ws_elems, 1)));
  const int64_t cols = conv_plan::col_per_sample(s), L = s.OH * s.OW;
  const bool pw = s.is_pointwise();
  const int64_t chunk = conv_plan::chunk_size(s, !pw, ws_elems, "emu");
  auto im2col = [&](int64_t batch, const T* xs) {
    ConvGeom<int64_t> g = ConvGeom<int64_t>::from(s);
    for (int64_t i = 0; i < batch * s.C * L; ++i) im2col_element(g, i, xs, ws.data());
  };
  for (int64_t n0 = 0; n0 < s.N; n0 += chunk) {
    const int64_t batch = std::min(chunk, s.N - n0);
    const T* xs = x + n0 * s.C * s.H * s.W;
    if (which == 0) {  // forward
      if (!pw) im2col(batch, xs);
      emu_gemm(conv_plan::forward(s, n0, batch, w, pw ? xs : ws.data(), pw ? s.C * s.H * s.W : cols, bias, out), cfg);
    } else if (which == 1) {  // input gradient
      T* gxs = out + n0 * s.C * s.H * s.W;
      if (pw) {
        emu_gemm(conv_plan::backward_input(s, n0, batch, w, gy, gxs, s.C * s.H * s.W), cfg);
      } else {
        emu_gemm(conv_plan::backward_input(s, n0, batch, w, gy, ws.data(), cols), cfg);
        ConvGeom<int64_t> g = ConvGeom<int64_t>::from(s);
        for (int64_t i = 0; i < batch * s.C * s.H * s.W; ++i) gxs[i] = col2im_element(g, i, ws.data());
      }
    } else {  // weight gradient
      if (!pw) im2col(batch, xs);
      emu_gemm(conv_plan::backward_weight(s, n0, batch, gy, pw ? xs : ws.data(), pw ? s.C * s.H * s.W : cols, out), cfg);
    }
  }
}

template <typename T>
void emu_depthwise(int which, const int64_t* sv, const T* x, const T* w, const T* bias, const T* gy, T* out) {
  const Conv2dShape s = shape_of(sv);
  ConvGeom<int64_t> g = ConvGeom<int64_t>::from(s);
  const int64_t mult = s.K / s.C;
  if (which == 0) {
    for (int64_t i = 0; i < s.N * s.K * s.OH * s.OW; ++i) out[i] = depthwise_forward_element(g, s.K, mult, i, x, w, bias);
  } else if (which == 1) {
    for (int64_t i = 0; i < s.N * s.C * s.H * s.W; ++i) out[i] = depthwise_input_grad_element(g, mult, i, gy, w);
  } else {
    for (int64_t k = 0; k < s.K; ++k)
      for (int64_t i = 0; i < s.kh; ++i)
        for (int64_t j = 0; j < s.kw; ++j) {
          double a = 0;
          for (int64_t e = 0; e < s.N * s.OH * s.OW; ++e) a += depthwise_weight_term(g, s.K, mult, k, i, j, e, x, gy);
          out[(k * s.kh + i) * s.kw + j] = T(a);
        }
  }
}

template <typename T>
void emu_pool(int which, const int64_t* sv, const T* x, const T* gy, T* out, int64_t* idx) {
  const Pool2dShape s = Pool2dShape::from(std::vector<int64_t>(sv, sv + 13));
  PoolGeom<int32_t> g = PoolGeom<int32_t>::from(s);  // the int32 path, as the GPU runs it
  if (which == 0)
    for (int32_t i = 0; i < int32_t(s.planes * s.OH * s.OW); ++i) max_pool_element(g, i, x, out, idx);
  else
    for (int32_t i = 0; i < int32_t(s.planes * s.H * s.W); ++i) out[i] = max_pool_grad_element(g, i, gy, idx);
}

extern "C" {
// dtype 0 = float, 1 = double. prob: ta, tb, M, N, K, lda, ldb, ldc, outer, inner, a_outer,
// a_inner, b_outer, b_inner, c_outer, c_inner, slabs, a_slab, b_slab, bias_mode, bias_inner.
void emu_gemm_problem(int dtype, int cfg, const int64_t* q, double alpha, double beta, const void* A,
                      const void* B, void* C, const void* bias) {
  auto fill = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    GemmProblem<T> p;
    p.trans_a = q[0]; p.trans_b = q[1]; p.M = q[2]; p.N = q[3]; p.K = q[4];
    p.lda = q[5]; p.ldb = q[6]; p.ldc = q[7]; p.outer_count = q[8]; p.inner_count = q[9];
    p.a_outer = q[10]; p.a_inner = q[11]; p.b_outer = q[12]; p.b_inner = q[13];
    p.c_outer = q[14]; p.c_inner = q[15]; p.slabs = q[16]; p.a_slab = q[17]; p.b_slab = q[18];
    p.bias_mode = BiasMode(q[19]); p.bias_inner = q[20];
    p.alpha = T(alpha); p.beta = T(beta);
    p.A = static_cast<const T*>(A); p.B = static_cast<const T*>(B); p.C = static_cast<T*>(C);
    p.bias = static_cast<const T*>(bias);
    emu_gemm(p, cfg);
  };
  if (dtype == 0) fill(static_cast<float*>(nullptr)); else fill(static_cast<double*>(nullptr));
}
void emu_conv_f64(int which, const int64_t* s, int cfg, const double* x, const double* w, const double* b,
                  const double* gy, double* out, int64_t ws_elems) {
  emu_conv<double>(which, s, cfg, x, w, b, gy, out, nullptr, ws_elems);
}
void emu_conv_f32(int which, const int64_t* s, int cfg, const float* x, const float* w, const float* b,
                  const float* gy, float* out, int64_t ws_elems) {
  emu_conv<float>(which, s, cfg, x, w, b, gy, out, nullptr, ws_elems);
}
void emu_depthwise_f64(int which, const int64_t* s, const double* x, const double* w, const double* b,
                       const double* gy, double* out) {
  emu_depthwise<double>(which, s, x, w, b, gy, out);
}
void emu_pool_f64(int which, const int64_t* s, const double* x, const double* gy, double* out, int64_t* idx) {
  emu_pool<double>(which, s, x, gy, out, idx);
}
}
