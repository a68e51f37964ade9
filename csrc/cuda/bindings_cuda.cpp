// pybind11 bindings of the CUDA kernels (module pycnn._C_cuda): the same op names, arguments
// and dtype codes as the CPU module _C (csrc/bindings.cpp), each with one extra first argument,
// the CUDA stream to launch on (torch.cuda.current_stream().cuda_stream, an int). CPU-only
// helpers (threads, gemm_reference, the CPU target switch) have no CUDA twin.
// Pointers are device pointers; the Python layer (pycnn/_ops/native.py) has checked every size,
// dtype and device, made inputs contiguous and made the tensors' device current. The kernels
// only enqueue work (max_unpool2d_forward excepted, see pool.cu), and the GIL is released
// around them. Launch failures arrive as std::runtime_error naming the op, which pybind11
// raises as RuntimeError.
//
// Built with the static CUDA runtime: importing this module needs no driver. pycnn's first CUDA
// call checks runtime_status() and raises a clear RuntimeError when the driver is missing or
// older than the runtime (CUDA 13 needs driver >= 580).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/dispatch.h"
#include "cuda/kernels.cuh"

namespace py = pybind11;
using namespace pycnn;

namespace {

cuda::Stream st(uintptr_t s) { return reinterpret_cast<cuda::Stream>(s); }

constexpr auto nogil = py::call_guard<py::gil_scoped_release>();

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "pycnn CUDA kernels (raw-pointer interface; use pycnn.functional instead)";
  m.attr("FLOAT32") = int(kFloat32);
  m.attr("FLOAT64") = int(kFloat64);
  m.attr("ERROR_INSUFFICIENT_DRIVER") = cuda::insufficient_driver_code();

  m.def("runtime_status", [] {
    const cuda::RuntimeStatus r = cuda::runtime_status();
    py::dict d;
    d["error"] = r.error;
    d["error_name"] = r.error_name;
    d["message"] = r.message;
    d["driver_version"] = r.driver_version;
    d["runtime_version"] = r.runtime_version;
    d["devices"] = r.devices;
    return d;
  });

  m.def("gemm", [](uintptr_t stream, int dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha,
                   uintptr_t A, int64_t lda, uintptr_t B, int64_t ldb, double beta, uintptr_t C,
                   int64_t ldc) {
    dispatch(dt, "gemm", [&](auto tag) {
      PYCNN_T;
      cuda::gemm<T>(st(stream), ta, tb, M, N, K, T(alpha), p<T>(A), lda, p<T>(B), ldb, T(beta), p<T>(C), ldc);
    });
  }, nogil);
  m.def("channel_sum", [](uintptr_t stream, int dt, int64_t N, int64_t C, int64_t S, uintptr_t x, uintptr_t out) {
    dispatch(dt, "channel_sum", [&](auto tag) { PYCNN_T; cuda::channel_sum<T>(st(stream), N, C, S, p<T>(x), p<T>(out)); });
  }, nogil);

  m.def("conv2d_forward", [](uintptr_t stream, int dt, std::vector<int64_t> shape, uintptr_t x, uintptr_t w,
                             uintptr_t b, uintptr_t y, uintptr_t ws, int64_t ws_elems) {
    auto s = Conv2dShape::from(shape);
    dispatch(dt, "conv2d", [&](auto tag) {
      PYCNN_T;
      cuda::conv2d_forward<T>(st(stream), s, p<T>(x), p<T>(w), p<T>(b), p<T>(y), p<T>(ws), ws_elems);
    });
  }, nogil);
  m.def("conv2d_backward_input", [](uintptr_t stream, int dt, std::vector<int64_t> shape, uintptr_t gy, uintptr_t w,
                                    uintptr_t gx, uintptr_t ws, int64_t ws_elems) {
    auto s = Conv2dShape::from(shape);
    dispatch(dt, "conv2d_backward_input", [&](auto tag) {
      PYCNN_T;
      cuda::conv2d_backward_input<T>(st(stream), s, p<T>(gy), p<T>(w), p<T>(gx), p<T>(ws), ws_elems);
    });
  }, nogil);
  m.def("conv2d_backward_weight", [](uintptr_t stream, int dt, std::vector<int64_t> shape, uintptr_t x, uintptr_t gy,
                                     uintptr_t gw, uintptr_t gb, uintptr_t ws, int64_t ws_elems) {
    auto s = Conv2dShape::from(shape);
    dispatch(dt, "conv2d_backward_weight", [&](auto tag) {
      PYCNN_T;
      cuda::conv2d_backward_weight<T>(st(stream), s, p<T>(x), p<T>(gy), p<T>(gw), p<T>(gb), p<T>(ws), ws_elems);
    });
  }, nogil);

