// pybind11 bindings of the CPU kernels: one function per kernel. Tensors arrive as raw data
// pointers (torch's tensor.data_ptr()) plus a dtype code; the Python layer (pycnn/_ops) has
// checked every size, dtype and device and made inputs contiguous. The GIL is released
// around the work so other Python threads keep running.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/dispatch.h"
#include "common/parallel.h"
#include "cpu/kernels.h"

namespace py = pybind11;
using namespace pycnn;

namespace {

constexpr auto nogil = py::call_guard<py::gil_scoped_release>();

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pycnn CPU kernels (raw-pointer interface; use pycnn.functional instead)";
  m.attr("FLOAT32") = int(kFloat32);
  m.attr("FLOAT64") = int(kFloat64);
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", &set_num_threads, nogil);
  m.def("threading_backend", &threading_backend);
  // The kernel target: chosen here, at import (PYCNN_CPU_ISA naming a target this build or this
  // CPU lacks raises, so `import pycnn` fails with that message instead of crashing later).
  cpu::select_isa();
  m.def("cpu_isa", [] { return std::string(cpu::kernels().isa); });
  m.def("available_isas", &cpu::available_isas);
#if defined(PYCNN_EMULATE_AVX512)
  m.attr("avx512_emulated") = true;  // a test build (CMake PYCNN_EMULATE_AVX512): never a speed to report
#else
  m.attr("avx512_emulated") = false;
#endif
  m.def("set_cpu_isa", &cpu::set_cpu_isa, "Test-only: switch every kernel to another available target; returns the previous one");

