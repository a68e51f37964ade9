// STUB: not implemented yet
#include <stdexcept>
#include "cpu/kernels.h"
namespace pycnn::cpu {
template <typename T> void batch_norm_stats(int64_t, int64_t, int64_t, const T*, T*, T*) { throw std::runtime_error("batch_norm_stats: not implemented yet"); }
template void batch_norm_stats<float>(int64_t, int64_t, int64_t, const float*, float*, float*);
template void batch_norm_stats<double>(int64_t, int64_t, int64_t, const double*, double*, double*);
template <typename T> void batch_norm_apply(int64_t, int64_t, int64_t, const T*, const T*, const T*, const T*, const T*, T*) { throw std::runtime_error("batch_norm_apply: not implemented yet"); }
template void batch_norm_apply<float>(int64_t, int64_t, int64_t, const float*, const float*, const float*, const float*, const float*, float*);
template void batch_norm_apply<double>(int64_t, int64_t, int64_t, const double*, const double*, const double*, const double*, const double*, double*);
template <typename T> void batch_norm_backward(int64_t, int64_t, int64_t, const T*, const T*, const T*, const T*, const T*, bool, T*, T*, T*) { throw std::runtime_error("batch_norm_backward: not implemented yet"); }
template void batch_norm_backward<float>(int64_t, int64_t, int64_t, const float*, const float*, const float*, const float*, const float*, bool, float*, float*, float*);
template void batch_norm_backward<double>(int64_t, int64_t, int64_t, const double*, const double*, const double*, const double*, const double*, bool, double*, double*, double*);
}
