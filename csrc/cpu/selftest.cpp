// pycnn_selftest: every CPU kernel, on every target this CPU runs, against plain reference loops
// written here (float and double, odd shapes, padding, stride, dilation, groups). No Python and
// no torch, so it runs natively on each x86 target and under qemu-aarch64 for NEON (CI does both).
//
//   pycnn_selftest            all targets this CPU runs
//   pycnn_selftest avx2       one target
// Exit status 0 when every comparison passes; each failure prints one line.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "common/parallel.h"
#include "cpu/kernels.h"

using pycnn::Conv2dShape;
using pycnn::Pool2dShape;
using pycnn::RoiShape;
using pycnn::cpu::ops;

namespace {

int g_failures = 0, g_checks = 0;

template <typename T>
std::vector<T> random_vector(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> d(0.0, 1.0);
  std::vector<T> v(n);
  for (auto& x : v) x = T(d(gen));
  return v;
}

template <typename T>
const char* type_name() {
  return sizeof(T) == 4 ? "float" : "double";
}

// max |a - b| <= tol * (1 + max |b|): kernels and references sum in different orders.
template <typename T>
void expect_close(const std::string& what, const std::vector<T>& got, const std::vector<double>& want) {
  ++g_checks;
  double err = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::fabs(double(got[i]) - want[i]);
    err = std::isnan(e) ? INFINITY : std::max(err, e);
    scale = std::max(scale, std::fabs(want[i]));
  }
  const double tol = (sizeof(T) == 4 ? 2e-5 : 1e-12) * (1 + scale);
  if (!(err <= tol)) {
    ++g_failures;
    std::printf("FAIL %s (%s): max error %.3g > %.3g\n", what.c_str(), type_name<T>(), err, tol);
  }
}

std::string describe(const Conv2dShape& s) {
  char b[200];
  std::snprintf(b, sizeof b, "N%lld C%lld %lldx%lld K%lld k%lldx%lld s%lld,%lld p%lld,%lld d%lld,%lld g%lld",
                (long long)s.N, (long long)s.C, (long long)s.H, (long long)s.W, (long long)s.K, (long long)s.kh,
                (long long)s.kw, (long long)s.sh, (long long)s.sw, (long long)s.ph, (long long)s.pw,
                (long long)s.dh, (long long)s.dw, (long long)s.groups);
  return b;
}

// ---- GEMM ----------------------------------------------------------------------------------
template <typename T>
void check_gemm(const char* isa) {
  const int64_t sizes[][3] = {{1, 1, 1}, {7, 13, 5}, {6, 16, 32}, {12, 32, 64}, {37, 41, 600}, {200, 70, 1100}};
  for (auto& mnk : sizes)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        const int64_t M = mnk[0], N = mnk[1], K = mnk[2];
        const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
        const auto A = random_vector<T>(size_t((ta ? K : M) * lda), 1), B = random_vector<T>(size_t((tb ? N : K) * ldb), 2);
        for (double beta : {0.0, 0.5}) {
          auto C = random_vector<T>(size_t(M * ldc), 3), R = C;
          ops<T>().gemm(ta, tb, M, N, K, T(1.5), A.data(), lda, B.data(), ldb, T(beta), C.data(), ldc);
          ops<T>().gemm_reference(ta, tb, M, N, K, T(1.5), A.data(), lda, B.data(), ldb, T(beta), R.data(), ldc);
          std::vector<double> want(R.begin(), R.end());
          char what[120];
          std::snprintf(what, sizeof what, "%s gemm M%lld N%lld K%lld ta%d tb%d beta%g", isa, (long long)M, (long long)N,
                        (long long)K, ta, tb, beta);
          expect_close<T>(what, C, want);
        }
      }
}