  m.def("depthwise_conv2d_forward", [](uintptr_t stream, int dt, std::vector<int64_t> shape, uintptr_t x,
                                       uintptr_t w, uintptr_t b, uintptr_t y) {
    auto s = Conv2dShape::from(shape);
    dispatch(dt, "depthwise_conv2d", [&](auto tag) {
      PYCNN_T;
      cuda::depthwise_conv2d_forward<T>(st(stream), s, p<T>(x), p<T>(w), p<T>(b), p<T>(y));
    });
  }, nogil);
  m.def("depthwise_conv2d_backward_input", [](uintptr_t stream, int dt, std::vector<int64_t> shape, uintptr_t gy,
                                              uintptr_t w, uintptr_t gx) {
    auto s = Conv2dShape::from(shape);
    dispatch(dt, "depthwise_conv2d_backward_input", [&](auto tag) {
      PYCNN_T;
      cuda::depthwise_conv2d_backward_input<T>(st(stream), s, p<T>(gy), p<T>(w), p<T>(gx));
    });
  }, nogil);
  m.def("depthwise_conv2d_backward_weight", [](uintptr_t stream, int dt, std::vector<int64_t> shape, uintptr_t x,
                                               uintptr_t gy, uintptr_t gw, uintptr_t gb) {
    auto s = Conv2dShape::from(shape);
    dispatch(dt, "depthwise_conv2d_backward_weight", [&](auto tag) {
      PYCNN_T;
      cuda::depthwise_conv2d_backward_weight<T>(st(stream), s, p<T>(x), p<T>(gy), p<T>(gw), p<T>(gb));
    });
  }, nogil);

  m.def("max_pool2d_forward", [](uintptr_t stream, int dt, std::vector<int64_t> shape, uintptr_t x, uintptr_t y,
                                 uintptr_t idx) {
    auto s = Pool2dShape::from(shape);
    dispatch(dt, "max_pool2d", [&](auto tag) {
      PYCNN_T;
      cuda::max_pool2d_forward<T>(st(stream), s, p<T>(x), p<T>(y), p<int64_t>(idx));
    });
  }, nogil);
  m.def("max_pool2d_backward", [](uintptr_t stream, int dt, std::vector<int64_t> shape, uintptr_t gy, uintptr_t idx,
                                  uintptr_t gx) {
    auto s = Pool2dShape::from(shape);
    dispatch(dt, "max_pool2d_backward", [&](auto tag) {
      PYCNN_T;
      cuda::max_pool2d_backward<T>(st(stream), s, p<T>(gy), p<int64_t>(idx), p<T>(gx));
    });
  }, nogil);
  m.def("max_unpool2d_forward", [](uintptr_t stream, int dt, int64_t planes, int64_t in_size, int64_t out_size,
                                   uintptr_t x, uintptr_t idx, uintptr_t y) {
    return dispatch(dt, "max_unpool2d", [&](auto tag) {
      PYCNN_T;
      return cuda::max_unpool2d_forward<T>(st(stream), planes, in_size, out_size, p<T>(x), p<int64_t>(idx), p<T>(y));
    });
  }, nogil);
  m.def("max_unpool2d_backward", [](uintptr_t stream, int dt, int64_t planes, int64_t in_size, int64_t out_size,
                                    uintptr_t gy, uintptr_t idx, uintptr_t gx) {
    dispatch(dt, "max_unpool2d_backward", [&](auto tag) {
      PYCNN_T;
      cuda::max_unpool2d_backward<T>(st(stream), planes, in_size, out_size, p<T>(gy), p<int64_t>(idx), p<T>(gx));
    });
  }, nogil);

