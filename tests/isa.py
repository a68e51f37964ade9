"""Run a test once per CPU target this machine runs (pycnn._C.available_isas()):

    from isa import each_isa  # noqa: F401  (pytest finds the fixture by name)

    def test_something(each_isa):
        ...                     # runs on target `each_isa`; the previous one is restored afterwards
"""
from __future__ import annotations

import contextlib
import os

import pytest

from pycnn import _C


@contextlib.contextmanager
def use_isa(name):
    """Switches the kernels to target `name` for the block, and back afterwards (also on error)."""
    previous = _C.set_cpu_isa(name)
    try:
        yield name
    finally:
        _C.set_cpu_isa(previous)


# Inside test_isa.py's per-target rerun (PYCNN_CPU_ISA set for the whole process), only that one.
_TARGETS = [_C.cpu_isa()] if os.environ.get("PYCNN_ISA_MATRIX_CHILD") == "1" else _C.available_isas()


@pytest.fixture(params=_TARGETS, ids=lambda name: f"isa={name}")
def each_isa(request):
    """Parametrizes a test over every available target, switched to for the test and restored after."""
    with use_isa(request.param):
        yield request.param