  m.def("gemm", [](int dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha,
                   uintptr_t A, int64_t lda, uintptr_t B, int64_t ldb, double beta, uintptr_t C,
                   int64_t ldc) {
    dispatch(dt, "gemm", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().gemm(ta, tb, M, N, K, T(alpha), p<T>(A), lda, p<T>(B), ldb, T(beta), p<T>(C), ldc);
    });
  }, nogil);
  m.def("gemm_reference", [](int dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha,
                             uintptr_t A, int64_t lda, uintptr_t B, int64_t ldb, double beta, uintptr_t C,
                             int64_t ldc) {
    dispatch(dt, "gemm_reference", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().gemm_reference(ta, tb, M, N, K, T(alpha), p<T>(A), lda, p<T>(B), ldb, T(beta), p<T>(C), ldc);
    });
  }, nogil);
  m.def("channel_sum", [](int dt, int64_t N, int64_t C, int64_t S, uintptr_t x, uintptr_t out) {
    dispatch(dt, "channel_sum", [&](auto tag) { PYCNN_T; cpu::ops<T>().channel_sum(N, C, S, p<T>(x), p<T>(out)); });
  }, nogil);

  m.def("conv2d_forward", [](int dt, std::vector<int64_t> shape, uintptr_t x, uintptr_t w,
                             uintptr_t b, uintptr_t y, uintptr_t ws, int64_t ws_elems) {
    auto s = Conv2dShape::from(shape);
    dispatch(dt, "conv2d", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().conv2d_forward(s, p<T>(x), p<T>(w), p<T>(b), p<T>(y), p<T>(ws), ws_elems);
    });
  }, nogil);
  m.def("conv2d_forward_algorithm", [](int dt, std::vector<int64_t> shape) {
    return std::string(cpu::kernels().conv2d_forward_algorithm(Conv2dShape::from(shape), dt == kFloat32));
  });
  m.def("set_conv_winograd", &cpu::set_conv_winograd);
  m.def("set_conv_winograd4x4", &cpu::set_conv_winograd4x4,
        "Winograd F(4x4, 3x3): 0 off (default), 1 where the size rule picks it, 2 for every Winograd shape (tests); returns the previous mode");
  m.def("conv2d_backward_input", [](int dt, std::vector<int64_t> shape, uintptr_t gy, uintptr_t w,
                                    uintptr_t gx, uintptr_t ws, int64_t ws_elems) {
    auto s = Conv2dShape::from(shape);
    dispatch(dt, "conv2d_backward_input", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().conv2d_backward_input(s, p<T>(gy), p<T>(w), p<T>(gx), p<T>(ws), ws_elems);
    });
  }, nogil);
  m.def("conv2d_backward_weight", [](int dt, std::vector<int64_t> shape, uintptr_t x, uintptr_t gy,
                                     uintptr_t gw, uintptr_t gb, uintptr_t ws, int64_t ws_elems) {
    auto s = Conv2dShape::from(shape);
    dispatch(dt, "conv2d_backward_weight", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().conv2d_backward_weight(s, p<T>(x), p<T>(gy), p<T>(gw), p<T>(gb), p<T>(ws), ws_elems);
    });
  }, nogil);

  m.def("depthwise_conv2d_forward", [](int dt, std::vector<int64_t> shape, uintptr_t x,
                                       uintptr_t w, uintptr_t b, uintptr_t y) {
    auto s = Conv2dShape::from(shape);
    dispatch(dt, "depthwise_conv2d", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().depthwise_conv2d_forward(s, p<T>(x), p<T>(w), p<T>(b), p<T>(y));
    });
  }, nogil);
  m.def("depthwise_conv2d_backward_input", [](int dt, std::vector<int64_t> shape, uintptr_t gy,
                                              uintptr_t w, uintptr_t gx) {
    auto s = Conv2dShape::from(shape);
    dispatch(dt, "depthwise_conv2d_backward_input", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().depthwise_conv2d_backward_input(s, p<T>(gy), p<T>(w), p<T>(gx));
    });
  }, nogil);
  m.def("depthwise_conv2d_backward_weight", [](int dt, std::vector<int64_t> shape, uintptr_t x,
                                               uintptr_t gy, uintptr_t gw, uintptr_t gb) {
    auto s = Conv2dShape::from(shape);
    dispatch(dt, "depthwise_conv2d_backward_weight", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().depthwise_conv2d_backward_weight(s, p<T>(x), p<T>(gy), p<T>(gw), p<T>(gb));
    });
  }, nogil);

  m.def("max_pool2d_forward", [](int dt, std::vector<int64_t> shape, uintptr_t x, uintptr_t y,
                                 uintptr_t idx) {
    auto s = Pool2dShape::from(shape);
    dispatch(dt, "max_pool2d", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().max_pool2d_forward(s, p<T>(x), p<T>(y), p<int64_t>(idx));
    });
  }, nogil);
  m.def("max_pool2d_backward", [](int dt, std::vector<int64_t> shape, uintptr_t gy, uintptr_t idx,
                                  uintptr_t gx) {
    auto s = Pool2dShape::from(shape);
    dispatch(dt, "max_pool2d_backward", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().max_pool2d_backward(s, p<T>(gy), p<int64_t>(idx), p<T>(gx));
    });
  }, nogil);
  m.def("max_unpool2d_forward", [](int dt, int64_t planes, int64_t in_size, int64_t out_size,
                                   uintptr_t x, uintptr_t idx, uintptr_t y) {
    return dispatch(dt, "max_unpool2d", [&](auto tag) {
      PYCNN_T;
      return cpu::ops<T>().max_unpool2d_forward(planes, in_size, out_size, p<T>(x), p<int64_t>(idx), p<T>(y));
    });
  }, nogil);
  m.def("max_unpool2d_backward", [](int dt, int64_t planes, int64_t in_size, int64_t out_size,
                                    uintptr_t gy, uintptr_t idx, uintptr_t gx) {
    dispatch(dt, "max_unpool2d_backward", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().max_unpool2d_backward(planes, in_size, out_size, p<T>(gy), p<int64_t>(idx), p<T>(gx));
    });
  }, nogil);

  m.def("roi_align_forward", [](int dt, std::vector<int64_t> shape, double scale, int64_t sampling_ratio,
                                bool aligned, uintptr_t x, uintptr_t rois, uintptr_t y) {
    auto s = RoiShape::from(shape, scale, sampling_ratio, aligned);
    dispatch(dt, "roi_align", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().roi_align_forward(s, p<T>(x), p<T>(rois), p<T>(y));
    });
  }, nogil);
  m.def("roi_align_backward", [](int dt, std::vector<int64_t> shape, double scale, int64_t sampling_ratio,
                                 bool aligned, uintptr_t gy, uintptr_t rois, uintptr_t gx) {
    auto s = RoiShape::from(shape, scale, sampling_ratio, aligned);
    dispatch(dt, "roi_align_backward", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().roi_align_backward(s, p<T>(gy), p<T>(rois), p<T>(gx));
    });
  }, nogil);
  m.def("roi_pool_forward", [](int dt, std::vector<int64_t> shape, double scale, uintptr_t x,
                               uintptr_t rois, uintptr_t y, uintptr_t argmax) {
    auto s = RoiShape::from(shape, scale, 0, false);
    dispatch(dt, "roi_pool", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().roi_pool_forward(s, p<T>(x), p<T>(rois), p<T>(y), p<int64_t>(argmax));
    });
  }, nogil);
  m.def("roi_pool_backward", [](int dt, std::vector<int64_t> shape, double scale, uintptr_t gy,
                                uintptr_t rois, uintptr_t argmax, uintptr_t gx) {
    auto s = RoiShape::from(shape, scale, 0, false);
    dispatch(dt, "roi_pool_backward", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().roi_pool_backward(s, p<T>(gy), p<T>(rois), p<int64_t>(argmax), p<T>(gx));
    });
  }, nogil);
  m.def("nms_sorted", [](int dt, int64_t n, uintptr_t boxes, uintptr_t categories, double iou_threshold,
                         uintptr_t keep) {
    return dispatch(dt, "nms", [&](auto tag) {
      PYCNN_T;
      return cpu::ops<T>().nms_sorted(n, p<T>(boxes), p<int64_t>(categories), iou_threshold, p<uint8_t>(keep));
    });
  }, nogil);
  m.def("box_iou", [](int dt, int64_t n, int64_t m, uintptr_t a, uintptr_t b, uintptr_t out) {
    dispatch(dt, "box_iou", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().box_iou(n, m, p<T>(a), p<T>(b), p<T>(out));
    });
  }, nogil);

  m.def("batch_norm_stats", [](int dt, int64_t N, int64_t C, int64_t S, uintptr_t x,
                               uintptr_t mean, uintptr_t var, uintptr_t invstd, double eps) {
    dispatch(dt, "batch_norm", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().batch_norm_stats(N, C, S, p<T>(x), p<T>(mean), p<T>(var), p<T>(invstd), eps);
    });
  }, nogil);
  m.def("batch_norm_apply", [](int dt, int64_t N, int64_t C, int64_t S, uintptr_t x,
                               uintptr_t mean, uintptr_t invstd, uintptr_t w, uintptr_t b,
                               uintptr_t residual, bool act, uintptr_t y) {
    dispatch(dt, "batch_norm", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().batch_norm_apply(N, C, S, p<T>(x), p<T>(mean), p<T>(invstd), p<T>(w), p<T>(b),
                                     p<T>(residual), act, p<T>(y));
    });
  }, nogil);
  m.def("batch_norm_update_running", [](int dt, int64_t C, uintptr_t mean, uintptr_t var, double momentum,
                                        double unbias, uintptr_t running_mean, uintptr_t running_var) {
    dispatch(dt, "batch_norm", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().batch_norm_update_running(C, p<T>(mean), p<T>(var), momentum, unbias, p<T>(running_mean),
                                              p<T>(running_var));
    });
  });

  m.def("batch_norm_backward", [](int dt, int64_t N, int64_t C, int64_t S, uintptr_t x,
                                  uintptr_t gy, uintptr_t y, uintptr_t mean, uintptr_t invstd, uintptr_t w,
                                  bool training, uintptr_t gx, uintptr_t gw, uintptr_t gb, uintptr_t ga) {
    dispatch(dt, "batch_norm_backward", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().batch_norm_backward(N, C, S, p<T>(x), p<T>(gy), p<T>(y), p<T>(mean), p<T>(invstd), p<T>(w),
                                        training, p<T>(gx), p<T>(gw), p<T>(gb), p<T>(ga));
    });
  }, nogil);

  m.def("linear_forward", [](int dt, int64_t M, int64_t N, int64_t K, uintptr_t x, uintptr_t w,
                             uintptr_t b, uintptr_t y) {
    dispatch(dt, "linear", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().linear_forward(M, N, K, p<T>(x), p<T>(w), p<T>(b), p<T>(y));
    });
  }, nogil);
  m.def("linear_backward", [](int dt, int64_t M, int64_t N, int64_t K, uintptr_t x, uintptr_t w,
                              uintptr_t gy, uintptr_t gx, uintptr_t gw, uintptr_t gb) {
    dispatch(dt, "linear_backward", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().linear_backward(M, N, K, p<T>(x), p<T>(w), p<T>(gy), p<T>(gx), p<T>(gw), p<T>(gb));
    });
  }, nogil);

  m.def("partial_conv2d_forward", [](int dt, std::vector<int64_t> shape, int64_t mask_channels, uintptr_t x,
                                     uintptr_t mask, uintptr_t w, uintptr_t b, uintptr_t y, uintptr_t mask_out,
                                     uintptr_t xm, uintptr_t ws, int64_t ws_elems) {
    auto s = Conv2dShape::from(shape);
    return dispatch(dt, "partial_conv2d", [&](auto tag) {
      PYCNN_T;
      return cpu::ops<T>().partial_conv2d_forward(s, mask_channels, p<T>(x), p<T>(mask), p<T>(w), p<T>(b),
                                                  p<T>(y), p<T>(mask_out), p<T>(xm), p<T>(ws), ws_elems);
    });
  }, nogil);
  m.def("partial_conv2d_backward", [](int dt, std::vector<int64_t> shape, int64_t mask_channels, uintptr_t x,
                                      uintptr_t mask, uintptr_t w, uintptr_t gy, uintptr_t gx, uintptr_t gw,
                                      uintptr_t gb, uintptr_t xm, uintptr_t gys, uintptr_t ratio, uintptr_t ws,
                                      int64_t ws_elems) {
    auto s = Conv2dShape::from(shape);
    dispatch(dt, "partial_conv2d_backward", [&](auto tag) {
      PYCNN_T;
      cpu::ops<T>().partial_conv2d_backward(s, mask_channels, p<T>(x), p<T>(mask), p<T>(w), p<T>(gy), p<T>(gx),
                                            p<T>(gw), p<T>(gb), p<T>(xm), p<T>(gys), p<T>(ratio), p<T>(ws),
                                            ws_elems);
    });
  }, nogil);
}
