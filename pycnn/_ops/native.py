"""The bridge to the compiled kernels: dtype codes, device dispatch, argument checks, workspace.

Everything below this module is raw pointers; everything above it is tensors. Kernels take
(dtype_code, ...) on CPU and (stream, dtype_code, ...) on CUDA; `call` hides the difference.
"""
from __future__ import annotations

import torch

from pycnn import _C

try:  # built only when a CUDA compiler was found; importing it needs no GPU or driver
    from pycnn import _C_cuda
except ImportError:  # pragma: no cover - depends on the build
    _C_cuda = None

_DTYPE_CODE = {torch.float32: _C.FLOAT32, torch.float64: _C.FLOAT64}
if _C_cuda is not None:
    _CUDA_DTYPE_CODE = dict(_DTYPE_CODE)
    for _name, _dt in (("FLOAT16", torch.float16), ("BFLOAT16", torch.bfloat16)):
        if hasattr(_C_cuda, _name):
            _CUDA_DTYPE_CODE[_dt] = getattr(_C_cuda, _name)

# The im2col column buffer is capped at this many bytes: the batch is processed in chunks that
# fit, so workspace memory does not grow with batch size (one sample's columns may exceed it).
_workspace_limit_bytes = 64 << 20


def set_workspace_limit(nbytes: int) -> None:
    """Caps the im2col workspace of one convolution call (bytes)."""
    global _workspace_limit_bytes
    if nbytes < 1:
        raise ValueError(f"set_workspace_limit: limit must be positive, got {nbytes}")
    _workspace_limit_bytes = int(nbytes)


def get_workspace_limit() -> int:
    return _workspace_limit_bytes


def cpu_isa() -> str:
    """The CPU target pycnn's kernels run on: "avx512", "avx2", "neon" or "generic".

    Chosen once at import: the best target this CPU runs, or a lower one named by the
    environment variable PYCNN_CPU_ISA (naming a target this CPU lacks fails the import)."""
    return _C.cpu_isa()


def cuda_available() -> bool:
    return _C_cuda is not None


_cuda_runtime_ok = False  # set once check_cuda_runtime has passed


def _version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def check_cuda_runtime() -> None:
    """Raises a clear RuntimeError when pycnn's CUDA kernels cannot run on this machine's driver.

    _C_cuda links the CUDA runtime statically (CUDA 13), so it needs an NVIDIA driver >= 580 even
    where torch's own CUDA build works with an older one; the runtime reports that only as
    cudaErrorInsufficientDriver on its first call. Run before the first CUDA kernel."""
    global _cuda_runtime_ok
    if _cuda_runtime_ok:
        return
    status = _C_cuda.runtime_status()
    if status["error"] == 0:
        _cuda_runtime_ok = True
        return
    runtime = _version(status["runtime_version"])
    if status["error"] == _C_cuda.ERROR_INSUFFICIENT_DRIVER:
        found = ("no NVIDIA driver was found" if status["driver_version"] == 0 else
                 f"the installed NVIDIA driver supports CUDA {_version(status['driver_version'])} only")
        raise RuntimeError(f"pycnn: the CUDA kernels are built with the CUDA {runtime} runtime (linked statically) "
                           f"and need an NVIDIA driver >= 580, but {found}. Update the driver, or use the CPU "
                           "kernels (tensors on the cpu device).")
    raise RuntimeError(f"pycnn: the CUDA runtime ({runtime}) cannot use this machine's GPUs: "
                       f"{status['error_name']}: {status['message']}")


def call(name: str, like: torch.Tensor, *args):
    """Runs native kernel `name` for tensors of `like`'s device and dtype."""
    if like.device.type == "cpu":
        if torch.get_num_threads() != _kernel_threads:  # torch.set_num_threads was called
            sync_threads()
        return getattr(_C, name)(_DTYPE_CODE[like.dtype], *args)
    if not _cuda_runtime_ok:
        check_cuda_runtime()
    with torch.cuda.device(like.device):
        stream = torch.cuda.current_stream(like.device).cuda_stream
        return getattr(_C_cuda, name)(stream, _CUDA_DTYPE_CODE[like.dtype], *args)


