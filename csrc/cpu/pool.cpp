// STUB: not implemented yet
#include <stdexcept>
#include "cpu/kernels.h"
namespace pycnn::cpu {
template <typename T> void max_pool2d_forward(const Pool2dShape&, const T*, T*, int64_t*) { throw std::runtime_error("max_pool2d_forward: not implemented yet"); }
template void max_pool2d_forward<float>(const Pool2dShape&, const float*, float*, int64_t*);
template void max_pool2d_forward<double>(const Pool2dShape&, const double*, double*, int64_t*);
template <typename T> void max_pool2d_backward(const Pool2dShape&, const T*, const int64_t*, T*) { throw std::runtime_error("max_pool2d_backward: not implemented yet"); }
template void max_pool2d_backward<float>(const Pool2dShape&, const float*, const int64_t*, float*);
template void max_pool2d_backward<double>(const Pool2dShape&, const double*, const int64_t*, double*);
template <typename T> int64_t max_unpool2d_forward(int64_t, int64_t, int64_t, const T*, const int64_t*, T*) { throw std::runtime_error("max_unpool2d_forward: not implemented yet"); }
template int64_t max_unpool2d_forward<float>(int64_t, int64_t, int64_t, const float*, const int64_t*, float*);
template int64_t max_unpool2d_forward<double>(int64_t, int64_t, int64_t, const double*, const int64_t*, double*);
template <typename T> void max_unpool2d_backward(int64_t, int64_t, int64_t, const T*, const int64_t*, T*) { throw std::runtime_error("max_unpool2d_backward: not implemented yet"); }
template void max_unpool2d_backward<float>(int64_t, int64_t, int64_t, const float*, const int64_t*, float*);
template void max_unpool2d_backward<double>(int64_t, int64_t, int64_t, const double*, const int64_t*, double*);
}
