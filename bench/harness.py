"""Side-by-side timing of pycnn against torch: validate first, then time, interleaved.

A case hands the harness a `Pair`: two step functions doing the same work (pycnn's and torch's)
and a `validate` that runs both once and raises `Mismatch` when they disagree. The harness then

1. validates (this is also where an op that does not exist yet shows up: it becomes a skip),
2. warms up, picks how many calls one timing sample loops over (timer resolution), and
3. times A, B, A, B ... so that drift of a shared machine (other jobs, clock changes) hits both
   sides alike. The reported ratio is the median over pairs of (pycnn time / torch time).

Throughput is GFLOP/s for compute-bound ops and GB/s for memory-bound ones, where bytes count
each tensor read once and each tensor written once: a lower bound on the real traffic, so the
"% of peak" it gives is a lower bound too. The peaks are measured at start of the same run:
FLOP/s with a large torch matmul, bandwidth with a large tensor copy (read + write).
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Any, Callable, List, Optional, Sequence

import torch


class Skip(Exception):
    """The case cannot run yet (an op or model not written yet); it is reported, not failed."""


class Mismatch(Exception):
    """pycnn and torch disagree: the case is aborted and never timed."""


def skip_reason(exc: BaseException) -> Optional[str]:
    """Why `exc` means "not there yet" rather than a bug, or None when it is a real failure."""
    msg = str(exc).strip() or type(exc).__name__
    if isinstance(exc, Skip):
        return msg
    if isinstance(exc, NotImplementedError) or "not implemented" in msg.lower():
        return msg.splitlines()[0]
    # torch.ops.pycnn.<op> before the module registering it exists
    if isinstance(exc, AttributeError) and "pycnn" in msg:
        return f"op not registered yet ({msg.splitlines()[0]})"
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("pycnn"):
        return f"module {exc.name} not written yet"
    return None


# ---- settings, peaks, results ----------------------------------------------------------

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}

# Validation bound on max|pycnn - torch| / max|torch| per tensor: loose enough for a different
# summation order (float32: ~sqrt(n) * 6e-8 for n-term sums, 1e-5 at n = 32k), tight enough
# that a wrong index or a missing term (an O(1) error) cannot pass.
TOLERANCE = {torch.float32: 5e-4, torch.float64: 1e-9, torch.float16: 1e-2, torch.bfloat16: 3e-2}


@dataclasses.dataclass
class Settings:
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    repeat: int = 15           # timed pairs per case
    warmup: int = 2            # untimed calls per side after validation
    quick: bool = False
    max_seconds: float = 60.0  # sampling of one case stops after this, once min_pairs are done
    min_pairs: int = 3
    sample_seconds: float = 0.02  # one sample loops the op until it lasts about this long
    out: Any = None            # where lines are printed (default sys.stdout)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def print(self, *a, **kw):
        kw.setdefault("flush", True)
        print(*a, file=self.out or sys.stdout, **kw)


@dataclasses.dataclass
class Peaks:
    flops: float          # FLOP/s of torch's matmul
    bandwidth: float      # bytes/s of a large copy (read + write)
    matmul_n: int
    copy_bytes: int

    def describe(self, dtype) -> str:
        return (f"{self.flops / 1e9:.1f} GFLOP/s (torch.mm {self.matmul_n}x{self.matmul_n}, "
                f"{_dtype_name(dtype)}), {self.bandwidth / 1e9:.1f} GB/s (copy of "
                f"{self.copy_bytes >> 20} MiB, read + write)")


@dataclasses.dataclass
class Target:
    """A goal for one case: `metric` ('ratio' or 'pct_peak') compared with `value` by `op`."""
    metric: str
    op: str
    value: float

    def check(self, result: "Result") -> Optional[bool]:
        got = result.ratio if self.metric == "ratio" else result.pct_peak
        if got is None:
            return None
        return got <= self.value if self.op == "<=" else got >= self.value

    def describe(self) -> str:
        if self.metric == "ratio":
            return f"{self.op}{self.value:g}"
        return f"{self.op}{self.value:g}% peak"


@dataclasses.dataclass
class Result:
    name: str
    shape: str
    status: str = "ok"             # ok | skipped | MISMATCH | ERROR
    message: str = ""
    ours: Optional[float] = None   # seconds per call (or bytes, for memory rows; see unit)
    theirs: Optional[float] = None
    ratio: Optional[float] = None  # median over pairs of ours / theirs
    unit: str = "ms"               # how ours/theirs print: ms | us | MB
    rate: Optional[float] = None   # ours, FLOP/s or B/s
    rate_theirs: Optional[float] = None
    rate_unit: str = ""            # GFLOP/s | GB/s | ""
    pct_peak: Optional[float] = None
    pct_peak_theirs: Optional[float] = None
    targets: Sequence[Target] = ()
    pairs: int = 0
    seconds: float = 0.0           # wall time of the whole case (validation included)

    def verdicts(self) -> List[str]:
        out = []
        for t in self.targets:
            ok = t.check(self)
            if ok is not None:
                out.append(f"{t.describe()} {'PASS' if ok else 'MISS'}")
        return out

    def target_text(self) -> str:
        if self.status != "ok":
            return ", ".join(t.describe() for t in self.targets)
        return ", ".join(self.verdicts())

    def value_text(self, v: Optional[float]) -> str:
        if v is None:
            return "-"
        if self.unit == "MB":
            return f"{v / 1e6:.1f} MB"
        if self.unit == "us":
            return f"{v * 1e6:.1f} us"
        return f"{v * 1e3:.3f} ms"

    def rate_text(self) -> str:
        if self.rate is None:
            return ""
        scale = 1e9
        theirs = f" ({self.rate_theirs / scale:.1f})" if self.rate_theirs is not None else ""
        return f"{self.rate / scale:.1f}{theirs} {self.rate_unit}"

    def peak_text(self) -> str:
        if self.pct_peak is None:
            return ""
        theirs = f" ({self.pct_peak_theirs:.0f}%)" if self.pct_peak_theirs is not None else ""
        return f"{self.pct_peak:.0f}%{theirs}"


# ---- what a case provides ----------------------------------------------------------------

@dataclasses.dataclass
class Pair:
    """Two step functions doing the same work, and the check that they agree."""
    ours: Callable[[], Any]
    theirs: Callable[[], Any]
    validate: Callable[[], None]  # raises Mismatch (or a "not implemented" error)
    flops: float = 0.0            # per step; 0 when not compute-bound
    bytes: float = 0.0            # per step; 0 when not memory-bound


@dataclasses.dataclass
class Case:
    """A timed pair (`build`) or a custom measurement (`run`, returning a Result)."""
    name: str
    shape: str
    build: Optional[Callable[[Settings], Pair]] = None
    run: Optional[Callable[[Settings, "Peaks"], Result]] = None
    targets: Sequence[Target] = ()


# ---- comparison --------------------------------------------------------------------------

def compare(what: str, ours, ref, tol: float) -> None:
    """Raises Mismatch unless tensors agree in shape, dtype and values (integers exactly)."""
    if not isinstance(ours, torch.Tensor) or not isinstance(ref, torch.Tensor):
        raise Mismatch(f"{what}: pycnn gave {type(ours).__name__}, torch gave {type(ref).__name__}")
    if ours.shape != ref.shape:
        raise Mismatch(f"{what}: shape {tuple(ours.shape)}, torch {tuple(ref.shape)}")
    if ours.dtype != ref.dtype:
        raise Mismatch(f"{what}: dtype {ours.dtype}, torch {ref.dtype}")
    if ref.numel() == 0:
        return
    if not ref.is_floating_point():
        if not torch.equal(ours, ref):
            bad = int((ours != ref).sum())
            raise Mismatch(f"{what}: {bad} of {ref.numel()} integer elements differ")
        return
    o, r = ours.detach().double(), ref.detach().double()
    if not torch.isfinite(o).all() and not torch.equal(torch.isfinite(o), torch.isfinite(r)):
        raise Mismatch(f"{what}: pycnn has non-finite values where torch has none")
    diff = float((o - r).abs().nan_to_num(0.0).max())
    scale = float(r.abs().nan_to_num(0.0).max())
    rel = diff / scale if scale > 0 else diff
    if not rel <= tol:
        raise Mismatch(f"{what}: max |pycnn - torch| = {diff:.3g}, {rel:.3g} of max |torch| "
                       f"({scale:.3g}); tolerance {tol:g}")


def float_outputs(out) -> list:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o for o in outs if isinstance(o, torch.Tensor) and o.is_floating_point() and o.requires_grad]


def clone_args(args):
    """Independent copies of the float tensors (leaf, same requires_grad), others shared."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            c = a.detach().clone()
            out.append(c.requires_grad_(a.requires_grad) if a.is_floating_point() else c)
        else:
            out.append(a)
    return out


