// The CPU kernels as the bindings see them: the active target's table of entry points.
//
// Every kernel source is compiled once per target (avx512, avx2, neon, generic; see
// csrc/simd/vec.h), each build in its own namespace pycnn::cpu::<isa>, and exports one
// KernelTable (csrc/cpu/table.cpp). csrc/cpu/isa.cpp picks the table once, at import: the best
// target this CPU runs, or the one PYCNN_CPU_ISA names. Callers use ops<T>().conv2d_forward(...).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "common/shapes.h"

namespace pycnn::cpu {

namespace api {
#include "cpu/kernel_api.inc"
}  // namespace api

// One target's entry points for one dtype (the signatures of kernel_api.inc).
template <typename T>
struct Ops {
  decltype(&api::gemm<T>) gemm;
  decltype(&api::gemm_reference<T>) gemm_reference;
  decltype(&api::channel_sum<T>) channel_sum;
  decltype(&api::conv2d_forward<T>) conv2d_forward;
  decltype(&api::conv2d_backward_input<T>) conv2d_backward_input;
  decltype(&api::conv2d_backward_weight<T>) conv2d_backward_weight;
  decltype(&api::depthwise_conv2d_forward<T>) depthwise_conv2d_forward;
  decltype(&api::depthwise_conv2d_backward_input<T>) depthwise_conv2d_backward_input;
  decltype(&api::depthwise_conv2d_backward_weight<T>) depthwise_conv2d_backward_weight;
  decltype(&api::max_pool2d_forward<T>) max_pool2d_forward;
  decltype(&api::max_pool2d_backward<T>) max_pool2d_backward;
  decltype(&api::max_unpool2d_forward<T>) max_unpool2d_forward;
  decltype(&api::max_unpool2d_backward<T>) max_unpool2d_backward;
  decltype(&api::batch_norm_stats<T>) batch_norm_stats;
  decltype(&api::batch_norm_apply<T>) batch_norm_apply;
  decltype(&api::batch_norm_backward<T>) batch_norm_backward;
  decltype(&api::batch_norm_update_running<T>) batch_norm_update_running;
  decltype(&api::linear_forward<T>) linear_forward;
  decltype(&api::linear_backward<T>) linear_backward;
  decltype(&api::roi_align_forward<T>) roi_align_forward;
  decltype(&api::roi_align_backward<T>) roi_align_backward;
  decltype(&api::roi_pool_forward<T>) roi_pool_forward;
  decltype(&api::roi_pool_backward<T>) roi_pool_backward;
  decltype(&api::nms_sorted<T>) nms_sorted;
  decltype(&api::box_iou<T>) box_iou;
  decltype(&api::partial_conv2d_forward<T>) partial_conv2d_forward;
  decltype(&api::partial_conv2d_backward<T>) partial_conv2d_backward;
};

struct KernelTable {
  const char* isa;
  Ops<float> f32;
  Ops<double> f64;
  decltype(&api::conv2d_forward_algorithm) conv2d_forward_algorithm;
};

// ---- isa.cpp -------------------------------------------------------------------------------
// The active target's table (chosen on first use; see select_isa).
const KernelTable& kernels();
template <typename T>
const Ops<T>& ops() {
  if constexpr (sizeof(T) == 4) return kernels().f32;
  else return kernels().f64;
}
// Chooses the target at import: PYCNN_CPU_ISA if set (std::invalid_argument when it names no
// target, or one this build or this CPU lacks), else the best this CPU runs. Returns its name.
std::string select_isa();
// Targets this build has and this CPU runs, lowest first (e.g. {"generic", "avx2"}).
std::vector<std::string> available_isas();
// Test-only switch to another available target; returns the previous one's name.
std::string set_cpu_isa(const std::string& name);

// Winograd kernels on or off for every target (on by default): the tests compare them with the
// direct and GEMM kernels they replace. Returns the previous setting.
bool set_conv_winograd(bool enabled);
bool conv_winograd_enabled();
// Winograd F(4x4, 3x3): 0 off (the default: its float32 error is several times torch's, see
// csrc/cpu/winograd.cpp), 1 for the shapes the size rule gives it (winograd_forward_kernel),
// 2 for every Winograd shape (tests of its edge cases). Returns the previous mode.
int set_conv_winograd4x4(int mode);
int conv_winograd4x4_mode();

}  // namespace pycnn::cpu

#if defined(PYCNN_ISA)
// In a per-target kernel source: the same API, declared in this target's namespace.
namespace pycnn::cpu::PYCNN_ISA {
#include "cpu/kernel_api.inc"
extern const KernelTable table;
}  // namespace pycnn::cpu::PYCNN_ISA
#endif
