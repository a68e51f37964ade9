"""Runs the CUDA kernels' device code on the CPU (emulate.cpp) and compares it with torch.

    python csrc/cuda/host_check/check.py     # builds emulate.cpp with g++ -std=c++20, then checks

Covers the GEMM kernel (every tile configuration, all transpose combinations, vector and scalar
loads, batching, slabs, bias, alpha/beta), conv2d's GEMM plans with im2col/col2im (forward, both
gradients, groups, stride, padding, dilation, pointwise, workspace chunks), depthwise and max
pooling index math. Not covered: the block reductions, launch code, anything GPU-specific.
"""
import ctypes
import itertools
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.dirname(os.path.dirname(HERE))


def build():
    out = os.path.join(tempfile.gettempdir(), f"pycnn_cuda_emulate_{os.getpid()}.so")
    subprocess.check_call(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", f"-I{CSRC}",
                           os.path.join(HERE, "emulate.cpp"), "-o", out, "-lpthread"])
    return ctypes.CDLL(out)


LIB = build()
P, I, L, D = ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_double
LIB.emu_gemm_problem.argtypes = [I, I, L, D, D, P, P, P, P]
LIB.emu_conv_f64.argtypes = [I, L, I, P, P, P, P, P, ctypes.c_int64]
LIB.emu_conv_f32.argtypes = [I, L, I, P, P, P, P, P, ctypes.c_int64]
LIB.emu_depthwise_f64.argtypes = [I, L, P, P, P, P, P]
LIB.emu_pool_f64.argtypes = [I, L, P, P, P, P]


def ptr(t, offset=0):
    return None if t is None else ctypes.c_void_p(t.data_ptr() + offset * t.element_size())


def i64(vals):
    return ctypes.cast((ctypes.c_int64 * len(vals))(*[int(v) for v in vals]), ctypes.c_void_p)