def op_pair(settings: Settings, our_fn, torch_fn, args: Sequence, *, backward: bool,
            mutated: Sequence[int] = (), flops: float = 0.0, nbytes: float = 0.0,
            tol: Optional[float] = None) -> Pair:
    """A Pair for a functional op: our_fn(*args) against torch_fn(*args).

    args: the float tensors that need gradients already have requires_grad (when `backward`).
    mutated: indices of args changed in place (batch-norm running stats), compared after.
    Forward-only cases run under no_grad on both sides; fwd+bwd ones take the gradient of every
    float output, seeded with the same random tensor, with respect to every arg needing one.
    """
    tol = TOLERANCE[settings.dtype] if tol is None else tol
    ours_args, ref_args = clone_args(args), clone_args(args)
    ours_wants = [a for a in ours_args if isinstance(a, torch.Tensor) and a.requires_grad]
    ref_wants = [a for a in ref_args if isinstance(a, torch.Tensor) and a.requires_grad]
    seeds: list = []

    def forward_only(fn, a):
        def step():
            with torch.no_grad():
                return fn(*a)
        return step

    def fwd_bwd(fn, a, wants):
        def step():
            outs = float_outputs(fn(*a))
            return torch.autograd.grad(outs, wants, seeds)
        return step

    def validate():
        g = torch.Generator().manual_seed(987_654)  # not a seed the cases use for inputs
        with torch.set_grad_enabled(backward):
            ours = fn_outputs(our_fn(*ours_args))
            ref = fn_outputs(torch_fn(*ref_args))
        if len(ours) != len(ref):
            raise Mismatch(f"pycnn gave {len(ours)} outputs, torch {len(ref)}")
        for i, (o, r) in enumerate(zip(ours, ref)):
            compare(f"output {i}", o, r, tol)
        for i in mutated:
            compare(f"argument {i} (updated in place)", ours_args[i], ref_args[i], tol)
        if not backward:
            return
        ref_floats = float_outputs(ref)
        seeds[:] = [torch.randn(r.shape, generator=g, dtype=torch.float64).to(r) for r in ref_floats]
        ours_grads = torch.autograd.grad(float_outputs(ours), ours_wants, seeds, allow_unused=True)
        ref_grads = torch.autograd.grad(ref_floats, ref_wants, seeds, allow_unused=True)
        for j, (go, gr) in enumerate(zip(ours_grads, ref_grads)):
            if gr is None or go is None:
                if (go is None) != (gr is None):
                    raise Mismatch(f"gradient {j}: pycnn {'has none' if go is None else 'has one'}, "
                                   f"torch {'has none' if gr is None else 'has one'}")
                continue
            compare(f"gradient of differentiable input {j}", go, gr, tol)

    if backward:
        return Pair(fwd_bwd(our_fn, ours_args, ours_wants), fwd_bwd(torch_fn, ref_args, ref_wants),
                    validate, flops, nbytes)
    return Pair(forward_only(our_fn, ours_args), forward_only(torch_fn, ref_args), validate, flops, nbytes)


