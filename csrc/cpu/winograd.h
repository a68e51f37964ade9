// Winograd convolution for 3x3 stride-1 float convs: the fast path conv.cpp tries first; the
// direct and im2col + GEMM kernels there are the plain ones it is tested against (through
// torch's outputs, which all of them must match). Written once over simd/vec.h.
#pragma once
#include "common/shapes.h"

namespace pycnn::cpu::PYCNN_ISA {

// The Winograd kernel that takes this float conv's forward on this target ("winograd" for
// F(2x2, 3x3), "winograd4x4" for F(4x4, 3x3)), or nullptr when none does (not 3x3 stride 1
// dilation 1 one group, too few channels, or Winograd switched off).
const char* winograd_forward_kernel(const Conv2dShape& s);

// y = conv2d(x, w) + bias when winograd_forward_kernel(s) names a kernel; returns false, writing
// nothing, when not.
bool conv2d_forward_winograd_f32(const Conv2dShape& s, const float* x, const float* w, const float* bias /*nullable*/,
                                 float* y);
// gw = the weight gradient (sum over the batch) where a Winograd weight-gradient kernel takes the
// shape; returns false, writing nothing, when not.
bool conv2d_backward_weight_winograd_f32(const Conv2dShape& s, const float* x, const float* gy, float* gw);

}  // namespace pycnn::cpu::PYCNN_ISA
