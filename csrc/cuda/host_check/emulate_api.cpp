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
// "count<TAB>kernel expression<TAB>kernel signature" per line, then the largest grid.y/z seen.
const char* emu_launch_report() {
  report.clear();
  for (const auto& [id, n] : pycnn_emu::launches) {
    const size_t space = id.find('\x01');
    report += std::to_string(n) + "\t" + id.substr(0, space) + "\t" + demangle(id.substr(space + 1)) + "\n";
  }
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