def fn_outputs(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


# ---- timing ------------------------------------------------------------------------------

def synchronize(settings: Settings) -> None:
    if settings.cuda:
        torch.cuda.synchronize()


def time_calls(settings: Settings, fn: Callable[[], Any], calls: int) -> float:
    """Seconds per call of `calls` back-to-back calls.

    CUDA: events recorded on the current stream around the calls, after a synchronize so no
    earlier work is counted, and waited on before reading (kernels run asynchronously).
    """
    if settings.cuda:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def time_pair(settings: Settings, a: Callable[[], Any], b: Callable[[], Any],
              calls: Optional[int] = None):
    """Interleaved timing A, B, A, B ...: (median s/call of a, of b, median of a/b, pairs)."""
    for _ in range(settings.warmup):
        a()
        b()
    ta, tb = [], []
    began = time.perf_counter()
    if calls is None:  # one call of each picks how many calls a sample loops over
        one_a, one_b = time_calls(settings, a, 1), time_calls(settings, b, 1)
        calls = max(1, min(10_000, math.ceil(settings.sample_seconds / max(min(one_a, one_b), 1e-9))))
        if calls == 1:  # slow ops: that pair is already a sample
            ta, tb = [one_a], [one_b]
    while len(ta) < max(1, settings.repeat):
        if len(ta) >= settings.min_pairs and time.perf_counter() - began > settings.max_seconds:
            break
        ta.append(time_calls(settings, a, calls))
        tb.append(time_calls(settings, b, calls))
    ratios = [x / y for x, y in zip(ta, tb)]
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios), len(ta)


