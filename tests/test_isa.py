"""The each_isa fixture (tests/isa.py): switches to each ISA and always restores the previous one."""
import pytest

from isa import DEFAULT, available_isas, each_isa, use_isa  # noqa: F401
from pycnn import _C


class FakeC:
    """A module with the coming multi-ISA API."""

    def __init__(self, names=("generic", "avx2"), active="avx2", returns_previous=True):
        self.names, self.active, self.returns_previous, self.calls = list(names), active, returns_previous, []

    def available_isas(self):
        return list(self.names)

    def set_cpu_isa(self, name):
        if name not in self.names:
            raise ValueError(f"unknown ISA {name}")
        self.calls.append(name)
        previous, self.active = self.active, name
        return previous if self.returns_previous else None

    def get_cpu_isa(self):
        return self.active


def test_without_the_api_only_the_default_runs():
    class Bare:
        pass

    assert available_isas(Bare()) == [DEFAULT]
    with use_isa(DEFAULT, Bare()) as name:  # switches nothing, needs no setter
        assert name == DEFAULT
    only_lister = Bare()
    only_lister.available_isas = lambda: ["generic"]
    assert available_isas(only_lister) == [DEFAULT]  # listing without a setter: nothing to switch


def test_lists_the_modules_isas_once_each():
    assert available_isas(FakeC(names=("generic", "avx2", "generic"))) == ["generic", "avx2"]
    assert available_isas(FakeC(names=())) == [DEFAULT]


@pytest.mark.parametrize("returns_previous", [True, False])
def test_switches_and_restores_even_when_the_test_fails(returns_previous):
    fake = FakeC(returns_previous=returns_previous)
    with use_isa("generic", fake):
        assert fake.active == "generic"
    assert fake.active == "avx2"
    with pytest.raises(RuntimeError, match="boom"):
        with use_isa("generic", fake):
            raise RuntimeError("boom")
    assert fake.active == "avx2" and fake.calls == ["generic", "avx2", "generic", "avx2"]


def test_fixture_runs_on_each_available_isa(each_isa):
    assert each_isa in available_isas()
    getter = getattr(_C, "get_cpu_isa", None)
    if each_isa != DEFAULT and callable(getter):
        assert getter() == each_isa
