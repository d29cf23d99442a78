"""install: the one table and the one root rule behind every install hint and every install run.

What a hint says must be what works on this machine: as root (a bare container, where there is
often no sudo at all) the package manager is named as is; as a user it goes through sudo; brew
never. The command ``onboard --yes`` runs is the same argument list plus ``-y``.
"""

import shlex

import pytest

from b2dkit import install, pkgmanager
from b2dkit.errors import ToolMissing


@pytest.fixture
def root(monkeypatch):
    monkeypatch.setattr(install, "as_root", lambda: True)


@pytest.fixture
def user(monkeypatch):
    monkeypatch.setattr(install, "as_root", lambda: False)


@pytest.fixture(autouse=True)
def apt_lists(tmp_path, monkeypatch):
    """apt has its package lists (no ``apt-get update`` in front), unless a test says otherwise."""
    (tmp_path / "x_Packages").write_text("")
    monkeypatch.setattr(pkgmanager, "APT_LISTS", tmp_path)


def test_as_root_hints_name_the_manager_without_sudo(root):
    assert install.commands("qemu")["Debian/Ubuntu"] == "apt-get install qemu-system-x86 qemu-utils"
    assert install.commands("qemu")["Fedora"] == "dnf install qemu-system-x86 qemu-img"
    assert install.commands("qemu")["macOS"] == "brew install qemu"
    hint = install.hint("sshfs")
    assert "sudo" not in hint and "`apt-get install sshfs fuse3` (Debian/Ubuntu)" in hint
    assert install.privileged_text("modprobe", "fuse") == "modprobe fuse"


def test_as_a_user_hints_go_through_sudo_and_brew_never_does(user):
    assert install.commands("qemu")["Debian/Ubuntu"] == "sudo apt-get install qemu-system-x86 qemu-utils"
    assert install.commands("sshfs")["Fedora"] == "sudo dnf install fuse-sshfs fuse3"
    assert install.commands("sshfs")["macOS"] == "brew install --cask macfuse && brew install gromgit/fuse/sshfs-mac"
    assert install.privileged_text("chmod", "0644", "/boot/vmlinuz-6.1") == "sudo chmod 0644 /boot/vmlinuz-6.1"


@pytest.mark.parametrize("as_root", [True, False])
@pytest.mark.parametrize("manager, tool", [("apt", "sshfs"), ("dnf", "qemu"), ("brew", "sshfs")])
def test_the_hint_is_the_command_onboard_runs_without_its_y(monkeypatch, as_root, manager, tool):
    monkeypatch.setattr(install, "as_root", lambda: as_root)
    packages = install.TABLE[tool].names(manager)
    hint = install.command_text(manager, packages)
    plan = pkgmanager.InstallPlan(manager, packages)
    assert plan.command() == (hint if manager == "brew" else hint.replace(" install ", " install -y ", 1))
    assert [shlex.split(part) for part in hint.split(" && ")] == install.install_argvs(manager, packages)
    assert (hint.startswith("sudo ") and manager != "brew") is (not as_root and manager != "brew")


def test_a_git_reference_without_git_names_the_table_s_command(user, monkeypatch, tmp_path):
    from b2dkit import git

    monkeypatch.setenv("PATH", str(tmp_path))  # no git here
    with pytest.raises(ToolMissing) as caught:
        git._run(["--version"])
    assert "`sudo apt-get install git` (Debian/Ubuntu)" in str(caught.value)


@pytest.mark.parametrize("euid", [0, 1000])
def test_the_guest_builds_own_hints_follow_the_same_root_rule(monkeypatch, euid):
    """guest/build.py runs without b2dkit installed, so it carries its own copy of the rule: the two
    must say the same thing, or a root user on a bare machine is told to run a sudo they lack."""
    from b2dkit import lifecycle

    builder = lifecycle.guest_builder()
    monkeypatch.setattr(builder.os, "geteuid", lambda: euid)
    monkeypatch.setattr(install.os, "geteuid", lambda: euid)
    assert builder.apt_install("sudo", "busybox-static") == install.command_text("apt", ["sudo", "busybox-static"])
    with pytest.raises(builder.BuildError) as missing:
        builder._run(["/nonexistent/mksquashfs-for-this-test"])
    assert str(missing.value).endswith(": " + install.command_text("apt", ["/nonexistent/mksquashfs-for-this-test"]))