# ---- running cases -----------------------------------------------------------------------

def run_case(case: Case, settings: Settings, peaks: Optional[Peaks]) -> Result:
    """Runs one case; never raises (skips, mismatches and errors become the Result's status)."""
    res = Result(case.name, case.shape, targets=case.targets)
    try:
        if case.run is not None:
            res = case.run(settings, peaks)
            res.targets = res.targets or case.targets
            return res
        pair = case.build(settings)
        pair.validate()
        synchronize(settings)  # CUDA errors are asynchronous: surface them here, not while timing
        ours, theirs, ratio, n = time_pair(settings, pair.ours, pair.theirs)
        res.ours, res.theirs, res.ratio, res.pairs = ours, theirs, ratio, n
        work, peak, res.rate_unit = ((pair.flops, peaks and peaks.flops, "GFLOP/s") if pair.flops
                                     else (pair.bytes, peaks and peaks.bandwidth, "GB/s"))
        if work:
            res.rate, res.rate_theirs = work / ours, work / theirs
            if peak:
                res.pct_peak, res.pct_peak_theirs = 100 * res.rate / peak, 100 * res.rate_theirs / peak
    except Mismatch as e:
        res.status, res.message = "MISMATCH", str(e)
    except Exception as e:  # noqa: BLE001 - a failing case must not stop the others
        reason = skip_reason(e)
        if reason is not None:
            res.status, res.message = "skipped", reason
        else:
            res.status = "ERROR"
            res.message = "".join(traceback.format_exception_only(type(e), e)).strip()
            res.message += "\n" + "".join(traceback.format_tb(e.__traceback__)[-3:]).rstrip()
    return res


def format_line(r: Result) -> str:
    head = f"{r.name:<30} {r.shape:<28}"
    if r.status == "skipped":
        return f"{head} skipped: {r.message}"
    if r.status != "ok":
        return f"{head} {r.status}"
    parts = [f"pycnn {r.value_text(r.ours):>12}", f"torch {r.value_text(r.theirs):>12}",
             f"ratio {r.ratio:6.2f}" if r.ratio is not None else ""]
    if r.targets:
        parts.append(f"target {r.target_text()}")
    if r.rate is not None:
        parts.append(r.rate_text())
    if r.pct_peak is not None:
        parts.append(f"{r.peak_text()} of peak")
    if r.message:
        parts.append(r.message)
    parts.append(f"[{r.pairs} pairs, {r.seconds:.1f} s]" if r.pairs else f"[{r.seconds:.1f} s]")
    return head + " " + "  ".join(p for p in parts if p)


def report_failure(settings: Settings, r: Result) -> None:
    bar = "!" * 78
    settings.print(f"{bar}\n!!! {r.status}: {r.name} [{r.shape}] -- case aborted, not timed\n"
                   f"!!! {r.message.replace(chr(10), chr(10) + '!!! ')}\n{bar}")


def run_cases(cases: Sequence[Case], settings: Settings, peaks: Optional[Peaks]) -> List[Result]:
    results = []
    for case in cases:
        began = time.perf_counter()
        r = run_case(case, settings, peaks)
        r.seconds = time.perf_counter() - began
        if r.status in ("MISMATCH", "ERROR"):
            report_failure(settings, r)
        settings.print(format_line(r))
        results.append(r)
    return results


# ---- the machine -------------------------------------------------------------------------

def measure_peaks(settings: Settings) -> Peaks:
    """Best-of-several torch matmul FLOP/s and copy bandwidth on this device, this dtype."""
    dev, dt = settings.device, settings.dtype
    if settings.cuda:
        n, copy_bytes, tries = 8192, 1 << 30, 5
    else:
        # 2 * 2048^3 = 17 GFLOP: ~0.2 s at 100 GFLOP/s, big enough to reach the blocked peak.
        n, copy_bytes, tries = (1536, 128 << 20, 3) if settings.quick else (2048, 256 << 20, 5)
        if dt in (torch.float16, torch.bfloat16):
            n = 512  # CPU half matmuls can be very slow
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dev, dt)
    b = torch.randn(n, n, generator=g).to(dev, dt)
    c = torch.empty(n, n, device=dev, dtype=dt)
    torch.mm(a, b, out=c)
    t_mm = min(time_calls(settings, lambda: torch.mm(a, b, out=c), 1) for _ in range(tries))
    del a, b, c
    elems = copy_bytes // torch.tensor([], dtype=dt).element_size()
    src = torch.ones(elems, device=dev, dtype=dt)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t_copy = min(time_calls(settings, lambda: dst.copy_(src), 1) for _ in range(tries))
    return Peaks(flops=2.0 * n ** 3 / t_mm, bandwidth=2.0 * copy_bytes / t_copy, matmul_n=n,
                 copy_bytes=copy_bytes)


