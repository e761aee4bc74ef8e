"""featx.core.rayutil: Ray connected only when asked for, disconnected only by whoever
connected, and a missing Ray or an unreachable cluster said in one line."""

from __future__ import annotations

import sys

import pytest

from featx.core.errors import DependencyError, ExtractError
from featx.core.rayutil import connected


class FakeRay:
    """What rayutil uses of the ray module, recorded."""

    def __init__(self, running: bool = False, refuse: bool = False) -> None:
        self.running, self.refuse, self.calls = running, refuse, []

    def is_initialized(self) -> bool:
        return self.running

    def init(self, address=None, **kwargs) -> None:
        self.calls.append(("init", address))
        if self.refuse:
            raise ConnectionError("no cluster there")
        self.running = True

    def shutdown(self) -> None:
        self.calls.append(("shutdown",))
        self.running = False


@pytest.fixture
def fake_ray(monkeypatch):
    def install(**kwargs) -> FakeRay:
        ray = FakeRay(**kwargs)
        monkeypatch.setitem(sys.modules, "ray", ray)
        return ray

    return install


def test_a_new_instance_is_started_and_shut_down(fake_ray):
    ray = fake_ray()
    with connected("") as got:
        assert got is ray and ray.calls == [("init", None)]  # "": $RAY_ADDRESS or a new one
    assert ray.calls == [("init", None), ("shutdown",)]


def test_an_address_is_passed_and_the_instance_shut_down_after_an_error(fake_ray):
    ray = fake_ray()
    with pytest.raises(RuntimeError), connected("ray://head:10001"):
        raise RuntimeError
    assert ray.calls == [("init", "ray://head:10001"), ("shutdown",)]


def test_ray_already_connected_is_used_and_left_connected(fake_ray):
    ray = fake_ray(running=True)
    with connected("ray://head:10001") as got:
        assert got is ray
    assert ray.calls == [] and ray.running


@pytest.mark.parametrize("error", [ExtractError, DependencyError])
def test_an_unreachable_cluster_is_the_callers_error_naming_the_address(fake_ray, error):
    fake_ray(refuse=True)
    with pytest.raises(error, match="cannot reach the Ray cluster at 'ray://x:1': no cluster"):
        with connected("ray://x:1", error):
            pytest.fail("connected")


@pytest.mark.parametrize("error", [ExtractError, DependencyError])
def test_without_ray_the_error_says_which_extra_to_install(monkeypatch, error):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray: ImportError
    with pytest.raises(error, match=r"pip install 'featx\[ray\]'") as raised:
        with connected("", error):
            pytest.fail("connected")
    assert type(raised.value) is error