// ---- convolution, by its definition --------------------------------------------------------
template <typename T>
void reference_conv(const Conv2dShape& s, const std::vector<T>& x, const std::vector<T>& w, const std::vector<T>& gy,
                    std::vector<double>& y, std::vector<double>& gx, std::vector<double>& gw) {
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups;
  y.assign(size_t(s.N * s.K * s.OH * s.OW), 0.0);
  gx.assign(x.size(), 0.0);
  gw.assign(w.size(), 0.0);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t k = 0; k < s.K; ++k)
      for (int64_t oh = 0; oh < s.OH; ++oh)
        for (int64_t ow = 0; ow < s.OW; ++ow) {
          const int64_t yi = ((n * s.K + k) * s.OH + oh) * s.OW + ow;
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t i = 0; i < s.kh; ++i)
              for (int64_t j = 0; j < s.kw; ++j) {
                const int64_t h = oh * s.sh - s.ph + i * s.dh, v = ow * s.sw - s.pw + j * s.dw;
                if (h < 0 || h >= s.H || v < 0 || v >= s.W) continue;
                const int64_t xi = ((n * s.C + (k / Kg) * Cg + c) * s.H + h) * s.W + v;
                const int64_t wi = ((k * Cg + c) * s.kh + i) * s.kw + j;
                y[size_t(yi)] += double(x[size_t(xi)]) * double(w[size_t(wi)]);
                gx[size_t(xi)] += double(gy[size_t(yi)]) * double(w[size_t(wi)]);
                gw[size_t(wi)] += double(gy[size_t(yi)]) * double(x[size_t(xi)]);
              }
        }
}

