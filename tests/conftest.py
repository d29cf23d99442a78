"""Shared fixtures: every test gets its own B2DKIT_HOME so nothing touches the real home."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def b2dkit_home(tmp_path, monkeypatch):
    home = tmp_path / "b2dkit-home"
    home.mkdir()
    monkeypatch.setenv("B2DKIT_HOME", str(home))
    # No per-VM watcher daemons from tests that fake the hypervisor; the tests that
    # want one (watcher and e2e tests) turn it back on.
    monkeypatch.setenv("B2DKIT_WATCHER", "0")
    return home


def shared_reference(*parts) -> Path:
    """Files from ../shared/reference (the source of truth for fakes and parsers)."""
    path = SHARED.joinpath("reference", *parts)
    if not path.exists():
        pytest.skip(f"reference file {path} is not available")
    return path


def kvm_usable() -> bool:
    return os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)
