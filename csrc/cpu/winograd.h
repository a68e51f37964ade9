// Winograd F(2x2, 3x3) convolution for 3x3 stride-1 float convs (AVX-512): the fast path that
// conv.cpp tries first; the direct and im2col + GEMM kernels there are the plain ones it is
// tested against (through torch's outputs, which all of them must match).
#pragma once
#include "common/shapes.h"

namespace pycnn::cpu {

// Whether the Winograd forward takes this float conv on this CPU: AVX-512, 3x3, stride 1,
// dilation 1, one group, enough channels (4 in and out) to pay for the transforms.
bool winograd_applies(const Conv2dShape& s);

// y = conv2d(x, w) + bias when the shape qualifies (float, AVX-512, 3x3, stride 1, dilation 1,
// one group, enough channels to pay for the transforms); returns false, writing nothing, when not.
bool conv2d_forward_winograd_f32(const Conv2dShape& s, const float* x, const float* w, const float* bias /*nullable*/,
                                 float* y);
// gw = the weight gradient (sum over the batch) under the same conditions, with 8+ input
// channels, while one chunk's partial sums fit in 4 MiB and all chunks' in 16 MiB; returns
// false, writing nothing, when not.
bool conv2d_backward_weight_winograd_f32(const Conv2dShape& s, const float* x, const float* gy, float* gw);

}  // namespace pycnn::cpu