Conv2dShape conv_shape(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t kh, int64_t kw, int64_t sh,
                       int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups) {
  Conv2dShape s{N, C, H, W, K, 0, 0, kh, kw, sh, sw, ph, pw, dh, dw, groups};
  s.OH = (H + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
  s.OW = (W + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
  return s;
}

template <typename T>
void check_conv(const char* isa, const Conv2dShape& s, uint32_t seed) {
  const auto x = random_vector<T>(size_t(s.N * s.C * s.H * s.W), seed);
  const auto w = random_vector<T>(size_t(s.K * s.C_per_group() * s.kh * s.kw), seed + 1);
  const auto gy = random_vector<T>(size_t(s.N * s.K * s.OH * s.OW), seed + 2);
  std::vector<double> ry, rgx, rgw;
  reference_conv(s, x, w, gy, ry, rgx, rgw);
  std::vector<T> ws(size_t(std::max<int64_t>(1, s.N * s.C * s.kh * s.kw * s.OH * s.OW)));
  std::vector<T> y(ry.size()), gx(x.size()), gw(w.size()), gb(size_t(s.K));
  const bool depthwise = s.groups == s.C && s.groups > 1;
  const std::string d = std::string(isa) + " conv " + describe(s);
  if (depthwise) {
    ops<T>().depthwise_conv2d_forward(s, x.data(), w.data(), nullptr, y.data());
    ops<T>().depthwise_conv2d_backward_input(s, gy.data(), w.data(), gx.data());
    ops<T>().depthwise_conv2d_backward_weight(s, x.data(), gy.data(), gw.data(), gb.data());
    expect_close<T>(d + " depthwise forward", y, ry);
    expect_close<T>(d + " depthwise input grad", gx, rgx);
    expect_close<T>(d + " depthwise weight grad", gw, rgw);
  }
  ops<T>().conv2d_forward(s, x.data(), w.data(), nullptr, y.data(), ws.data(), int64_t(ws.size()));
  ops<T>().conv2d_backward_input(s, gy.data(), w.data(), gx.data(), ws.data(), int64_t(ws.size()));
  ops<T>().conv2d_backward_weight(s, x.data(), gy.data(), gw.data(), gb.data(), ws.data(), int64_t(ws.size()));
  const char* algo = pycnn::cpu::kernels().conv2d_forward_algorithm(s, sizeof(T) == 4);
  expect_close<T>(d + " forward (" + algo + ")", y, ry);
  expect_close<T>(d + " input grad", gx, rgx);
  expect_close<T>(d + " weight grad", gw, rgw);
  std::vector<double> rgb(size_t(s.K), 0.0);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t k = 0; k < s.K; ++k)
      for (int64_t p = 0; p < s.OH * s.OW; ++p) rgb[size_t(k)] += gy[size_t((n * s.K + k) * s.OH * s.OW + p)];
  expect_close<T>(d + " bias grad", gb, rgb);
}

template <typename T>
void check_convs(const char* isa) {
  const Conv2dShape shapes[] = {
      // Winograd shapes (3x3 stride 1, 4+ channels): tiles, partial tiles, tiny maps
      conv_shape(2, 16, 8, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1),
      conv_shape(3, 8, 7, 5, 9, 3, 3, 1, 1, 1, 1, 1, 1, 1),
      conv_shape(2, 12, 17, 19, 20, 3, 3, 1, 1, 0, 0, 1, 1, 1),
      conv_shape(1, 8, 2, 3, 8, 3, 3, 1, 1, 2, 2, 1, 1, 1),
      conv_shape(2, 33, 13, 21, 17, 3, 3, 1, 1, 1, 1, 1, 1, 1),
      // outputs (and input gradients) of 1 MiB and more in float: streaming stores (winograd.cpp
      // kStreamBytes), on aligned rows and on 67-wide rows that are mostly not
      conv_shape(4, 16, 64, 64, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1),
      conv_shape(2, 8, 61, 67, 33, 3, 3, 1, 1, 1, 1, 1, 1, 1),
      // direct / implicit-im2col shapes
      conv_shape(2, 1, 28, 28, 6, 5, 5, 1, 1, 0, 0, 1, 1, 1),
      conv_shape(2, 3, 11, 23, 5, 3, 3, 1, 1, 1, 1, 2, 2, 1),
      conv_shape(2, 5, 9, 37, 7, 3, 3, 2, 2, 1, 1, 1, 1, 1),
      conv_shape(2, 16, 16, 16, 32, 3, 3, 2, 2, 1, 1, 1, 1, 1),
      conv_shape(2, 5, 9, 63, 7, 3, 3, 2, 2, 1, 1, 1, 1, 1),  // stride 2, OW 32 (direct on every target), odd W
      conv_shape(2, 4, 14, 13, 6, 3, 3, 3, 1, 1, 1, 2, 2, 1),  // vertical stride 3, dilation 2: 3 row phases
      conv_shape(2, 6, 9, 11, 4, 2, 2, 2, 2, 0, 0, 1, 1, 1),   // kernel == stride, OW 5: shifted copies
      conv_shape(2, 16, 10, 10, 20, 1, 1, 1, 1, 0, 0, 1, 1, 1),
      conv_shape(2, 16, 10, 10, 20, 1, 1, 2, 2, 0, 0, 1, 1, 1),
      conv_shape(2, 6, 9, 8, 9, 3, 2, 2, 1, 1, 2, 1, 2, 3),
      conv_shape(2, 4, 16, 16, 6, 2, 2, 2, 2, 0, 0, 1, 1, 2),
      conv_shape(1, 2, 13, 11, 3, 5, 4, 3, 3, 2, 1, 1, 2, 1),
      conv_shape(2, 20, 12, 12, 20, 3, 3, 1, 1, 1, 1, 1, 1, 1),
      // depthwise (groups == C)
      conv_shape(2, 6, 15, 17, 6, 3, 3, 1, 1, 1, 1, 1, 1, 6),
      conv_shape(2, 4, 15, 17, 8, 3, 3, 2, 2, 1, 1, 1, 1, 4),
  };
  uint32_t seed = 10;
  for (const Conv2dShape& s : shapes) check_conv<T>(isa, s, seed += 3);
}

// ---- pooling, batch norm, linear -------------------------------------------------------------
template <typename T>
void check_pool(const char* isa) {
  const Pool2dShape shapes[] = {
      {3, 8, 8, 4, 4, 2, 2, 2, 2, 0, 0, 1, 1},        {2, 9, 37, 4, 18, 2, 2, 2, 2, 0, 0, 1, 1},
      {2, 16, 34, 8, 17, 2, 2, 2, 2, 0, 0, 1, 1},     {2, 11, 13, 6, 7, 3, 3, 2, 2, 1, 1, 1, 1},
      {2, 12, 12, 5, 5, 3, 3, 2, 2, 1, 1, 1, 1},
  };
  for (const Pool2dShape& s : shapes) {
    auto x = random_vector<T>(size_t(s.planes * s.H * s.W), 7);
    for (size_t i = 0; i < x.size(); i += 5) x[i] = x[i + 1 < x.size() ? i + 1 : i];  // ties
    std::vector<T> y(size_t(s.planes * s.OH * s.OW));
    std::vector<int64_t> idx(y.size());
    ops<T>().max_pool2d_forward(s, x.data(), y.data(), idx.data());
    std::vector<double> want(y.size());
    bool index_ok = true;
    for (int64_t p = 0; p < s.planes; ++p)
      for (int64_t oh = 0; oh < s.OH; ++oh)
        for (int64_t ow = 0; ow < s.OW; ++ow) {
          double best = -INFINITY;
          int64_t arg = -1;
          for (int64_t i = 0; i < s.kh; ++i)
            for (int64_t j = 0; j < s.kw; ++j) {
              const int64_t h = oh * s.sh - s.ph + i * s.dh, v = ow * s.sw - s.pw + j * s.dw;
              if (h < 0 || h >= s.H || v < 0 || v >= s.W) continue;
              const double e = x[size_t((p * s.H + h) * s.W + v)];
              if (arg < 0 || e > best) best = e, arg = h * s.W + v;
            }
          const size_t o = size_t((p * s.OH + oh) * s.OW + ow);
          want[o] = best;
          index_ok = index_ok && idx[o] == arg;
        }
    char what[120];
    std::snprintf(what, sizeof what, "%s max_pool2d %lldx%lld k%lld s%lld", isa, (long long)s.H, (long long)s.W,
                  (long long)s.kh, (long long)s.sh);
    expect_close<T>(what, y, want);
    ++g_checks;
    if (!index_ok) ++g_failures, std::printf("FAIL %s (%s): indices differ\n", what, type_name<T>());
  }
}

template <typename T>
void check_batch_norm(const char* isa, int64_t S) {
  const int64_t N = 3, C = 5;
  const auto x = random_vector<T>(size_t(N * C * S), 21);
  std::vector<T> mean(C), var(C), invstd(C), y(x.size());
  std::vector<T> stats_invstd(C);
  ops<T>().batch_norm_stats(N, C, S, x.data(), mean.data(), var.data(), stats_invstd.data(), 1e-5);
  std::vector<double> rmean(C, 0.0), rvar(C, 0.0), ry(x.size());
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < S; ++i) rmean[c] += x[size_t((n * C + c) * S + i)];
    rmean[c] /= double(N * S);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < S; ++i) rvar[c] += std::pow(x[size_t((n * C + c) * S + i)] - rmean[c], 2);
    rvar[c] /= double(N * S);
    invstd[c] = T(1 / std::sqrt(rvar[c] + 1e-5));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < S; ++i)
        ry[size_t((n * C + c) * S + i)] = (x[size_t((n * C + c) * S + i)] - double(mean[c])) * double(invstd[c]);
  }
  ops<T>().batch_norm_apply(N, C, S, x.data(), mean.data(), invstd.data(), nullptr, nullptr, nullptr, false,
                            y.data());
  const std::string name = std::string(isa) + " batch_norm S=" + std::to_string(S);
  expect_close<T>(name + " mean", mean, rmean);
  expect_close<T>(name + " var", var, rvar);
  expect_close<T>(name + " invstd", stats_invstd, std::vector<double>(invstd.begin(), invstd.end()));
  expect_close<T>(name + " apply", y, ry);
  // Fused with a residual and ReLU (ResNet's block end), and the backward through all three.
  const auto r = random_vector<T>(x.size(), 22), gy = random_vector<T>(x.size(), 23);
  std::vector<double> rfused(x.size()), rga(x.size()), rgx(x.size()), rgw(size_t(C), 0.0), rgb(size_t(C), 0.0);
  for (size_t i = 0; i < x.size(); ++i) rfused[i] = std::max(0.0, ry[i] + double(r[i]));
  ops<T>().batch_norm_apply(N, C, S, x.data(), mean.data(), invstd.data(), nullptr, nullptr, r.data(), true,
                            y.data());
  expect_close<T>(name + " apply + residual + relu", y, rfused);
  const double M = double(N * S);
  for (int64_t c = 0; c < C; ++c) {
    double sg = 0, sgx = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < S; ++i) {
        const size_t e = size_t((n * C + c) * S + i);
        rga[e] = y[e] > T(0) ? double(gy[e]) : 0.0;
        sg += rga[e];
        sgx += rga[e] * (double(x[e]) - double(mean[size_t(c)]));
      }
    const double is = double(invstd[size_t(c)]);
    rgb[size_t(c)] = sg;
    rgw[size_t(c)] = sgx * is;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < S; ++i) {
        const size_t e = size_t((n * C + c) * S + i);
        rgx[e] = is * (rga[e] - sg / M - (double(x[e]) - double(mean[size_t(c)])) * is * is * sgx / M);
      }
  }
  for (const bool store : {true, false}) {  // the masked gradient stored (a residual's) or recomputed
    std::vector<T> gx(x.size()), gw(static_cast<size_t>(C)), gb(static_cast<size_t>(C)), ga(store ? x.size() : 0);
    ops<T>().batch_norm_backward(N, C, S, x.data(), gy.data(), y.data(), mean.data(), invstd.data(), nullptr, true,
                                 gx.data(), gw.data(), gb.data(), store ? ga.data() : nullptr);
    const std::string b = name + (store ? " backward through relu, ga stored" : " backward through relu");
    expect_close<T>(b + " gx", gx, rgx);
    expect_close<T>(b + " gw", gw, rgw);
    expect_close<T>(b + " gb", gb, rgb);
    if (store) expect_close<T>(b + " ga", ga, rga);
  }
  std::vector<T> rm(size_t(C), T(0.5)), rv(size_t(C), T(2));
  std::vector<double> want_rm(static_cast<size_t>(C)), want_rv(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    want_rm[size_t(c)] = 0.9 * 0.5 + 0.1 * double(mean[size_t(c)]);
    want_rv[size_t(c)] = 0.9 * 2.0 + 0.1 * 1.5 * double(var[size_t(c)]);
  }
  ops<T>().batch_norm_update_running(C, mean.data(), var.data(), 0.1, 1.5, rm.data(), rv.data());
  expect_close<T>(name + " running mean", rm, want_rm);
  expect_close<T>(name + " running var", rv, want_rv);
}