  m.def("roi_align_forward", [](uintptr_t stream, int dt, std::vector<int64_t> shape, double scale,
                                int64_t sampling_ratio, bool aligned, uintptr_t x, uintptr_t rois, uintptr_t y) {
    auto s = RoiShape::from(shape, scale, sampling_ratio, aligned);
    dispatch(dt, "roi_align", [&](auto tag) {
      PYCNN_T;
      cuda::roi_align_forward<T>(st(stream), s, p<T>(x), p<T>(rois), p<T>(y));
    });
  }, nogil);
  m.def("roi_align_backward", [](uintptr_t stream, int dt, std::vector<int64_t> shape, double scale,
                                 int64_t sampling_ratio, bool aligned, uintptr_t gy, uintptr_t rois, uintptr_t gx) {
    auto s = RoiShape::from(shape, scale, sampling_ratio, aligned);
    dispatch(dt, "roi_align_backward", [&](auto tag) {
      PYCNN_T;
      cuda::roi_align_backward<T>(st(stream), s, p<T>(gy), p<T>(rois), p<T>(gx));
    });
  }, nogil);
  m.def("roi_pool_forward", [](uintptr_t stream, int dt, std::vector<int64_t> shape, double scale, uintptr_t x,
                               uintptr_t rois, uintptr_t y, uintptr_t argmax) {
    auto s = RoiShape::from(shape, scale, 0, false);
    dispatch(dt, "roi_pool", [&](auto tag) {
      PYCNN_T;
      cuda::roi_pool_forward<T>(st(stream), s, p<T>(x), p<T>(rois), p<T>(y), p<int64_t>(argmax));
    });
  }, nogil);
  m.def("roi_pool_backward", [](uintptr_t stream, int dt, std::vector<int64_t> shape, double scale, uintptr_t gy,
                                uintptr_t rois, uintptr_t argmax, uintptr_t gx) {
    auto s = RoiShape::from(shape, scale, 0, false);
    dispatch(dt, "roi_pool_backward", [&](auto tag) {
      PYCNN_T;
      cuda::roi_pool_backward<T>(st(stream), s, p<T>(gy), p<T>(rois), p<int64_t>(argmax), p<T>(gx));
    });
  }, nogil);
  m.def("nms_workspace_words", &cuda::nms_workspace_words);
  m.def("nms_sorted", [](uintptr_t stream, int dt, int64_t n, uintptr_t boxes, uintptr_t categories,
                         double iou_threshold, uintptr_t keep, uintptr_t workspace) {
    dispatch(dt, "nms", [&](auto tag) {
      PYCNN_T;
      cuda::nms_sorted<T>(st(stream), n, p<T>(boxes), p<int64_t>(categories), iou_threshold, p<uint8_t>(keep),
                          p<unsigned long long>(workspace));
    });
  }, nogil);
  m.def("box_iou", [](uintptr_t stream, int dt, int64_t n, int64_t m, uintptr_t a, uintptr_t b, uintptr_t out) {
    dispatch(dt, "box_iou", [&](auto tag) {
      PYCNN_T;
      cuda::box_iou<T>(st(stream), n, m, p<T>(a), p<T>(b), p<T>(out));
    });
  }, nogil);

  m.def("batch_norm_stats", [](uintptr_t stream, int dt, int64_t N, int64_t C, int64_t S, uintptr_t x,
                               uintptr_t mean, uintptr_t var, uintptr_t invstd, double eps) {
    dispatch(dt, "batch_norm", [&](auto tag) {
      PYCNN_T;
      cuda::batch_norm_stats<T>(st(stream), N, C, S, p<T>(x), p<T>(mean), p<T>(var), p<T>(invstd), eps);
    });
  }, nogil);
  m.def("batch_norm_update_running", [](uintptr_t stream, int dt, int64_t C, uintptr_t mean, uintptr_t var,
                                        double momentum, double unbias, uintptr_t running_mean,
                                        uintptr_t running_var) {
    dispatch(dt, "batch_norm", [&](auto tag) {
      PYCNN_T;
      cuda::batch_norm_update_running<T>(st(stream), C, p<T>(mean), p<T>(var), momentum, unbias,
                                         p<T>(running_mean), p<T>(running_var));
    });
  }, nogil);
  m.def("batch_norm_apply", [](uintptr_t stream, int dt, int64_t N, int64_t C, int64_t S, uintptr_t x,
                               uintptr_t mean, uintptr_t invstd, uintptr_t w, uintptr_t b,
                               uintptr_t residual, bool act, uintptr_t y) {
    dispatch(dt, "batch_norm", [&](auto tag) {
      PYCNN_T;
      cuda::batch_norm_apply<T>(st(stream), N, C, S, p<T>(x), p<T>(mean), p<T>(invstd), p<T>(w), p<T>(b),
                                p<T>(residual), act, p<T>(y));
    });
  }, nogil);

