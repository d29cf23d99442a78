"""pkgmanager: the argument lists it runs (as root, through sudo, brew never with sudo), on fake
managers that record their argv, and one real ``apt-get install`` where that can run."""

import os
import shutil
import subprocess

import pytest
from fakepkg import FakePackages, bare_path

from b2dkit import install, pkgmanager
from b2dkit.errors import MachineError, ToolMissing
from b2dkit.pkgmanager import InstallPlan


@pytest.fixture
def lists(tmp_path, monkeypatch):
    """apt's package lists: present (so no ``apt-get update``) unless a test empties them."""
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4").write_text("")
    monkeypatch.setattr(pkgmanager, "APT_LISTS", folder)
    return folder


@pytest.mark.parametrize("root, expected", [
    (True, [["apt-get", "install", "-y", "sshfs", "fuse3"]]),
    (False, [["sudo", "apt-get", "install", "-y", "sshfs", "fuse3"]]),
])
def test_apt_runs_directly_as_root_and_through_sudo_otherwise(monkeypatch, lists, root, expected):
    monkeypatch.setattr(install, "as_root", lambda: root)
    plan = InstallPlan("apt", ["sshfs", "fuse3"])
    assert plan.argvs() == expected
    assert plan.command() == " && ".join(" ".join(a) for a in expected)


def test_an_empty_apt_list_is_updated_first(monkeypatch, lists):
    monkeypatch.setattr(install, "as_root", lambda: True)
    for path in lists.iterdir():
        path.unlink()
    assert InstallPlan("apt", ["sudo"]).argvs() == [["apt-get", "update"], ["apt-get", "install", "-y", "sudo"]]


def test_dnf_and_brew(monkeypatch):
    monkeypatch.setattr(install, "as_root", lambda: False)
    assert InstallPlan("dnf", ["fuse-sshfs"]).argvs() == [["sudo", "dnf", "install", "-y", "fuse-sshfs"]]
    brew = InstallPlan("brew", ["--cask macfuse", "gromgit/fuse/sshfs-mac"])
    assert brew.argvs() == [["brew", "install", "--cask", "macfuse"], ["brew", "install", "gromgit/fuse/sshfs-mac"]]
    assert "sudo" not in brew.command()


@pytest.mark.parametrize("binary, manager", [("apt-get", "apt"), ("dnf", "dnf"), ("brew", "brew")])
def test_detect_finds_the_manager_on_path(tmp_path, monkeypatch, binary, manager):
    bare_path(monkeypatch, FakePackages(tmp_path, managers=(binary,)))
    assert pkgmanager.detect() == manager


def test_detect_on_a_machine_without_one(tmp_path, monkeypatch):
    bare_path(monkeypatch, FakePackages(tmp_path, managers=()))
    assert pkgmanager.detect() is None


def test_run_as_root_calls_the_manager_with_the_argument_list(tmp_path, monkeypatch, lists):
    monkeypatch.setattr(install, "as_root", lambda: True)
    fake = FakePackages(tmp_path, provides={"sshfs": ["sshfs"]})
    bare_path(monkeypatch, fake)
    pkgmanager.run(InstallPlan("apt", ["sshfs"]))
    assert fake.calls() == [["apt-get", "install", "-y", "sshfs"]]
    assert shutil.which("sshfs") == str(fake.bin / "sshfs")


def test_run_not_as_root_goes_through_sudo_with_no_password_argument(tmp_path, monkeypatch, lists):
    monkeypatch.setattr(install, "as_root", lambda: False)
    fake = FakePackages(tmp_path, provides={"sudo": ["sudo-was-here"]})
    fake.add_sudo()
    bare_path(monkeypatch, fake)
    pkgmanager.run(InstallPlan("apt", ["sudo"]))
    assert fake.calls() == [["sudo", "apt-get", "install", "-y", "sudo"], ["apt-get", "install", "-y", "sudo"]]
    assert (fake.bin / "sudo-was-here").exists()


def test_not_root_without_sudo_is_one_line_naming_the_command(tmp_path, monkeypatch, lists):
    monkeypatch.setattr(install, "as_root", lambda: False)
    fake = FakePackages(tmp_path)
    bare_path(monkeypatch, fake)
    with pytest.raises(ToolMissing, match=r"sudo is not installed: run as root `apt-get install -y sudo`"):
        pkgmanager.run(InstallPlan("apt", ["sudo"]))
    assert fake.calls() == []


def test_a_failing_manager_is_a_machine_error_with_its_status(tmp_path, monkeypatch, lists):
    monkeypatch.setattr(install, "as_root", lambda: True)
    fake = FakePackages(tmp_path)
    bare_path(monkeypatch, fake)
    monkeypatch.setenv("FAKEPKG_FAIL", "1")
    with pytest.raises(MachineError, match=r"`apt-get install -y sshfs` failed \(exit status 100\)"):
        pkgmanager.run(InstallPlan("apt", ["sshfs"]))


# -- one real install ---------------------------------------------------------------------------

# GNU hello: about 50 KB, no dependencies beyond libc, and nothing on this machine (or in b2dkit)
# uses it, so installing and removing it cannot disturb the other tests running beside this one.
# It is not in CI's image, so the install really goes through apt (lists, download, dpkg).
REAL_PACKAGE, REAL_PROGRAM = "hello", "/usr/bin/hello"


def _apt_works() -> bool:
    if os.geteuid() != 0 or not shutil.which("apt-get") or not shutil.which("dpkg-query"):
        return False
    probe = subprocess.run(["apt-get", "install", "-y", "--simulate", REAL_PACKAGE], capture_output=True)
    return probe.returncode == 0


def _installed(name: str) -> bool:
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", name], capture_output=True, text=True)
    return proc.stdout == "installed"


@pytest.mark.slow
@pytest.mark.skipif(not _apt_works(), reason="needs root and a working apt-get (CI runs as root)")
def test_a_real_apt_get_install(monkeypatch):
    if _installed(REAL_PACKAGE):
        pytest.skip(f"{REAL_PACKAGE} is installed already: nothing to prove")
    monkeypatch.setenv("DEBIAN_FRONTEND", "noninteractive")
    plan = InstallPlan("apt", [REAL_PACKAGE])
    assert plan.argvs()[-1] == ["apt-get", "install", "-y", REAL_PACKAGE]
    try:
        pkgmanager.run(plan)
        assert _installed(REAL_PACKAGE)
        out = subprocess.run([REAL_PROGRAM], capture_output=True, text=True, check=True).stdout
        assert "Hello, world!" in out
    finally:
        subprocess.run(["apt-get", "remove", "-y", "-q", REAL_PACKAGE], capture_output=True)