template <typename T>
void check_linear(const char* isa) {
  const int64_t M = 9, N = 13, K = 35;
  const auto x = random_vector<T>(size_t(M * K), 31), w = random_vector<T>(size_t(N * K), 32);
  const auto b = random_vector<T>(size_t(N), 33);
  std::vector<T> y(size_t(M * N));
  ops<T>().linear_forward(M, N, K, x.data(), w.data(), b.data(), y.data());
  std::vector<double> want(y.size());
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double acc = b[size_t(j)];
      for (int64_t k = 0; k < K; ++k) acc += double(x[size_t(i * K + k)]) * double(w[size_t(j * K + k)]);
      want[size_t(i * N + j)] = acc;
    }
  expect_close<T>(std::string(isa) + " linear", y, want);
}

// ---- RoIAlign, RoIPool, NMS -----------------------------------------------------------------
// roi_align against bilinear loops written here (torchvision's sampling rule); its backward by
// the adjoint identity <roi_align(x), gy> == <x, roi_align_backward(gy)>; roi_pool against a
// window max; nms against greedy suppression over all pairs.
double bilinear(const std::vector<double>& plane, int64_t H, int64_t W, double y, double x) {
  if (y < -1 || y > H || x < -1 || x > W) return 0;
  y = std::max(y, 0.0), x = std::max(x, 0.0);
  int64_t y0 = int64_t(y), x0 = int64_t(x), y1 = y0 + 1, x1 = x0 + 1;
  if (y0 >= H - 1) y0 = y1 = H - 1, y = double(y0);
  if (x0 >= W - 1) x0 = x1 = W - 1, x = double(x0);
  const double ly = y - y0, lx = x - x0;
  return (1 - ly) * (1 - lx) * plane[size_t(y0 * W + x0)] + (1 - ly) * lx * plane[size_t(y0 * W + x1)] +
         ly * (1 - lx) * plane[size_t(y1 * W + x0)] + ly * lx * plane[size_t(y1 * W + x1)];
}

