"""The bridge to the compiled kernels: dtype codes, device dispatch, argument checks, workspace.

Everything below this module is raw pointers; everything above it is tensors. Kernels take
(dtype_code, ...) on CPU and (stream, dtype_code, ...) on CUDA; `call` hides the difference.
"""
from __future__ import annotations

import functools
import inspect
import math
import threading

import torch

from pycnn import _C

try:  # built only when a CUDA compiler was found; importing it needs no GPU or driver
    from pycnn import _C_cuda
except ImportError:  # pragma: no cover - depends on the build
    _C_cuda = None

_DTYPE_CODE = {torch.float32: _C.FLOAT32, torch.float64: _C.FLOAT64}
# Accepted where the device's kernels lack them (always on CPU): computed in float32, the
# results rounded back to the input's dtype, which is the dtype torch's ops return.
_REDUCED = (torch.bfloat16, torch.float16)
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
    _cpu_workspaces.__dict__.clear()  # this thread's kept buffer may exceed the new limit


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
    if like.is_cpu:
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
    """A scratch tensor of whole samples' columns, at most the workspace limit (>= 1 sample).

    On the CPU one buffer per thread and dtype is kept and reused (grown when a call needs more;
    the limit caps it): a fresh one per call cost an allocation (~3 us) or, for large ones, the
    page faults of new memory, three times per convolution's forward and backward. Kernels run
    to completion before the call returns, so the next call may reuse it; each thread has its own.
    CUDA buffers come from torch's caching allocator (kernels are asynchronous, no sharing)."""
    if per_sample == 0 or batch == 0:
        return like.new_empty(0)
    fit = max(1, _workspace_limit_bytes // (per_sample * like.element_size()))
    numel = min(batch, fit) * per_sample
    if not like.is_cpu:
        return like.new_empty(numel)
    buffers = _cpu_workspaces.__dict__
    buf = buffers.get(like.dtype)
    if buf is None or buf.numel() < numel:
        buffers[like.dtype] = buf = torch.empty(numel, dtype=like.dtype)
    return buf


_cpu_workspaces = threading.local()  # dtype -> this thread's CPU workspace (see workspace)


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

# Under autocast the dispatcher's Autocast kernels (pycnn/_ops/autocast.py) must see the call.
_autocast_enabled = getattr(torch._C, "_is_any_autocast_enabled",
                            lambda: torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled())

_BODIES = {}      # op name -> the undecorated Python body
_FUNCTIONS = {}   # op name -> autograd.Function for ops with a backward
_fast_path = True
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", lambda t: False)
_RAW_APPLY = {}   # op name -> its Function's C++ apply (see register_autograd)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def custom_op(name: str):
    """Decorator: torch.library.custom_op("pycnn::<name>") that keeps the body for `run`."""
    def register(fn):
        body = computed_in_float32(name, fn)
        _BODIES[name] = body
        # The schema from fn itself: its string annotations name types of fn's module.
        schema = torch.library.infer_schema(fn, mutates_args=())
        return torch.library.custom_op(f"pycnn::{name}", body, mutates_args=(), schema=schema)
    return register


# Ops whose parameters may stay float32 under a bfloat16/float16 input, as torch's batch norm allows.
_FLOAT32_PARAMETERS = {"batch_norm_forward", "batch_norm_backward"}


def computed_in_float32(name: str, fn):
    """`fn` (an op body whose first argument is the input) made to accept float16/bfloat16 where
    the kernels lack them: those tensors are computed in float32 and the floating outputs are
    rounded back to the input's dtype (what torch returns). Tensors of another floating dtype
    are refused as torch refuses them (batch norm's float32 parameters excepted)."""
    names = list(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def body(*args):
        first = args[0]
        dtype = first.dtype
        if dtype not in _REDUCED or (first.is_cuda and _C_cuda is not None and dtype in _CUDA_DTYPE_CODE):
            return fn(*args)
        for i, a in enumerate(args[1:], 1):
            if (isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != dtype
                    and not (a.dtype == torch.float32 and name in _FLOAT32_PARAMETERS)):
                raise TypeError(f"{name}: {names[i]} has dtype {a.dtype} but the input has {dtype}")
        out = fn(*(a.float() if isinstance(a, torch.Tensor) and a.dtype == dtype else a for a in args))
        if isinstance(out, torch.Tensor):
            return out.to(dtype)
        return type(out)(t.to(dtype) if t.is_floating_point() else t for t in out)
    return body


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
        if not torch.is_grad_enabled():  # the usual backward (no create_graph): nothing to guard
            return backward(ctx, *grads)
        with torch.no_grad():
            outputs = backward(ctx, *grads)
        if not any(
                isinstance(t, torch.Tensor) and t.requires_grad for t in (*grads, *ctx.saved_tensors)):
            return outputs
        error = torch._C._functions.DelayedError(
            f"pycnn::{name}: no double backward (its backward op has no gradient formula)".encode(), len(outputs))
        marked = [None if t is None else t.detach().requires_grad_(True) for t in outputs]
        return error(*marked)

    function = _FUNCTIONS[name] = type(f"{name}_function", (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "backward": staticmethod(backward_once),
    })
    # Function.apply's Python prologue binds default arguments (only for a separate setup_context,
    # which this Function has not), unwraps dead functorch wrappers (the fast path takes no
    # functorch tensors) and routes functorch transforms (checked in run_eager). The C++ apply
    # underneath it does the work: calling it directly saves ~5-10 us a call (measured).
    raw_apply = vars(torch._C._FunctionBase).get("apply")
    _RAW_APPLY[name] = function.apply if raw_apply is None else raw_apply.__get__(None, function)


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
    if not _fast_path or torch.compiler.is_compiling() or torch.jit.is_tracing() or _autocast_enabled():
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
    return run_eager(name, *args)


def run_eager(name: str, *args):
    """`run` on the fast path, for a caller that is itself on it with these arguments (an op's
    eager body calling another op): saves the second fast_path_applies."""
    function = _FUNCTIONS.get(name)
    if function is not None and torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return function.apply(*args) if _functorch_active() else _RAW_APPLY[name](*args)
    return _BODIES[name](*args)


_kernel_threads = 0  # the thread count last given to the kernels


def sync_threads() -> None:
    """Makes the kernels use torch.get_num_threads() threads (done by every CPU call anyway)."""
    global _kernel_threads
    n = torch.get_num_threads()
    if _C.get_num_threads() != n:
        _C.set_num_threads(n)
    _kernel_threads = n


# ---- memory format: the kernels compute in NCHW; outputs take the layout torch would give ---------

_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _strides_like_channels_last(t: torch.Tensor) -> bool:
    """torch's is_channels_last_strides_2d/3d (what Tensor.suggest_memory_format reads): the
    strides grow in the order C, W, H, (D,) N, with its tie-breaks for size-1 dimensions."""
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:
        return False
    smallest = 0
    for d in (1, *range(t.dim() - 1, 1, -1), 0):
        if sizes[d] == 0 or strides[d] < smallest:
            return False
        if d == 0 and smallest == strides[1]:  # N111-like: ambiguous, torch says contiguous
            return False
        smallest = strides[d] * sizes[d] if sizes[d] > 1 else strides[d]
    return True


def output_format(*tensors) -> torch.memory_format:
    """The memory format torch gives the outputs of an op on these inputs: channels_last (or
    channels_last_3d) when any of them is laid out that way (convolutions look at input and
    weight, the others at their input), else contiguous."""
    for t in tensors:
        if t is None:
            continue
        cl = _CHANNELS_LAST.get(t.dim())
        # Two cached flags settle the common case without a walk over the strides: a tensor
        # contiguous as NCHW but not as NHWC has C before H, W, and so is not channels_last-like.
        if cl is None or (t.is_contiguous() and not t.is_contiguous(memory_format=cl)):
            continue
        if _strides_like_channels_last(t):
            return cl
    return torch.contiguous_format


def in_format(t: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """A kernel's contiguous result laid out in `memory_format` (a copy when that differs),
    with exactly the strides torch.empty(..., memory_format=...) gives, as the fakes do."""
    if memory_format is torch.contiguous_format:
        return t
    return torch.empty_like(t, memory_format=memory_format).copy_(t)


def empty(like: torch.Tensor, shape, memory_format: torch.memory_format = torch.contiguous_format,
          dtype=None) -> torch.Tensor:
    """An output of `shape` on like's device (fake implementations), in `memory_format`."""
    return torch.empty(tuple(shape), dtype=like.dtype if dtype is None else dtype, device=like.device,
                       memory_format=memory_format)


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
    if ref.dtype not in codes and ref.dtype not in _REDUCED:
        names = ", ".join(str(d).replace("torch.", "") for d in dict.fromkeys((*codes, *_REDUCED)))
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


def check_size(op: str, shape, **cause) -> None:
    """An output (or workspace) that no tensor can hold (2**63 bytes or more) fails here, naming
    the arguments that made it (`cause`, formatted only then), not deep inside the allocator."""
    numel = math.prod(shape)
    if type(numel) is int and numel * 8 >= 2 ** 63:  # (symbolic sizes under torch.compile: checked when real)
        what = ", ".join(f"{k} {tuple(v) if isinstance(v, (list, tuple)) else v}" for k, v in cause.items())
        raise ValueError(f"{op}: output shape {tuple(shape)} is too large ({what})")


def check_non_negative(op: str, name: str, values) -> None:
    if any(v < 0 for v in values):
        raise ValueError(f"{op}: {name} must be non-negative, got {tuple(values)}")