def ptr(t: torch.Tensor | None) -> int:
    """Data pointer of a tensor, 0 for None or an empty tensor (kernels read it as null)."""
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def workspace(like: torch.Tensor, per_sample: int, batch: int) -> torch.Tensor:
    """A scratch tensor of whole samples' columns, at most the workspace limit (>= 1 sample)."""
    if per_sample == 0 or batch == 0:
        return like.new_empty(0)
    fit = max(1, _workspace_limit_bytes // (per_sample * like.element_size()))
    return like.new_empty(min(batch, fit) * per_sample)


# ---- ops: torch.library custom ops, and their eager fast path ---------------------------------
#
# Every op is a torch.library custom op (torch.ops.pycnn.<name>): that is what torch.compile,
# fake tensors, opcheck, the profiler and tensor subclasses see. But a custom op call with
# autograd costs ~100 us of Python glue per forward + backward (measured: linear on 1x1 tensors,
# 153 us against 48 for torch.nn.functional.linear), more than small layers spend in their
# kernels. So `run` calls the op's own Python body directly (and, when a gradient is wanted, an
# autograd.Function with the op's own setup_context and backward: ~85 us) whenever that cannot be
# told apart: plain eager tensors on cpu/cuda, nothing tracing, no torch function or dispatch
# mode, no profiler. Same body, same kernels, same results (tests/test_fast_path.py).

_BODIES = {}      # op name -> the undecorated Python body
_FUNCTIONS = {}   # op name -> autograd.Function for ops with a backward
_fast_path = True
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", lambda t: False)


def custom_op(name: str):
    """Decorator: torch.library.custom_op("pycnn::<name>") that keeps the body for `run`."""
    def register(fn):
        _BODIES[name] = fn
        return torch.library.custom_op(f"pycnn::{name}", fn, mutates_args=())
    return register


def register_autograd(name: str, backward, setup_context) -> None:
    """torch.library.register_autograd for op `name`, and the same formula as the autograd.Function
    of its fast path."""
    torch.library.register_autograd(f"pycnn::{name}", backward, setup_context=setup_context)
    body = _BODIES[name]

    def forward(ctx, *args):
        # The forward(ctx, ...) form: with a separate setup_context, Function.apply binds the
        # arguments through inspect.signature on every call (~35 us, measured).
        output = body(*args)
        setup_context(ctx, args, output)
        return output

    def backward_once(ctx, *grads):
        # Like the custom op, whose backward op has no gradient formula: under create_graph the
        # gradients come out requiring grad and differentiating them raises. The native kernels
        # would otherwise return tensors cut from the graph (a gradient penalty silently losing
        # its dependence on the saved inputs). torch's once_differentiable looks at the incoming
        # gradients only, not at the saved tensors, so it is not enough here.
        with torch.no_grad():
            outputs = backward(ctx, *grads)
        if not torch.is_grad_enabled() or not any(
                isinstance(t, torch.Tensor) and t.requires_grad for t in (*grads, *ctx.saved_tensors)):
            return outputs
        error = torch._C._functions.DelayedError(
            f"pycnn::{name}: no double backward (its backward op has no gradient formula)".encode(), len(outputs))
        marked = [None if t is None else t.detach().requires_grad_(True) for t in outputs]
        return error(*marked)

    _FUNCTIONS[name] = type(f"{name}_function", (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "backward": staticmethod(backward_once),
    })


def register_body(name: str, fn) -> None:
    """The fast path of an op defined another way (batch_norm's composite)."""
    _BODIES[name] = fn


def set_fast_path(enabled: bool) -> bool:
    """Turns the eager fast path on or off (tests compare both); returns the previous setting."""
    global _fast_path
    previous, _fast_path = _fast_path, bool(enabled)
    return previous


def fast_path_applies(args) -> bool:
    """Whether a call with these arguments may skip the custom-op dispatch (see above)."""
    if not _fast_path or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if (torch._C._autograd._profiler_enabled() or torch._C._is_torch_function_mode_enabled()
            or torch._C._len_torch_dispatch_stack()):
        return False
    for a in args:
        if isinstance(a, torch.Tensor) and (type(a) not in _PLAIN or not (a.is_cpu or a.is_cuda) or _is_wrapped(a)):
            return False
    return True


def run(name: str, *args):
    """Op `name` on args: its body (through its autograd.Function when a gradient is wanted) on the
    fast path, else torch.ops.pycnn.<name>."""
    if not fast_path_applies(args):
        return getattr(torch.ops.pycnn, name)(*args)
    function = _FUNCTIONS.get(name)
    if function is not None and torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return function.apply(*args)
    return _BODIES[name](*args)


_kernel_threads = 0  # the thread count last given to the kernels


def sync_threads() -> None:
    """Makes the kernels use torch.get_num_threads() threads (done by every CPU call anyway)."""
    global _kernel_threads
    n = torch.get_num_threads()
    if _C.get_num_threads() != n:
        _C.set_num_threads(n)
    _kernel_threads = n


# ---- checks: every failure is a Python exception naming the op and the value -------------

def check_tensor(op: str, name: str, t, *, dims=None, optional: bool = False) -> None:
    if t is None:
        if optional:
            return
        raise TypeError(f"{op}: {name} must be a tensor, got None")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if dims is not None:
        allowed = (dims,) if isinstance(dims, int) else tuple(dims)
        if t.dim() not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{op}: {name} must be {want}, got {t.dim()}-D with shape {tuple(t.shape)}")


def check_float_tensors(op: str, **tensors) -> torch.Tensor:
    """All given tensors (None skipped) share one floating dtype and one supported device.

    Returns the first tensor, whose dtype and device the others follow.
    """
    ref_name, ref = next((k, v) for k, v in tensors.items() if v is not None)
    # The common case first, in attribute reads that cost ~0.2 us each (t.device builds a
    # torch.device: ~1 us, and this check runs on every call): all on the CPU, one float dtype.
    dtype = ref.dtype
    if ref.is_cpu and dtype in _DTYPE_CODE and all(
            t is None or (t.is_cpu and t.dtype is dtype) for t in tensors.values()):
        return ref
    codes = _DTYPE_CODE if ref.device.type != "cuda" or _C_cuda is None else _CUDA_DTYPE_CODE
    if ref.device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"{op}: {ref_name} is on device {ref.device}; pycnn runs on cpu and cuda")
    if ref.device.type == "cuda" and _C_cuda is None:
        raise RuntimeError(f"{op}: {ref_name} is on {ref.device}, but this pycnn build has no CUDA "
                           "kernels (rebuild with nvcc on PATH, PYCNN_CUDA=ON)")
    if ref.dtype not in codes:
        names = ", ".join(str(d).replace("torch.", "") for d in codes)
        raise TypeError(f"{op}: {ref_name} has dtype {ref.dtype}; supported: {names}")
    for name, t in tensors.items():
        if t is None or t is ref:
            continue
        if t.device != ref.device:
            raise RuntimeError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; "
                               "all tensors must be on one device")
        if t.dtype != ref.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")
    return ref


def check_positive(op: str, name: str, values) -> None:
    if any(v <= 0 for v in values):
        raise ValueError(f"{op}: {name} must be positive, got {tuple(values)}")


def check_non_negative(op: str, name: str, values) -> None:
    if any(v < 0 for v in values):
        raise ValueError(f"{op}: {name} must be non-negative, got {tuple(values)}")
