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
    return home


def shared_reference(*parts) -> Path:
    """Files from ../shared/reference (the source of truth for fakes and parsers)."""
    path = SHARED.joinpath("reference", *parts)
    if not path.exists():
        pytest.skip(f"reference file {path} is not available")
    return path


def kvm_usable() -> bool:
    return os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)


@pytest.fixture
def small_fs(tmp_path):
    """``small_fs(folder, size="64k", read_only=False)``: a real tmpfs mounted at ``folder`` (a full
    disk or a read-only one, for the kernel's own ENOSPC/EROFS); unmounted at the end."""
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    mounted = []

    def make(folder: Path, size: str = "64k", read_only: bool = False) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(folder)
        return folder

    yield make
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
