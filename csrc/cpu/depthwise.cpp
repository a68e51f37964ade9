// STUB: not implemented yet
#include <stdexcept>
#include "cpu/kernels.h"
namespace pycnn::cpu {
template <typename T> void depthwise_conv2d_forward(const Conv2dShape&, const T*, const T*, const T*, T*) { throw std::runtime_error("depthwise_conv2d_forward: not implemented yet"); }
template void depthwise_conv2d_forward<float>(const Conv2dShape&, const float*, const float*, const float*, float*);
template void depthwise_conv2d_forward<double>(const Conv2dShape&, const double*, const double*, const double*, double*);
template <typename T> void depthwise_conv2d_backward_input(const Conv2dShape&, const T*, const T*, T*) { throw std::runtime_error("depthwise_conv2d_backward_input: not implemented yet"); }
template void depthwise_conv2d_backward_input<float>(const Conv2dShape&, const float*, const float*, float*);
template void depthwise_conv2d_backward_input<double>(const Conv2dShape&, const double*, const double*, double*);
template <typename T> void depthwise_conv2d_backward_weight(const Conv2dShape&, const T*, const T*, T*, T*) { throw std::runtime_error("depthwise_conv2d_backward_weight: not implemented yet"); }
template void depthwise_conv2d_backward_weight<float>(const Conv2dShape&, const float*, const float*, float*, float*);
template void depthwise_conv2d_backward_weight<double>(const Conv2dShape&, const double*, const double*, double*, double*);
}