template <typename T>
void check_roi(const char* isa, int64_t channels) {
  // channels: 3 takes the scalar path where 3 channels fill less than half a vector; 13 and 37
  // the channel-vector path with partial vectors and, for 37, more than one block of vectors.
  RoiShape s{2, channels, 9, 11, 0, 3, 4, -1, 0.5, false};
  const std::vector<double> boxes = {0, 1, 2, 15, 12,  1, -3, -2, 8, 30,  1, 5, 5, 5.5, 5.2,  0, 20, 1, 30, 17,
                                     0, NAN, 1, 3, 4,  1, 4, 4, 4, 4};
  s.K = int64_t(boxes.size() / 5);
  const std::vector<T> rois(boxes.begin(), boxes.end());
  const auto x = random_vector<T>(size_t(s.N * s.C * s.H * s.W), 41);
  const size_t out_size = size_t(s.K * s.C * s.PH * s.PW);
  for (int aligned = 0; aligned < 2; ++aligned)
    for (int64_t ratio : {int64_t(-1), int64_t(2)}) {
      s.aligned = aligned != 0, s.sampling_ratio = ratio;
      std::vector<T> y(out_size);
      ops<T>().roi_align_forward(s, x.data(), rois.data(), y.data());
      std::vector<double> want(out_size, 0.0);
      for (int64_t k = 0; k < s.K; ++k) {
        const double* b = &boxes[size_t(5 * k)];
        if (std::isnan(b[1])) continue;  // a NaN box gives zeros
        const double off = aligned ? 0.5 : 0.0;
        const double sx = b[1] * s.spatial_scale - off, sy = b[2] * s.spatial_scale - off;
        double rw = b[3] * s.spatial_scale - off - sx, rh = b[4] * s.spatial_scale - off - sy;
        if (!aligned) rw = std::max(rw, 1.0), rh = std::max(rh, 1.0);
        const int64_t gh = ratio > 0 ? ratio : int64_t(std::ceil(rh / s.PH));
        const int64_t gw = ratio > 0 ? ratio : int64_t(std::ceil(rw / s.PW));
        for (int64_t c = 0; c < s.C; ++c) {
          std::vector<double> plane(size_t(s.H * s.W));
          for (size_t i = 0; i < plane.size(); ++i) plane[i] = x[size_t((int64_t(b[0]) * s.C + c) * s.H * s.W) + i];
          for (int64_t ph = 0; ph < s.PH; ++ph)
            for (int64_t pw = 0; pw < s.PW; ++pw) {
              double acc = 0;
              for (int64_t iy = 0; iy < gh; ++iy)
                for (int64_t ix = 0; ix < gw; ++ix)
                  acc += bilinear(plane, s.H, s.W, sy + (ph + (iy + 0.5) / gh) * rh / s.PH,
                                  sx + (pw + (ix + 0.5) / gw) * rw / s.PW);
              want[size_t(((k * s.C + c) * s.PH + ph) * s.PW + pw)] = acc / double(std::max<int64_t>(gh * gw, 1));
            }
        }
      }
      char what[100];
      std::snprintf(what, sizeof what, "%s roi_align C=%lld aligned=%d ratio=%lld", isa, (long long)s.C, aligned,
                    (long long)ratio);
      expect_close<T>(what, y, want);
      const auto gy = random_vector<T>(out_size, 42);
      std::vector<T> gx(x.size());
      ops<T>().roi_align_backward(s, gy.data(), rois.data(), gx.data());
      double lhs = 0, rhs = 0;
      for (size_t i = 0; i < out_size; ++i) lhs += want[i] * double(gy[i]);
      for (size_t i = 0; i < x.size(); ++i) rhs += double(x[i]) * double(gx[i]);
      expect_close<T>(std::string(what) + " backward (adjoint)", std::vector<T>{T(rhs)}, std::vector<double>{lhs});
    }
  // roi_pool: whole-image boxes, so every bin is [floor(i * H / PH), ceil((i + 1) * H / PH))
  const std::vector<T> whole = {0, 0, 0, T(s.W - 1), T(s.H - 1), 1, 0, 0, T(s.W - 1), T(s.H - 1)};
  s.K = 2, s.spatial_scale = 1;
  std::vector<T> y(size_t(s.K * s.C * s.PH * s.PW));
  std::vector<int64_t> arg(y.size());
  ops<T>().roi_pool_forward(s, x.data(), whole.data(), y.data(), arg.data());
  std::vector<double> want(y.size());
  bool arg_ok = true;
  for (int64_t p = 0; p < s.K * s.C; ++p)
    for (int64_t ph = 0; ph < s.PH; ++ph)
      for (int64_t pw = 0; pw < s.PW; ++pw) {
        double best = -INFINITY;
        int64_t at = -1;
        for (int64_t h = ph * s.H / s.PH; h < ((ph + 1) * s.H + s.PH - 1) / s.PH; ++h)
          for (int64_t w = pw * s.W / s.PW; w < ((pw + 1) * s.W + s.PW - 1) / s.PW; ++w)
            if (at < 0 || x[size_t(p * s.H * s.W + h * s.W + w)] > best)
              best = x[size_t(p * s.H * s.W + h * s.W + w)], at = h * s.W + w;
        const size_t o = size_t((p * s.PH + ph) * s.PW + pw);
        want[o] = best;
        arg_ok = arg_ok && arg[o] == at;
      }
  expect_close<T>(std::string(isa) + " roi_pool", y, want);
  ++g_checks;
  if (!arg_ok) ++g_failures, std::printf("FAIL %s roi_pool (%s): argmax differs\n", isa, type_name<T>());
  // nms: boxes on a grid, sorted by (implicit) descending score
  std::vector<T> nboxes;
  for (int i = 0; i < 40; ++i) {
    const double x0 = (i * 7) % 13, y0 = (i * 5) % 11;
    for (double v : {x0, y0, x0 + 3 + i % 4, y0 + 2 + i % 3}) nboxes.push_back(T(v));
  }
  std::vector<uint8_t> keep(40);
  const int64_t kept = ops<T>().nms_sorted(40, nboxes.data(), nullptr, 0.3, keep.data());
  bool nms_ok = true;
  int64_t count = 0;
  std::vector<uint8_t> ref(40, 1);
  for (int i = 0; i < 40; ++i) {
    if (!ref[size_t(i)]) continue;
    ++count;
    for (int j = i + 1; j < 40; ++j) {
      const T* a = &nboxes[size_t(4 * i)];
      const T* b = &nboxes[size_t(4 * j)];
      const double iw = std::max(0.0, double(std::min(a[2], b[2]) - std::max(a[0], b[0])));
      const double ih = std::max(0.0, double(std::min(a[3], b[3]) - std::max(a[1], b[1])));
      const double area_a = double((a[2] - a[0]) * (a[3] - a[1])), area_b = double((b[2] - b[0]) * (b[3] - b[1]));
      if (iw * ih / (area_a + area_b - iw * ih) > 0.3) ref[size_t(j)] = 0;
    }
  }
  for (int i = 0; i < 40; ++i) nms_ok = nms_ok && keep[size_t(i)] == ref[size_t(i)];
  ++g_checks;
  if (!nms_ok || kept != count) ++g_failures, std::printf("FAIL %s nms (%s)\n", isa, type_name<T>());
}

template <typename T>
void check_all(const char* isa) {
  check_gemm<T>(isa);
  check_convs<T>(isa);
  check_pool<T>(isa);
  check_batch_norm<T>(isa, 37);  // short rows: the column path
  check_batch_norm<T>(isa, 70);  // the row path
  check_linear<T>(isa);
  for (int64_t channels : {3, 13, 37}) check_roi<T>(isa, channels);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> isas = argc > 1 ? std::vector<std::string>(argv + 1, argv + argc)
                                           : pycnn::cpu::available_isas();
  pycnn::set_num_threads(2);
  for (const std::string& isa : isas) {
    try {
      pycnn::cpu::set_cpu_isa(isa);
    } catch (const std::exception& e) {
      std::printf("FAIL %s\n", e.what());
      ++g_failures;
      continue;
    }
    const int before = g_failures;
    check_all<float>(isa.c_str());
    check_all<double>(isa.c_str());
    std::printf("%s: %s\n", isa.c_str(), g_failures == before ? "ok" : "FAILED");
  }
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
