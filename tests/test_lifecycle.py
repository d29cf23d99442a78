"""lifecycle.py: the order of things for a VM (here: what a stop does before it may power off)."""

import pytest

from b2dkit import guest, lifecycle, machines
from b2dkit.errors import GuestError
from b2dkit.hypervisors.base import VMState


class _Provider:
    """Records what lifecycle asks of the hypervisor; the guest never shuts down by itself."""

    def __init__(self, events, clean):
        self.events, self.clean = events, clean

    def state(self):
        return VMState.RUNNING

    def ssh_endpoint(self):
        return "127.0.0.1", 2022

    def stop(self, timeout):
        self.events.append(("stop", timeout))
        return self.clean


class _Session:
    def __init__(self, events):
        self.events = events

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def run(self, cmd, timeout=60.0, check=True):
        self.events.append(("guest", cmd))


@pytest.fixture
def stopping(monkeypatch):
    events = []

    def world(clean=False, reachable=True):
        monkeypatch.setattr(lifecycle, "provider_for", lambda m: _Provider(events, clean))
        monkeypatch.setattr(lifecycle, "unmount_all", lambda m, log=None: lifecycle.Outcome())

        def connect(*a, **kw):
            if not reachable:
                raise GuestError("cannot reach SSH at 127.0.0.1:2022")
            return _Session(events)

        monkeypatch.setattr(guest, "connect", connect)
        return events

    return world


def test_stop_syncs_the_guest_before_the_hypervisor_may_power_it_off(stopping):
    events = stopping(clean=False)
    out = lifecycle.stop(machines.Machine(name="dev", provider="qemu"), timeout=0.05)
    assert events == [("guest", ["sync"]), ("stop", 0.05)]
    assert out.done == ["stopped VM dev (powered off)"]
    assert "synced first" in out.warnings[0] and "may be lost" not in out.warnings[0]


def test_a_clean_shutdown_is_no_warning(stopping):
    events = stopping(clean=True)
    out = lifecycle.stop(machines.Machine(name="dev", provider="qemu"))
    assert events == [("guest", ["sync"]), ("stop", lifecycle.STOP_TIMEOUT)]
    assert out.done == ["stopped VM dev"] and out.warnings == []


def test_an_unreachable_guest_is_still_stopped_and_the_risk_is_said(stopping):
    events = stopping(clean=False, reachable=False)
    said = []
    out = lifecycle.stop(machines.Machine(name="dev", provider="qemu"), log=said.append, timeout=1)
    assert events == [("stop", 1.0)]
    assert any("could not flush" in line for line in said) and "may be lost" in out.warnings[0]


@pytest.mark.parametrize("bad", [0, -1, "0", "abc", "nan", float("inf"), ""])
def test_a_timeout_that_skips_the_shutdown_is_refused_before_anything_happens(stopping, bad):
    events = stopping()
    with pytest.raises(lifecycle.InputError, match="--timeout must be"):
        lifecycle.stop(machines.Machine(name="dev", provider="qemu"), timeout=bad)
    assert events == []


def test_a_missing_build_tool_for_the_demo_guest_is_tool_missing_not_a_traceback(tmp_path, monkeypatch):
    """The demo profile builds its guest: without dpkg-query/sudo that is this machine's to fix."""
    from b2dkit import profile
    from b2dkit.errors import ToolMissing

    demo = profile.load("demo")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolMissing, match="guest ISO"):
        lifecycle.source_iso_change(demo)
