"""The kernels' own thread pool: follows torch's thread count and survives fork()."""
import os
import sys

import pytest
import torch

import pycnn
import pycnn.functional as PF


def test_pool_follows_torch_threads():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        pycnn.sync_threads()
        assert pycnn._C.get_num_threads() == 1
        torch.set_num_threads(2)
        pycnn.sync_threads()
        assert pycnn._C.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        pycnn.sync_threads()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_kernels_work_in_a_forked_child():
    # A child has none of the parent's pool threads; it must build its own instead of waiting
    # forever for workers that do not exist.
    x, w = torch.randn(4, 8, 16, 16), torch.randn(8, 8, 3, 3)
    expected = PF.conv2d(x, w)
    pid = os.fork()
    if pid == 0:  # child: exit code says whether it computed the same result
        try:
            ok = torch.equal(PF.conv2d(x, w), expected)
        finally:
            os._exit(0 if ok else 1)
    deadline_pid, status = 0, 0
    import time
    for _ in range(300):
        deadline_pid, status = os.waitpid(pid, os.WNOHANG)
        if deadline_pid:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        pytest.fail("forked child hung in a pycnn kernel")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_kernels_follow_torch_set_num_threads_without_sync():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        PF.linear(torch.randn(2, 3), torch.randn(4, 3))  # any CPU op picks the new count up
        assert pycnn._C.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
        pycnn.sync_threads()


def test_kernels_run_on_torchs_openmp_team_when_torch_loaded_one():
    maps = open("/proc/self/maps").read() if os.path.exists("/proc/self/maps") else ""
    loaded = [line.split()[-1] for line in maps.splitlines() if "libgomp" in line or "libiomp" in line]
    backend = pycnn._C.threading_backend()
    if loaded and os.environ.get("PYCNN_THREADS") != "pool":
        assert backend.startswith("openmp:") and backend[len("openmp:"):] in loaded, (backend, loaded)
    else:
        assert backend == "pool"
