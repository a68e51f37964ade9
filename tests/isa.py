"""Run a test once per CPU instruction set the kernels can be switched to.

Coming multi-ISA support is expected to add to pycnn._C:
    available_isas() -> list of names this CPU can run, e.g. ["generic", "avx2"]
    set_cpu_isa(name) -> the name that was active before
Until both exist (or if they return nothing usable) the fixture runs a test once, as "default",
on whatever the library picks. Use it by importing the fixture into a test module:

    from isa import each_isa  # noqa: F401  (pytest finds the fixture by name)

    def test_something(each_isa):
        ...                     # runs on ISA `each_isa`; the previous one is restored afterwards
"""
from __future__ import annotations

import contextlib

import pytest

from pycnn import _C

DEFAULT = "default"


def available_isas(module=_C):
    """The ISA names to run on: module.available_isas() when switching is supported, else ["default"]."""
    lister, setter = getattr(module, "available_isas", None), getattr(module, "set_cpu_isa", None)
    if not callable(lister) or not callable(setter):
        return [DEFAULT]
    names = [str(n) for n in (lister() or [])]
    return list(dict.fromkeys(names)) or [DEFAULT]  # unique, in the library's order


def current_isa(module=_C):
    """The active ISA's name if the module can tell (get_cpu_isa / cpu_isa), else None."""
    for getter in ("get_cpu_isa", "cpu_isa"):
        fn = getattr(module, getter, None)
        if callable(fn):
            return fn()
    return None


@contextlib.contextmanager
def use_isa(name, module=_C):
    """Switches the kernels to ISA `name` for the block and restores the previous one after it
    (also when the block raises). "default" switches nothing."""
    if name == DEFAULT:
        yield name
        return
    before = current_isa(module)
    previous = module.set_cpu_isa(name)
    if previous is None:  # a setter that returns nothing: restore what the getter said
        previous = before
    try:
        yield name
    finally:
        assert previous is not None, f"set_cpu_isa({name!r}) returned None and there is no getter: cannot restore"
        module.set_cpu_isa(previous)


@pytest.fixture(params=available_isas(), ids=lambda name: f"isa={name}")
def each_isa(request):
    """Parametrizes a test over every available ISA, switched to for the test and restored after."""
    with use_isa(request.param):
        yield request.param
