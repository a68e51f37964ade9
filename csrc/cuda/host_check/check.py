"""The host emulator of the CUDA module: csrc/cuda's own sources, compiled by g++ against the
CPU runtime in shim/cuda_runtime.h, linked with bindings_cuda.cpp into an emulated `_C_cuda`.

    python csrc/cuda/host_check/check.py      # builds it, runs tests/test_cuda_host_emulation.py

Everything the GPU module does on the host runs for real (bindings, launch code: tile and grid
choices, split grids, int32/int64 variants, workspace chunks, the unpool flag read-back), and
every kernel runs its device code on CPU fibers with a warp model (see the shim). `routed()`
sends pycnn's ops on CPU tensors to it, so pycnn.functional + autograd run the CUDA kernels
end to end and can be compared with torch. What it cannot tell: anything about the real GPU
(timing, memory model, the GPU compiler, driver): nothing here has run on a GPU.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.dirname(os.path.dirname(HERE))
CUDA = os.path.join(CSRC, "cuda")
CXX = os.environ.get("CXX", "g++")
# PYCNN_EMULATOR_FLAGS adds compiler flags, e.g. "-fsanitize=address,undefined" (then run
# Python with LD_PRELOAD of libasan/libubsan) to check the device code's memory accesses.
EXTRA = os.environ.get("PYCNN_EMULATOR_FLAGS", "").split()
KERNEL_FLAGS = EXTRA + ["-std=c++20", "-O1", "-fPIC", "-w", "-U_FORTIFY_SOURCE", f"-I{os.path.join(HERE, 'shim')}", f"-I{CSRC}"]


def _sources():
    """(source, flags) to compile: the kernels at -O1 (they do the work), the glue at -O0."""
    import pybind11
    kernels = sorted(f for f in os.listdir(CUDA) if f.endswith(".cu"))
    glue = EXTRA + ["-std=c++20", "-O0", "-fPIC", "-w", f"-I{CSRC}", f"-I{sysconfig.get_paths()['include']}",
            f"-I{pybind11.get_include()}"]
    out = [(os.path.join(CUDA, f), KERNEL_FLAGS + ["-x", "c++"]) for f in kernels]
    out.append((os.path.join(CUDA, "bindings_cuda.cpp"), glue))
    out.append((os.path.join(HERE, "emulate_api.cpp"), KERNEL_FLAGS))
    return out


def _fingerprint(sources) -> str:
    h = hashlib.sha256(sys.version.encode() + CXX.encode())
    for folder in (CUDA, os.path.join(CSRC, "common"), HERE, os.path.join(HERE, "shim")):
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                h.update(name.encode())
                with open(path, "rb") as f:
                    h.update(f.read())
    for _, flags in sources:
        h.update(" ".join(flags).encode())
    return h.hexdigest()[:16]


def build() -> str:
    """Compiles the emulated module (cached by source hash); returns its path."""
    sources = _sources()
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    cache = os.environ.get("PYCNN_EMULATOR_CACHE", tempfile.gettempdir())
    target_dir = os.path.join(cache, f"pycnn-cuda-emulator-{_fingerprint(sources)}")
    target = os.path.join(target_dir, "_C_cuda" + suffix)
    if os.path.exists(target):
        return target
    work = tempfile.mkdtemp(prefix="pycnn-cuda-emulator-", dir=cache)
    try:
        def compile_one(item):
            src, flags = item
            obj = os.path.join(work, os.path.basename(src) + ".o")
            p = subprocess.run([CXX, *flags, "-c", src, "-o", obj], capture_output=True, text=True)
            if p.returncode:
                raise RuntimeError(f"emulator build of {src} failed:\n{p.stderr[-4000:]}")
            return obj
        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            objects = list(pool.map(compile_one, sources))
        out = os.path.join(work, "_C_cuda" + suffix)
        subprocess.run([CXX, *EXTRA, "-shared", "-o", out, *objects], check=True)
        os.makedirs(target_dir, exist_ok=True)
        os.replace(out, target)  # atomic: concurrent builders agree on the result
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


class Emulator:
    """The emulated _C_cuda module (`module`) and its controls (`lib`, through ctypes)."""

    def __init__(self, path: str):
        spec = importlib.util.spec_from_file_location("_C_cuda", path)
        self.module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)
        self.lib = ctypes.CDLL(path)
        self.lib.emu_configure.argtypes = [ctypes.c_longlong, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_int]
        self.lib.emu_set_driver.argtypes = [ctypes.c_int, ctypes.c_int]
        self.lib.emu_sm_count.argtypes = [ctypes.c_int]
        for name in ("emu_launch_report", "emu_failure"):
            getattr(self.lib, name).restype = ctypes.c_char_p

    # Emulated devices differ in SM count, which picks the GEMM tile configuration.
    DEVICES = {"132 SMs": 0, "1 SM (largest tiles)": 1, "2^20 SMs (smallest tiles)": 2, "8 SMs": 3}

    @contextlib.contextmanager
    def limits(self, grid_yz=None, grid_x=None, index32=None, device=None):
        """Device limits lowered for the duration (None: unchanged), restored afterwards."""
        default = (65535, 1 << 20, 1 << 30, 0)
        self.lib.emu_configure(*(-1 if v is None else v for v in (grid_yz, grid_x, index32)),
                               -1 if device is None else device)
        try:
            yield
        finally:
            self.lib.emu_configure(*default)

    def launches(self) -> dict:
        """{(kernel expression, signature): launches} so far, plus the largest grid.y / grid.z."""
        out = {}
        for line in self.lib.emu_launch_report().decode().splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                out[(parts[1], parts[2])] = int(parts[0])
            else:
                out[parts[0]] = int(parts[1])
        return out

    def failure(self) -> str:
        return self.lib.emu_failure().decode()

    @contextlib.contextmanager
    def routed(self):
        """pycnn's ops on CPU tensors run the emulated CUDA kernels (stream 0) for the duration."""
        from pycnn._ops import native
        real = native.call

        def call(name, like, *args):
            assert like.device.type == "cpu", "the emulator works on CPU tensors"
            return getattr(self.module, name)(0, native._DTYPE_CODE[like.dtype], *args)

        native.call = call
        try:
            yield
        finally:
            native.call = real


_EMULATOR = None


def emulator() -> Emulator:
    global _EMULATOR
    if _EMULATOR is None:
        _EMULATOR = Emulator(build())
    return _EMULATOR


if __name__ == "__main__":
    root = os.path.dirname(CSRC)
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", os.path.join(root, "tests", "test_cuda_host_emulation.py"),
                              "-q", "-p", "no:cacheprovider"], cwd=root))
