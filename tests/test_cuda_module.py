"""The real CUDA module (pycnn._C_cuda) on a machine without a GPU: it imports (the runtime is
linked statically), exports every op of the CPU module, and the first CUDA use explains a
missing or too old driver. Skipped where pycnn was built without CUDA."""
import pytest
import torch

import pycnn
from pycnn._ops import native

pytestmark = pytest.mark.skipif(not pycnn.cuda_available(), reason="pycnn built without its CUDA module")

# Helpers of the CPU kernels with no CUDA twin (threads, reference GEMM, CPU target, Winograd).
CPU_ONLY = {"get_num_threads", "set_num_threads", "threading_backend", "gemm_reference", "conv2d_forward_algorithm",
            "set_conv_winograd", "set_conv_winograd4x4", "cpu_isa", "available_isas", "set_cpu_isa",
            "avx512_emulated"}


def test_module_exports_the_cpu_op_names():
    from pycnn import _C, _C_cuda
    names = {n for n in dir(_C) if not n.startswith("_")} - CPU_ONLY
    missing = names - set(dir(_C_cuda))
    assert not missing, f"_C_cuda lacks {sorted(missing)} (or they belong in CPU_ONLY)"
    assert (_C_cuda.FLOAT32, _C_cuda.FLOAT64) == (_C.FLOAT32, _C.FLOAT64)


def test_runtime_status_reports_the_static_runtime():
    status = native._C_cuda.runtime_status()
    assert status["runtime_version"] >= 13000
    assert set(status) == {"error", "error_name", "message", "driver_version", "runtime_version", "devices"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a usable driver")
def test_first_use_without_a_usable_driver_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(native, "_cuda_runtime_ok", False)
    status = native._C_cuda.runtime_status()
    assert status["error"] != 0
    with pytest.raises(RuntimeError, match="driver >= 580|cannot use this machine's GPUs"):
        native.check_cuda_runtime()
