// What the CUDA runtime says about this machine, for pycnn's first-use check (native.py): the
// module links the CUDA runtime statically, so a driver older than that runtime only shows up
// as cudaErrorInsufficientDriver on the first call, which Python turns into a clear error.
#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

namespace pycnn::cuda {

RuntimeStatus runtime_status() {
  RuntimeStatus r;
  r.runtime_version = CUDART_VERSION;
  if (cudaDriverGetVersion(&r.driver_version) != cudaSuccess) r.driver_version = 0;  // no driver
  const cudaError_t err = cudaGetDeviceCount(&r.devices);
  if (err != cudaSuccess) {
    r.devices = 0;
    r.error = int(err);
    r.error_name = cudaGetErrorName(err);
    r.message = cudaGetErrorString(err);
    cudaGetLastError();  // clear it: later calls report their own errors
  }
  return r;
}

int insufficient_driver_code() { return int(cudaErrorInsufficientDriver); }

}  // namespace pycnn::cuda
