// The dtype codes and dispatch shared by the CPU (_C) and CUDA (_C_cuda) bindings: Python passes
// a code, the bindings call the kernel template for the matching C++ type.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace pycnn {

enum DType : int { kFloat32 = 0, kFloat64 = 1 };

template <typename T>
T* p(uintptr_t a) { return reinterpret_cast<T*>(a); }

// Calls body(tag) with decltype(tag) the C++ type of dtype code `dt`.
template <typename F>
auto dispatch(int dt, const char* op, F&& body) {
  switch (dt) {
    case kFloat32: return body(float{});
    case kFloat64: return body(double{});
  }
  throw std::invalid_argument(std::string(op) + ": unsupported dtype code " + std::to_string(dt));
}

}  // namespace pycnn

#define PYCNN_T using T = decltype(tag)
