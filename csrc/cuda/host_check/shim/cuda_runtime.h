// The host emulator's <cuda_runtime.h>: what csrc/cuda's .cu files use of CUDA, implemented on
// the CPU, so that g++ compiles the very same kernel and launch code (host_check/check.py
// builds it). "Device" memory is host memory; streams are ignored (everything runs at once, in
// order).
//
// Execution model: a launch runs its blocks one after another; the threads of a block are
// cooperative fibers on one OS thread (started with makecontext, switched with _setjmp /
// _longjmp: no signal-mask system call per switch; built with -U_FORTIFY_SOURCE, whose
// longjmp check refuses jumps between stacks). A fiber runs until it reaches a barrier:
// __syncthreads waits for every thread of the block (one that exited first is an error), and
// each __shfl_down_sync waits for the 32 lanes of its warp twice (all lanes publish, then all
// read), which is exactly the shuffle's semantics. Rounds alternate the fiber order (forward, then reverse) so that a
// missing barrier shows up as a wrong result. Barrier misuse (a __syncthreads some threads
// skip, a full-mask shuffle with lanes absent or in another barrier) deadlocks the fibers: the
// emulator detects that and fails the launch (cudaErrorLaunchFailure, message in
// pycnn_emu::failure) instead of hanging.
//
// Not modelled: timing, the memory model across blocks (blocks never run concurrently here),
// shared-memory capacity, register limits, anything the GPU compiler does differently.
#pragma once
#include <setjmp.h>
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <typeinfo>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define CUDART_VERSION 13000
using std::fma;

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorLaunchFailure = 719,
};
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };

namespace pycnn_emu {

// Knobs the checks set (emulate_api.cpp): smaller device limits make small shapes take the
// split-grid, grid-stride and 64-bit-index paths of the launch code.
inline int64_t grid_yz_limit = 65535;
inline int64_t grid_x_cap = int64_t(1) << 20;
inline int64_t index32_limit = int64_t(1) << 30;
inline int device = 0;                            // cudaGetDevice
inline int sm_counts[4] = {132, 1, 1 << 20, 8};   // per emulated device: the GEMM tile choice follows it
inline cudaError_t forced_status = cudaSuccess;   // what cudaGetDeviceCount reports (driver checks)
inline int driver_version = 13000;

inline cudaError_t last_error = cudaSuccess;
inline std::string failure;                        // first barrier/launch failure, for the report
inline std::map<std::string, long> launches;       // kernel (name + parameter types) -> launches
inline std::map<std::string, std::set<const void*>> instances;  // kernel name -> template instances run
inline long max_blocks_y = 0, max_blocks_z = 0;

inline void fail(cudaError_t err, const std::string& why) {
  if (last_error == cudaSuccess) last_error = err;
  if (failure.empty()) failure = why;
}

enum class State { kRun, kBlockWait, kWarpWait, kDone };
struct Fiber {
  ucontext_t start;  // the entry, used once
  jmp_buf resume;    // where the fiber continues after its last yield
  bool started = false;
  State state = State::kRun;
  unsigned tid = 0;
};
struct Block {
  std::vector<Fiber> fibers;
  unsigned live = 0, block_waiting = 0;
  std::vector<unsigned> warp_waiting;
  std::vector<uint64_t> slots;  // 2 x 32 per warp: the shuffle exchange, double buffered
  std::vector<unsigned> parity;  // per warp: which half the next shuffle uses
};
constexpr size_t kStackBytes = 256 << 10;
inline jmp_buf scheduler;
inline ucontext_t scheduler_context;  // only for the first switch into each fiber
inline Block* block = nullptr;
inline Fiber* current = nullptr;
inline void (*body)(void*) = nullptr;
inline void* body_arg = nullptr;
inline std::vector<std::unique_ptr<char[]>> stacks;

inline void yield() {
  if (_setjmp(current->resume) == 0) _longjmp(scheduler, 1);
}

inline void fiber_entry() {
  body(body_arg);
  current->state = State::kDone;
  --block->live;
  _longjmp(scheduler, 1);  // never returns: the scheduler drops this stack
}

inline void warp_wait(unsigned warp) {
  current->state = State::kWarpWait;
  if (++block->warp_waiting[warp] == 32) {
    block->warp_waiting[warp] = 0;
    block->parity[warp] ^= 1u;
    for (unsigned l = 0; l < 32; ++l) block->fibers[warp * 32 + l].state = State::kRun;
  }
  yield();
}

// Runs one block: every thread calls body(arg). Returns false on a deadlock.
inline bool run_block(unsigned threads) {
  Block b;
  b.fibers.resize(threads);
  b.live = threads;
  b.warp_waiting.assign((threads + 31) / 32, 0);
  b.slots.assign(b.warp_waiting.size() * 64, 0);
  b.parity.assign(b.warp_waiting.size(), 0);
  while (stacks.size() < threads) stacks.emplace_back(new char[kStackBytes]);
  block = &b;
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = b.fibers[t];
    f.tid = t;
    getcontext(&f.start);
    f.start.uc_stack.ss_sp = stacks[t].get();
    f.start.uc_stack.ss_size = kStackBytes;
    f.start.uc_link = nullptr;
    makecontext(&f.start, fiber_entry, 0);
  }
  for (unsigned round = 0; b.live > 0; ++round) {
    bool progressed = false;
    for (unsigned k = 0; k < threads; ++k) {
      Fiber& f = b.fibers[round % 2 ? threads - 1 - k : k];
      if (f.state != State::kRun) continue;
      current = &f;
      threadIdx = dim3(f.tid, 0, 0);
      if (_setjmp(scheduler) == 0) {
        if (f.started) _longjmp(f.resume, 1);
        f.started = true;
        swapcontext(&scheduler_context, &f.start);
      }
      progressed = true;
      if (b.block_waiting > 0 && b.block_waiting == b.live) {  // everyone still running arrived
        if (b.live != threads) {  // CUDA requires the whole block at a __syncthreads
          fail(cudaErrorLaunchFailure, "__syncthreads reached by " + std::to_string(b.live) + " of " +
                                           std::to_string(threads) + " threads (the others exited)");
          block = nullptr;
          return false;
        }
        b.block_waiting = 0;
        for (Fiber& g : b.fibers)
          if (g.state == State::kBlockWait) g.state = State::kRun;
      }
    }
    if (!progressed) {
      unsigned at_block = 0, at_warp = 0;
      for (Fiber& g : b.fibers) at_block += g.state == State::kBlockWait, at_warp += g.state == State::kWarpWait;
      fail(cudaErrorLaunchFailure, "deadlock in block (" + std::to_string(blockIdx.x) + "," +
                                       std::to_string(blockIdx.y) + "," + std::to_string(blockIdx.z) + "): " +
                                       std::to_string(at_block) + " threads at __syncthreads, " +
                                       std::to_string(at_warp) + " in a warp shuffle, " +
                                       std::to_string(threads - b.live) + " exited");
      block = nullptr;
      return false;
    }
  }
  block = nullptr;
  return true;
}

template <class... P>
struct Launch {
  dim3 grid, threads;
  void (*kernel)(P...);
  const char* name;