def machine_name(settings: Settings) -> str:
    if settings.cuda:
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _dtype_name(dt) -> str:
    return str(dt).replace("torch.", "")


def cpu_flags() -> str:
    """The SIMD features of this CPU that matter to the kernels (from /proc/cpuinfo)."""
    wanted = ("avx2", "fma", "avx512f", "avx512vl", "avx512dq", "avx512bw", "asimd", "sve")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return " ".join(w for w in wanted if w in have) or "none of " + " ".join(wanted)
    except OSError:
        pass
    return "unknown"


def header_lines(settings: Settings, peaks: Optional[Peaks]) -> List[str]:
    import pycnn
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    cores = os.cpu_count()
    lines = [
        f"date: {when}",
        f"machine: {machine_name(settings)} ({cores} logical CPUs)",
        f"torch {torch.__version__}, pycnn {pycnn.__version__}, threads {torch.get_num_threads()}, "
        f"device {settings.device}, dtype {_dtype_name(settings.dtype)}"
        + (f", repeat {settings.repeat}" + (" (quick)" if settings.quick else "")),
    ]
    if not settings.cuda:
        lines.append(f"CPU target: pycnn {pycnn.cpu_isa()} (of {', '.join(pycnn._C.available_isas())} on this CPU), "
                     f"torch {torch.backends.cpu.get_cpu_capability()}; CPU flags: {cpu_flags()}")
        if getattr(pycnn._C, "avx512_emulated", False) and pycnn.cpu_isa() == "avx512":
            lines.append("WARNING: a test build (PYCNN_EMULATE_AVX512): its avx512 kernels run on AVX2 "
                         "instructions, emulated; these times say nothing about AVX-512 speed")
    if settings.cuda:
        lines.append("CUDA timing with torch.cuda.Event; TF32 disabled for torch's matmul and cuDNN")
    if peaks is not None:
        lines.append(f"peak: {peaks.describe(settings.dtype)}")
    lines.append("ratio = median over interleaved pairs of pycnn time / torch time (lower is better); "
                 "throughput and % of peak: pycnn (torch)")
    lines.append("conv GFLOP/s count the direct algorithm's 2 flops per multiply-add for both sides; pycnn's "
                 "Winograd kernels (float32 3x3 stride 1) do 2.25x fewer, so their effective rate can pass 100% of peak")
    return lines


def markdown(settings: Settings, peaks: Optional[Peaks], results: Sequence[Result]) -> str:
    out = [f"### pycnn vs torch: {settings.device}, {_dtype_name(settings.dtype)}", ""]
    out += [f"- {line}" for line in header_lines(settings, peaks)]
    out += ["", "| case | shape | pycnn | torch | ratio | target | throughput | % of peak |",
            "|---|---|---:|---:|---:|---|---:|---:|"]
    for r in results:
        if r.status == "ok":
            ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
            cells = [r.name, r.shape, r.value_text(r.ours), r.value_text(r.theirs), ratio,
                     r.target_text(), r.rate_text(), r.peak_text()]
        else:
            what = f"{r.status}: {r.message.splitlines()[0] if r.message else ''}"
            if r.status == "skipped":
                what = f"skipped: {r.message}"
            cells = [r.name, r.shape, what.replace("|", "/"), "", "", r.target_text(), "", ""]
        out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(out) + "\n"


def summary(results: Sequence[Result]) -> str:
    counts = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    verdicts = [v for r in results if r.status == "ok" for v in r.verdicts()]
    passed = sum(v.endswith("PASS") for v in verdicts)
    return (f"{len(results)} cases: {counts.get('ok', 0)} timed, {counts.get('skipped', 0)} skipped, "
            f"{counts.get('MISMATCH', 0)} mismatched, {counts.get('ERROR', 0)} errors; "
            f"targets {passed} PASS, {len(verdicts) - passed} MISS")