  m.def("batch_norm_backward", [](uintptr_t stream, int dt, int64_t N, int64_t C, int64_t S, uintptr_t x,
                                  uintptr_t gy, uintptr_t y, uintptr_t mean, uintptr_t invstd, uintptr_t w,
                                  bool training, uintptr_t gx, uintptr_t gw, uintptr_t gb, uintptr_t ga) {
    dispatch(dt, "batch_norm_backward", [&](auto tag) {
      PYCNN_T;
      cuda::batch_norm_backward<T>(st(stream), N, C, S, p<T>(x), p<T>(gy), p<T>(y), p<T>(mean), p<T>(invstd),
                                   p<T>(w), training, p<T>(gx), p<T>(gw), p<T>(gb), p<T>(ga));
    });
  }, nogil);

  m.def("linear_forward", [](uintptr_t stream, int dt, int64_t M, int64_t N, int64_t K, uintptr_t x, uintptr_t w,
                             uintptr_t b, uintptr_t y) {
    dispatch(dt, "linear", [&](auto tag) {
      PYCNN_T;
      cuda::linear_forward<T>(st(stream), M, N, K, p<T>(x), p<T>(w), p<T>(b), p<T>(y));
    });
  }, nogil);
  m.def("linear_backward", [](uintptr_t stream, int dt, int64_t M, int64_t N, int64_t K, uintptr_t x, uintptr_t w,
                              uintptr_t gy, uintptr_t gx, uintptr_t gw, uintptr_t gb) {
    dispatch(dt, "linear_backward", [&](auto tag) {
      PYCNN_T;
      cuda::linear_backward<T>(st(stream), M, N, K, p<T>(x), p<T>(w), p<T>(gy), p<T>(gx), p<T>(gw), p<T>(gb));
    });
  }, nogil);

  m.def("partial_conv2d_forward", [](uintptr_t stream, int dt, std::vector<int64_t> shape, int64_t mask_channels,
                                     uintptr_t x, uintptr_t mask, uintptr_t w, uintptr_t b, uintptr_t y,
                                     uintptr_t mask_out, uintptr_t xm, uintptr_t ws, int64_t ws_elems) {
    auto s = Conv2dShape::from(shape);
    return dispatch(dt, "partial_conv2d", [&](auto tag) {
      PYCNN_T;
      return cuda::partial_conv2d_forward<T>(st(stream), s, mask_channels, p<T>(x), p<T>(mask), p<T>(w), p<T>(b),
                                             p<T>(y), p<T>(mask_out), p<T>(xm), p<T>(ws), ws_elems);
    });
  }, nogil);
  m.def("partial_conv2d_backward", [](uintptr_t stream, int dt, std::vector<int64_t> shape, int64_t mask_channels,
                                      uintptr_t x, uintptr_t mask, uintptr_t w, uintptr_t gy, uintptr_t gx,
                                      uintptr_t gw, uintptr_t gb, uintptr_t xm, uintptr_t gys, uintptr_t ratio,
                                      uintptr_t ws, int64_t ws_elems) {
    auto s = Conv2dShape::from(shape);
    dispatch(dt, "partial_conv2d_backward", [&](auto tag) {
      PYCNN_T;
      cuda::partial_conv2d_backward<T>(st(stream), s, mask_channels, p<T>(x), p<T>(mask), p<T>(w), p<T>(gy),
                                       p<T>(gx), p<T>(gw), p<T>(gb), p<T>(xm), p<T>(gys), p<T>(ratio), p<T>(ws),
                                       ws_elems);
    });
  }, nogil);
}