  template <class... A>
  void operator()(A&&... args) const {
    const std::string id = std::string(name) + "\x01" + typeid(kernel).name();
    if (threads.x < 1 || threads.x > 1024 || threads.y != 1 || threads.z != 1 || grid.x < 1 ||
        grid.y < 1 || grid.z < 1 || int64_t(grid.y) > grid_yz_limit || int64_t(grid.z) > grid_yz_limit ||
        grid.x > 0x7fffffffu) {
      fail(cudaErrorInvalidConfiguration, "invalid launch configuration of " + id + ": grid (" +
                                              std::to_string(grid.x) + "," + std::to_string(grid.y) + "," +
                                              std::to_string(grid.z) + "), block " + std::to_string(threads.x));
      return;
    }
    ++launches[id];
    instances[name].insert(reinterpret_cast<const void*>(kernel));
    max_blocks_y = std::max<long>(max_blocks_y, grid.y);
    max_blocks_z = std::max<long>(max_blocks_z, grid.z);
    // Arguments are copied once, as the launch copies them into parameter memory.
    std::tuple<P...> params(static_cast<P>(args)...);
    struct Call {
      void (*kernel)(P...);
      std::tuple<P...>* params;
      static void run(void* self) {
        auto* c = static_cast<Call*>(self);
        std::apply(c->kernel, *c->params);
      }
    } call{kernel, &params};
    body = &Call::run;
    body_arg = &call;
    blockDim = threads;
    gridDim = grid;
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          blockIdx = dim3(x, y, z);
          if (!run_block(threads.x)) return;
        }
  }
};
template <class... P>
Launch<P...> launch(dim3 grid, dim3 threads, cudaStream_t, void (*kernel)(P...), const char* name) {
  return {grid, threads, kernel, name};
}

}  // namespace pycnn_emu

#define PYCNN_LAUNCH(grid, block, stream, ...) ::pycnn_emu::launch((grid), (block), (stream), __VA_ARGS__, #__VA_ARGS__)
#define PYCNN_GRID_YZ_LIMIT (::pycnn_emu::grid_yz_limit)
#define PYCNN_GRID_X_CAP (::pycnn_emu::grid_x_cap)
#define PYCNN_INDEX32_LIMIT (::pycnn_emu::index32_limit)

inline void __syncthreads() {
  using namespace pycnn_emu;
  current->state = State::kBlockWait;
  ++block->block_waiting;
  yield();
}

template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, int delta) {
  using namespace pycnn_emu;
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffles move at most 8 bytes here");
  if (mask != 0xffffffffu || blockDim.x % 32 != 0)
    fail(cudaErrorLaunchFailure, "__shfl_down_sync with a partial mask or a partial warp (blockDim.x " +
                                     std::to_string(blockDim.x) + ")");
  // Publish, wait for the warp, read. Two halves of slots alternate: a lane can only write this
  // half again two shuffles later, after every lane has passed the next shuffle's wait, so all
  // reads of it are done.
  const unsigned lane = current->tid & 31, warp = current->tid >> 5;
  uint64_t* slots = &block->slots[warp * 64 + block->parity[warp] * 32];
  std::memcpy(&slots[lane], &v, sizeof(T));
  warp_wait(warp);  // every lane has published (the last one to arrive flips the parity)
  T r = v;
  if (delta >= 0 && lane + unsigned(delta) < 32) std::memcpy(&r, &slots[lane + delta], sizeof(T));
  return r;
}

inline unsigned long long atomicMin(unsigned long long* address, unsigned long long v) {
  const unsigned long long old = *address;  // fibers never interleave inside this call
  if (v < old) *address = v;
  return old;
}

// ---- runtime API ----------------------------------------------------------------------------
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}
inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    default: return "cudaErrorOther";
  }
}
inline cudaError_t cudaGetLastError() {
  const cudaError_t e = pycnn_emu::last_error;
  pycnn_emu::last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  std::memset(p, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t) {
  *p = std::malloc(n ? n : 1);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memcpy(dst, src, n);
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return pycnn_emu::last_error; }
inline cudaError_t cudaGetDevice(int* d) {
  *d = pycnn_emu::device;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int d) {
  if (d < 0 || d >= 4) return cudaErrorInvalidValue;
  *v = pycnn_emu::sm_counts[d];
  return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int* v) {
  *v = pycnn_emu::driver_version;
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = pycnn_emu::forced_status == cudaSuccess ? 4 : 0;
  return pycnn_emu::forced_status;
}
