// Controls of the host emulator, linked into the emulated _C_cuda module (see check.py) and
// called through ctypes: device limits to force the rarely taken launch paths, the emulated
// driver status, and what ran (kernel launches, barrier failures).
#include <cxxabi.h>

#include <cuda_runtime.h>  // the emulator's (shim/)

#include <string>

namespace {
std::string demangle(const std::string& mangled) {
  int status = 0;
  char* s = abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status);
  std::string out = status == 0 && s ? s : mangled;
  std::free(s);
  return out;
}
std::string report;
}  // namespace

extern "C" {
// Negative values keep the current setting.
void emu_configure(long long grid_yz_limit, long long grid_x_cap, long long index32_limit, int device) {
  using namespace pycnn_emu;
  if (grid_yz_limit >= 0) pycnn_emu::grid_yz_limit = grid_yz_limit;
  if (grid_x_cap >= 0) pycnn_emu::grid_x_cap = grid_x_cap;
  if (index32_limit >= 0) pycnn_emu::index32_limit = index32_limit;
  if (device >= 0) pycnn_emu::device = device;
}
int emu_sm_count(int device) { return pycnn_emu::sm_counts[device]; }
void emu_set_driver(int status, int driver_version) {
  pycnn_emu::forced_status = cudaError_t(status);
  pycnn_emu::driver_version = driver_version;
}
// "count<TAB>kernel expression<TAB>kernel signature" per line, then "instances:<kernel>
// <TAB>distinct template instances launched", then the largest grid.y/z seen.
const char* emu_launch_report() {
  report.clear();
  for (const auto& [id, n] : pycnn_emu::launches) {
    const size_t space = id.find('\x01');
    report += std::to_string(n) + "\t" + id.substr(0, space) + "\t" + demangle(id.substr(space + 1)) + "\n";
  }
  for (const auto& [name, set] : pycnn_emu::instances) report += "instances:" + name + "\t" + std::to_string(set.size()) + "\n";
  report += "max_grid_y\t" + std::to_string(pycnn_emu::max_blocks_y) + "\nmax_grid_z\t" +
            std::to_string(pycnn_emu::max_blocks_z) + "\n";
  return report.c_str();
}
const char* emu_failure() { return pycnn_emu::failure.c_str(); }
void emu_clear_failure() {
  pycnn_emu::failure.clear();
  pycnn_emu::last_error = cudaSuccess;
}
}

// ---- self-test of the barrier and warp model: a check that cannot fail proves nothing ----------
#include "cuda/common.cuh"

namespace {
__global__ void selftest_block_sum(double* out) {
  __shared__ double partial[1024 / 32];
  const double s = pycnn::cuda::block_sum(double(threadIdx.x), partial);
  if (threadIdx.x == 0) *out = s;
}
__global__ void selftest_divergent_sync(int* out) {
  if (threadIdx.x < 16) __syncthreads();  // the other threads never arrive
  out[threadIdx.x] = 1;
}
__global__ void selftest_half_warp_shuffle(double* out) {
  if (threadIdx.x < 16) out[threadIdx.x] = pycnn::cuda::warp_sum(1.0);  // full mask, half the lanes
}
__global__ void selftest_missing_sync(int* out) {
  __shared__ int shared[64];
  shared[threadIdx.x] = int(threadIdx.x);
  out[threadIdx.x] = shared[63 - threadIdx.x];  // needs a __syncthreads before the read
}
}  // namespace

extern "C" {
// 0 = the model behaves; otherwise the number of the check that failed.
int emu_selftest() {
  double sum = 0;
  PYCNN_LAUNCH(1, 64, nullptr, selftest_block_sum)(&sum);
  if (sum != 64 * 63 / 2 || cudaGetLastError() != cudaSuccess) return 1;
  PYCNN_LAUNCH(1, 1024, nullptr, selftest_block_sum)(&sum);
  if (sum != 1024.0 * 1023 / 2 || cudaGetLastError() != cudaSuccess) return 2;
  int flags[64] = {};
  PYCNN_LAUNCH(1, 32, nullptr, selftest_divergent_sync)(flags);
  if (cudaGetLastError() != cudaErrorLaunchFailure) return 3;
  double lanes[32] = {};
  PYCNN_LAUNCH(1, 32, nullptr, selftest_half_warp_shuffle)(lanes);
  if (cudaGetLastError() != cudaErrorLaunchFailure) return 4;
  int got[64] = {};
  PYCNN_LAUNCH(1, 64, nullptr, selftest_missing_sync)(got);  // the race must show as a wrong value
  bool all_right = true;
  for (int t = 0; t < 64; ++t) all_right = all_right && got[t] == 63 - t;
  if (all_right) return 5;
  PYCNN_LAUNCH(dim3(1, 65536, 1), 32, nullptr, selftest_block_sum)(&sum);  // grid.y over the limit
  if (cudaGetLastError() != cudaErrorInvalidConfiguration) return 6;
  pycnn_emu::failure.clear();
  pycnn_emu::launches.clear();
  pycnn_emu::instances.clear();
  return 0;
}
}
