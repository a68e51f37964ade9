// Shapes shared by the CPU and CUDA kernels. Every tensor is contiguous NCHW (row-major);
// the Python layer has checked sizes, dtypes and devices before any kernel runs, so kernels
// trust these numbers.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace pycnn {

// x: [N, C, H, W], weight: [K, C/groups, kh, kw], y: [N, K, OH, OW].
struct Conv2dShape {
  int64_t N, C, H, W;     // input
  int64_t K, OH, OW;      // output channels and size
  int64_t kh, kw;         // kernel
  int64_t sh, sw;         // stride
  int64_t ph, pw;         // padding (top/left; bottom/right follow from OH/OW)
  int64_t dh, dw;         // dilation
  int64_t groups;

  int64_t C_per_group() const { return C / groups; }
  int64_t K_per_group() const { return K / groups; }
  // Rows of one group's column matrix (C/g * kh * kw) and its columns (OH * OW).
  int64_t col_rows() const { return C_per_group() * kh * kw; }
  int64_t col_cols() const { return OH * OW; }
  // The im2col of 1x1 stride-1 unpadded convolutions is the input itself.
  bool is_pointwise() const {
    return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0 && OH == H && OW == W;
  }

  static Conv2dShape from(const std::vector<int64_t>& v) {
    if (v.size() != 16) throw std::invalid_argument("Conv2dShape needs 16 integers, got " + std::to_string(v.size()));
    return {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13], v[14], v[15]};
  }
};

// One pooling window over `planes` = N * C independent H x W planes.
struct Pool2dShape {
  int64_t planes, H, W, OH, OW;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;

  static Pool2dShape from(const std::vector<int64_t>& v) {
    if (v.size() != 13) throw std::invalid_argument("Pool2dShape needs 13 integers, got " + std::to_string(v.size()));
    return {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12]};
  }
};

// RoIAlign / RoIPool: input [N, C, H, W], K boxes (batch index, x1, y1, x2, y2) in the input's
// dtype, output [K, C, PH, PW]. Boxes are in image coordinates, scaled by spatial_scale.
struct RoiShape {
  int64_t N, C, H, W, K, PH, PW;
  int64_t sampling_ratio;  // RoIAlign: samples per bin side; <= 0 adaptive
  double spatial_scale;
  bool aligned;            // RoIAlign: shift by half a pixel

  static RoiShape from(const std::vector<int64_t>& v, double spatial_scale, int64_t sampling_ratio, bool aligned) {
    if (v.size() != 7) throw std::invalid_argument("RoiShape needs 7 integers, got " + std::to_string(v.size()));
    return {v[0], v[1], v[2], v[3], v[4], v[5], v[6], sampling_ratio, spatial_scale, aligned};
  }
};

}  // namespace pycnn
