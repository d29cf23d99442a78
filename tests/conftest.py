"""Shared fixtures: every test gets its own B2DKIT_HOME so nothing touches the real home."""

import os
from pathlib import Path

import pytest

from fakevbox.versions import DEFAULT, VERSIONS

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True)
def b2dkit_home(tmp_path, monkeypatch):
    home = tmp_path / "b2dkit-home"
    home.mkdir()
    monkeypatch.setenv("B2DKIT_HOME", str(home))
    # No per-VM watcher daemons from tests that fake the hypervisor; the tests that
    # want one (watcher and e2e tests) turn it back on.
    monkeypatch.setenv("B2DKIT_WATCHER", "0")
    return home


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed e2e test's report ends with what its guests said on their serial consoles (kernel,
    boot and dockerd lines) and the host's load: when SSH to a guest hangs in CI, nothing else is left
    to tell a wedged guest from a starved host (the VM folders go with the test's tmp dir)."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed or "e2e" not in item.keywords:
        return
    import qemuclean

    home = os.environ.get("B2DKIT_HOME")
    mine = qemuclean.qemu_pids(Path(home)) if home else []
    lines = [f"host load: {Path('/proc/loadavg').read_text().strip()}",
             f"QEMUs running on the host: {qemuclean.qemu_pids() or 'none'} (this test's: {mine or 'none'})"]
    for serial in sorted(Path(home).glob("data/vms/*/serial.log*")) if home else []:
        tail = serial.read_text(errors="replace").splitlines()[-40:]
        lines += [f"--- last {len(tail)} lines of {serial}", *tail]
    report.sections.append(("guest serial consoles", "\n".join(lines)))


@pytest.fixture(params=list(VERSIONS))
def vbox_version(request, monkeypatch):
    """Every VirtualBox version the fake imitates (tests/fakevbox/versions.py), one run each."""
    monkeypatch.setenv("FAKEVBOX_VERSION", request.param)
    return request.param


# For a test whose VirtualBox part is set-up only and that asserts no VBoxManage call is made
# (bad input refused first): every version would run the same code; one is enough.
ONE_VBOX_VERSION = pytest.mark.parametrize("vbox_version", [DEFAULT], indirect=True)


def triple(version: str):
    return tuple(int(p) for p in version.split("."))


def fixture(*parts) -> Path:
    """A real output kept in tests/fixtures/ (provenance in its folder's SOURCES.md).

    A missing fixture fails the test: the fixtures are part of the repo, so a clone
    without one is broken, and skipping would hide that.
    """
    path = FIXTURES.joinpath(*parts)
    if not path.is_file():
        pytest.fail(f"fixture {path} is missing (tests/fixtures/ is part of the repo)", pytrace=False)
    return path


def fixture_text(*parts) -> str:
    return fixture(*parts).read_text()


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


@pytest.fixture(scope="session")
def boot2docker_iso(tmp_path_factory):
    """A real boot2docker-shaped ISO (El Torito, isolinux config): every source ISO is checked."""
    from isofixtures import build_iso, tools_available

    missing = tools_available()
    if missing:
        pytest.skip(missing)
    return build_iso(tmp_path_factory.mktemp("iso") / "boot2docker.iso")
