// This target's kernel table (compiled once per target, like every kernel source).
#include "cpu/kernels.h"
#include "simd/vec.h"

PYCNN_TARGET_BEGIN  // this target's instructions from here to PYCNN_TARGET_END

namespace pycnn::cpu::PYCNN_ISA {

template <typename T>
constexpr Ops<T> ops_of() {
  return {&gemm<T>,
          &gemm_reference<T>,
          &channel_sum<T>,
          &conv2d_forward<T>,
          &conv2d_backward_input<T>,
          &conv2d_backward_weight<T>,
          &depthwise_conv2d_forward<T>,
          &depthwise_conv2d_backward_input<T>,
          &depthwise_conv2d_backward_weight<T>,
          &max_pool2d_forward<T>,
          &max_pool2d_backward<T>,
          &max_unpool2d_forward<T>,
          &max_unpool2d_backward<T>,
          &batch_norm_stats<T>,
          &batch_norm_apply<T>,
          &batch_norm_backward<T>,
          &batch_norm_update_running<T>,
          &linear_forward<T>,
          &linear_backward<T>,
          &roi_align_forward<T>,
          &roi_align_backward<T>,
          &roi_pool_forward<T>,
          &roi_pool_backward<T>,
          &nms_sorted<T>,
          &box_iou<T>,
          &partial_conv2d_forward<T>,
          &partial_conv2d_backward<T>};
}

const KernelTable table = {kIsaName, ops_of<float>(), ops_of<double>(), &conv2d_forward_algorithm};

}  // namespace pycnn::cpu::PYCNN_ISA

PYCNN_TARGET_END