def check_gemm():
    n = 0
    for dtype, cfg, ta, tb in itertools.product((torch.float32, torch.float64), (0, 1, 2), (0, 1), (0, 1)):
        for (M, N, K, pad, off, alpha, beta) in [(70, 45, 19, 0, 0, 1.0, 0.0), (33, 130, 8, 1, 1, -0.5, 2.0),
                                                   (128, 64, 16, 0, 0, 1.0, 1.0), (1, 1, 1, 0, 0, 2.0, 0.0)]:
            lda, ldb, ldc = (M if ta else K) + pad, (K if tb else N) + pad, N + pad
            ar, br = (K if ta else M), (N if tb else K)
            A = torch.randn(ar * lda + off, dtype=dtype)
            B = torch.randn(br * ldb + off, dtype=dtype)
            C = torch.randn(M * ldc + off, dtype=dtype)
            Am = A[off:].view(ar, lda)[:, :(M if ta else K)]
            Bm = B[off:].view(br, ldb)[:, :(K if tb else N)]
            Cm = C[off:].view(M, ldc)[:, :N]
            opA, opB = (Am.t() if ta else Am).double(), (Bm.t() if tb else Bm).double()
            want = alpha * opA @ opB + (beta * Cm.double() if beta else 0)
            q = [ta, tb, M, N, K, lda, ldb, ldc, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
            LIB.emu_gemm_problem(int(dtype == torch.float64), cfg, i64(q), ctypes.c_double(alpha),
                                 ctypes.c_double(beta), ptr(A, off), ptr(B, off), ptr(C, off), None)
            tol = 1e-4 if dtype == torch.float32 else 1e-12
            torch.testing.assert_close(Cm.double(), want, rtol=tol, atol=tol,
                                       msg=lambda m: f"gemm {dtype} cfg={cfg} ta={ta} tb={tb} {M}x{N}x{K}: {m}")
            n += 1
    # batched (outer x inner), slabs and both bias modes, float64
    for cfg, mode in itertools.product((0, 1, 2), (1, 2)):
        outer, inner, slabs, M, N, K = 2, 3, 2, 20, 37, 9
        A = torch.randn(slabs, outer, inner, M, K, dtype=torch.float64)
        B = torch.randn(slabs, outer, inner, K, N, dtype=torch.float64)
        C = torch.randn(outer, inner, M, N, dtype=torch.float64)
        bias = torch.randn(inner, M if mode == 1 else N, dtype=torch.float64)
        want = torch.einsum("soimk,soikn->oimn", A, B) + C
        want = want + (bias[None, :, :, None] if mode == 1 else bias[None, :, None, :])
        q = [0, 0, M, N, K, K, N, N, outer, inner, inner * M * K, M * K, inner * K * N, K * N,
             inner * M * N, M * N, slabs, outer * inner * M * K, outer * inner * K * N, mode, bias.shape[1]]
        LIB.emu_gemm_problem(1, cfg, i64(q), ctypes.c_double(1.0), ctypes.c_double(1.0), ptr(A), ptr(B), ptr(C), ptr(bias))
        torch.testing.assert_close(C, want, msg=lambda m: f"batched gemm cfg={cfg} bias mode {mode}: {m}")
        n += 1
    return n


def conv_shape(x, w, stride, pad, dil, groups, y):
    N, C, H, W = x.shape
    K, _, kh, kw = w.shape
    return [N, C, H, W, K, y.shape[2], y.shape[3], kh, kw, stride[0], stride[1], pad[0], pad[1], dil[0], dil[1], groups]


def check_conv():
    cases = [((2, 3, 9, 8), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1),
             ((2, 4, 11, 7), (6, 2, 3, 2), (2, 1), (1, 0), (1, 1), 2),
             ((1, 6, 10, 10), (6, 2, 3, 3), (2, 2), (2, 2), (2, 2), 3),
             ((3, 5, 6, 6), (7, 5, 1, 1), (1, 1), (0, 0), (1, 1), 1),
             ((2, 4, 6, 5), (8, 4, 1, 1), (2, 2), (0, 0), (1, 1), 1),
             ((3, 3, 4, 4), (4, 3, 5, 5), (1, 1), (2, 2), (1, 1), 1)]
    n = 0
    for xs, ws, st, pd, dl, g in cases:
        x = torch.randn(*xs, dtype=torch.float64, requires_grad=True)
        w = torch.randn(*ws, dtype=torch.float64, requires_grad=True)
        b = torch.randn(ws[0], dtype=torch.float64, requires_grad=True)
        y = F.conv2d(x, w, b, st, pd, dl, g)
        gy = torch.randn_like(y)
        gx, gw, _ = torch.autograd.grad(y, (x, w, b), gy)
        s = conv_shape(x, w, st, pd, dl, g, y)
        per = s[1] * s[7] * s[8] * s[5] * s[6]
        for cfg, ws_elems in itertools.product((0, 2), (per, per * xs[0])):  # one sample per chunk / all
            out = torch.empty_like(y)
            LIB.emu_conv_f64(0, i64(s), cfg, ptr(x), ptr(w), ptr(b), None, ptr(out), ws_elems)
            torch.testing.assert_close(out, y.detach(), msg=lambda m: f"conv fwd {xs} {ws}: {m}")
            out = torch.empty_like(x)
            LIB.emu_conv_f64(1, i64(s), cfg, None, ptr(w), None, ptr(gy), ptr(out), ws_elems)
            torch.testing.assert_close(out, gx, msg=lambda m: f"conv grad input {xs} {ws}: {m}")
            out = torch.full_like(w, float("nan"))
            LIB.emu_conv_f64(2, i64(s), cfg, ptr(x), None, None, ptr(gy), ptr(out), ws_elems)
            torch.testing.assert_close(out, gw, msg=lambda m: f"conv grad weight {xs} {ws}: {m}")
            n += 3
    return n


def check_depthwise():
    n = 0
    for xs, mult, k, st, pd, dl in [((2, 3, 9, 8), 1, (3, 3), (1, 1), (1, 1), (1, 1)),
                                    ((2, 4, 10, 7), 2, (3, 2), (2, 1), (1, 0), (1, 1)),
                                    ((1, 5, 12, 12), 3, (5, 5), (2, 2), (4, 4), (2, 2))]:
        C = xs[1]
        x = torch.randn(*xs, dtype=torch.float64, requires_grad=True)
        w = torch.randn(C * mult, 1, *k, dtype=torch.float64, requires_grad=True)
        b = torch.randn(C * mult, dtype=torch.float64)
        y = F.conv2d(x, w, b, st, pd, dl, C)
        gy = torch.randn_like(y)
        gx, gw = torch.autograd.grad(y, (x, w), gy)
        s = i64(conv_shape(x, w, st, pd, dl, C, y))
        out = torch.empty_like(y)
        LIB.emu_depthwise_f64(0, s, ptr(x), ptr(w), ptr(b), None, ptr(out))
        torch.testing.assert_close(out, y.detach())
        out = torch.empty_like(x)
        LIB.emu_depthwise_f64(1, s, None, ptr(w), None, ptr(gy), ptr(out))
        torch.testing.assert_close(out, gx)
        out = torch.empty_like(w)
        LIB.emu_depthwise_f64(2, s, ptr(x), None, None, ptr(gy), ptr(out))
        torch.testing.assert_close(out, gw)
        n += 3
    return n


def check_pool():
    n = 0
    for xs, k, st, pd, dl, ceil in [((2, 3, 9, 8), (2, 2), (2, 2), (0, 0), (1, 1), False),
                                    ((2, 3, 9, 8), (3, 3), (2, 2), (1, 1), (1, 1), True),
                                    ((1, 2, 11, 10), (3, 2), (1, 2), (1, 1), (2, 1), False),
                                    ((1, 2, 7, 7), (3, 3), (1, 1), (1, 1), (1, 1), False)]:
        x = torch.randint(0, 3, xs).double()  # ties everywhere
        x.view(-1)[5] = float("nan")
        x.view(-1)[6] = float("nan")
        x[-1, -1] = float("-inf")
        y, idx = F.max_pool2d(x, k, st, pd, dl, ceil, True)
        s = i64([xs[0] * xs[1], xs[2], xs[3], y.shape[2], y.shape[3], *k, *st, *pd, *dl])
        out, oidx = torch.empty_like(y), torch.empty_like(idx)
        LIB.emu_pool_f64(0, s, ptr(x), None, ptr(out), ptr(oidx))
        assert torch.equal(oidx, idx), f"pool indices {xs} {k}"
        torch.testing.assert_close(out, y, equal_nan=True, rtol=0, atol=0)
        xr = torch.randperm(x.numel()).double().view(xs).requires_grad_()
        y, idx = F.max_pool2d(xr, k, st, pd, dl, ceil, True)
        gy = torch.randn_like(y)
        (gx,) = torch.autograd.grad(y, xr, gy)
        out = torch.empty_like(gx)
        LIB.emu_pool_f64(1, s, None, ptr(gy), ptr(out), ptr(idx))
        torch.testing.assert_close(out, gx)
        n += 2
    return n


if __name__ == "__main__":
    torch.manual_seed(0)
    counts = {f.__name__: f() for f in (check_gemm, check_conv, check_depthwise, check_pool)}
    print("host emulation OK:", counts)
    sys.exit(0)
