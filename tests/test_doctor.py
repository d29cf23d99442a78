"""doctor: each check says ok or missing, and a missing piece comes with its install commands.

A missing program is faked the way a bare laptop has it: PATH holds only a temp dir with
the programs the test wants (symlinks to the real ones).  A busy port is a socket this test
holds; low disk space is ``shutil.disk_usage`` answering a small number.
"""

import io
import os
import platform
import shutil
import sys
import socket
from collections import namedtuple
from pathlib import Path

import pytest

from b2dkit import doctor, paths
from b2dkit import profile as profiles
import cli
from fakevbox import install
from ports import free_port

QEMU = "qemu-system-x86_64"
APT_QEMU = "sudo apt-get install qemu-system-x86 qemu-utils"
BREW_QEMU = "brew install qemu"
Usage = namedtuple("Usage", "total used free")


@pytest.fixture(autouse=True)
def laptop_user(monkeypatch):
    """Not root, as on a laptop: hints say ``sudo``. Tests of root (a bare container) say so."""
    monkeypatch.setattr("b2dkit.install.as_root", lambda: False)


def only_on_path(tmp_path, monkeypatch, *programs):
    """PATH = one fresh dir with just these programs (linked from the real PATH)."""
    bin_dir = tmp_path / "bin-only"
    bin_dir.mkdir(exist_ok=True)
    for name in programs:
        real = shutil.which(name)
        assert real, f"{name} must be installed on the test machine"
        (bin_dir / name).symlink_to(real)
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir



def write_profile(tmp_path, *lines, name="doc"):
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(["extends: default", "disk: 1024", *lines]) + "\n")
    return path


@pytest.fixture
def qemu_profile(tmp_path, monkeypatch):
    """A qemu profile with an sshfs mount and one free ssh port (the default 2022 may be taken here)."""
    monkeypatch.setenv("B2DKIT_QEMU_ACCEL", "tcg")  # no KVM probe: the checks stay cheap and deterministic
    port = free_port()
    path = write_profile(
        tmp_path,
        "provider: qemu",
        "name: doc-vm",
        "iso: {path: /nonexistent/boot2docker.iso}",
        "forwards:",
        "  - {host: 2022, remove: true}",
        f"  - {{host: {port}, guest: 22}}",
        "persistent_dirs: [/mnt/sda1/dev]",
        "mounts:",
        "  - {guest: /mnt/sda1/dev, host: ~/workspace/dev}",
    )
    prof = profiles.load(str(path))
    prof.port = port
    prof.path = path
    return prof


def by_name(checks):
    return {c.name: c for c in checks}


def assert_install_lines(check, debian, macos):
    """A missing tool names both install commands, this host's family first."""
    assert not check.ok
    assert (check.fix["Debian/Ubuntu"], check.fix["macOS"]) == (debian, macos)
    assert set(check.fix) <= {"Debian/Ubuntu", "Fedora", "macOS"}
    lines = check.line().splitlines()
    assert lines[0].startswith(f"[MISSING] {check.name}: ")
    first = "macOS" if platform.system() == "Darwin" else "Debian/Ubuntu"
    assert lines[1].strip().startswith(f"{first}: ")
    assert {line.strip() for line in lines[1:]} == {f"{system}: {cmd}" for system, cmd in check.fix.items()}


# -- hypervisors --------------------------------------------------------------------------------


def test_qemu_present_is_ok_and_names_the_binary_and_accelerator(tmp_path, monkeypatch):
    monkeypatch.setenv("B2DKIT_QEMU_ACCEL", "tcg")
    bin_dir = only_on_path(tmp_path, monkeypatch, QEMU)
    check = doctor.check_hypervisor("qemu")
    assert check.ok and check.name == "QEMU"
    assert str(bin_dir / QEMU) in check.detail
    assert "accelerator tcg" in check.detail and "software emulation" in check.detail
    assert check.line().startswith("[ok ] QEMU: ")


def test_qemu_missing_gives_both_install_commands(tmp_path, monkeypatch):
    only_on_path(tmp_path, monkeypatch)
    check = doctor.check_hypervisor("qemu")
    assert f"{QEMU} not found on PATH" in check.detail
    assert_install_lines(check, APT_QEMU, BREW_QEMU)


def test_virtualbox_present_reports_its_version(tmp_path, monkeypatch):
    fake = install(tmp_path / "fv", monkeypatch)
    monkeypatch.setenv("FAKEVBOX_VERSION", "7.0.99r42")
    monkeypatch.setenv("PATH", str(fake.bin))  # nothing but the fake
    check = doctor.check_hypervisor("virtualbox")
    assert check.ok and check.name == "VirtualBox"
    assert check.detail == "VBoxManage 7.0.99"  # a version, not a Python tuple


def test_virtualbox_missing_gives_both_install_commands(tmp_path, monkeypatch):
    only_on_path(tmp_path, monkeypatch)
    check = doctor.check_hypervisor("virtualbox")
    assert check.name == "VirtualBox"
    assert_install_lines(check, "sudo apt-get install virtualbox  (or the package from virtualbox.org)",
                         "brew install --cask virtualbox")
    assert "apt-get install virtualbox" in check.line()


# -- sshfs and ssh ------------------------------------------------------------------------------


def test_sshfs_present_is_ok(tmp_path, monkeypatch):
    bin_dir = only_on_path(tmp_path, monkeypatch, "sshfs")
    check = doctor.check_sshfs()
    if not os.path.exists("/dev/fuse"):
        pytest.skip("this machine has no /dev/fuse")
    assert check.ok and check.detail == str(bin_dir / "sshfs")


def test_sshfs_missing_gives_both_install_commands(tmp_path, monkeypatch):
    only_on_path(tmp_path, monkeypatch, "ssh")
    check = doctor.check_sshfs()
    assert "sshfs is not installed" in check.detail
    assert_install_lines(check, "sudo apt-get install sshfs fuse3",
                         "brew install --cask macfuse && brew install gromgit/fuse/sshfs-mac")


def test_sshfs_without_dev_fuse_says_how_to_load_it(tmp_path, monkeypatch):
    only_on_path(tmp_path, monkeypatch, "sshfs")
    real_exists = os.path.exists
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os.path, "exists", lambda p: False if p == "/dev/fuse" else real_exists(p))
    check = doctor.check_sshfs()
    assert not check.ok
    assert "/dev/fuse is missing" in check.detail and "modprobe fuse" in check.detail


def test_ssh_client_present_and_missing(tmp_path, monkeypatch):
    bin_dir = only_on_path(tmp_path, monkeypatch, "ssh")
    present = doctor.check_ssh_client()
    assert present.ok and present.detail == str(bin_dir / "ssh")
    (tmp_path / "bare").mkdir()
    only_on_path(tmp_path / "bare", monkeypatch)
    missing = doctor.check_ssh_client()
    assert_install_lines(missing, "sudo apt-get install openssh-client", "ssh ships with macOS")


def test_docker_cli_present_and_missing(tmp_path, monkeypatch):
    bin_dir = only_on_path(tmp_path, monkeypatch, "docker")
    present = doctor.check_docker_cli()
    assert present.ok and present.detail == str(bin_dir / "docker")
    (tmp_path / "bare").mkdir()
    only_on_path(tmp_path / "bare", monkeypatch)
    missing = doctor.check_docker_cli()
    assert_install_lines(missing, "sudo apt-get install docker.io",
                         "brew install docker")


# -- disk space ---------------------------------------------------------------------------------


def test_enough_disk_space_is_ok(qemu_profile, monkeypatch):
    seen = []

    def usage(path):
        seen.append(Path(path))
        return Usage(100 << 30, 0, 50 << 30)

    monkeypatch.setattr(doctor.shutil, "disk_usage", usage)
    check = doctor.check_disk_space(qemu_profile)
    assert check.ok and check.detail.startswith(f"{50 << 10} MB free under {paths.data_dir()}")
    assert "may grow" not in check.detail
    assert seen and seen[0].exists()  # asked about a dir that exists (data_dir need not, yet)
    assert not paths.data_dir().exists()  # and did not create it: doctor writes nothing


def test_less_space_than_the_vm_disk_is_ok_with_a_note(qemu_profile, monkeypatch):
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: Usage(1 << 30, 0, 500 << 20))
    check = doctor.check_disk_space(qemu_profile)
    assert check.ok
    assert f"(the VM disk may grow to {qemu_profile.disk} MB)" in check.detail


def test_too_little_disk_space_fails_and_says_how_much_is_needed(qemu_profile, monkeypatch):
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: Usage(1 << 30, 0, 120 << 20))
    check = doctor.check_disk_space(qemu_profile)
    assert not check.ok and not check.fix
    assert check.detail.startswith(f"only 120 MB free under {paths.data_dir()}")
    assert f"at least {doctor.MIN_FREE_MB} MB" in check.detail
    assert check.line().startswith("[FAIL] disk space: ")


# -- host ports ---------------------------------------------------------------------------------


def test_free_ports_are_ok(qemu_profile):
    check = doctor.check_ports(qemu_profile)
    assert check.ok and check.detail == f"{qemu_profile.port} free"


def test_busy_host_port_is_named_with_its_owner(qemu_profile):
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", qemu_profile.port))
        holder.listen()
        check = doctor.check_ports(qemu_profile)
    assert not check.ok
    assert f"in use: 127.0.0.1:{qemu_profile.port}/tcp" in check.detail
    assert "change the profile's forwards" in check.detail
    if shutil.which("lsof"):
        assert f"127.0.0.1:{qemu_profile.port}/tcp (by python" in check.detail  # this test process


def test_busy_port_is_fine_when_our_running_vm_holds_it(qemu_profile, monkeypatch):
    from b2dkit import lifecycle, machines
    from b2dkit.hypervisors.base import VMState

    machines.save(lifecycle.machine_from_profile(qemu_profile))

    class Running:
        def state(self):
            return VMState.RUNNING

    monkeypatch.setattr(doctor.lifecycle, "provider_for", lambda machine: Running())
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", qemu_profile.port))
        holder.listen()
        check = doctor.check_ports(qemu_profile)
    assert check.ok and check.detail == f"held by the running VM {qemu_profile.name}"


# -- all checks, and the task -------------------------------------------------------------------


def test_run_checks_sshfs_only_when_the_profile_mounts(tmp_path, qemu_profile):
    assert [c.name for c in doctor.run(qemu_profile)] == ["QEMU", "disk space", "host ports", "ssh client", "sshfs"]
    port = free_port()
    plain = profiles.load(str(write_profile(
        tmp_path, "provider: qemu", "iso: {path: /x.iso}", "forwards:", "  - {host: 2022, remove: true}",
        f"  - {{host: {port}, guest: 22}}", name="plain")))
    assert [c.name for c in doctor.run(plain)] == ["QEMU", "disk space", "host ports", "ssh client"]
    docker = profiles.load(str(write_profile(
        tmp_path, "provider: qemu", "iso: {path: /x.iso}", "docker: true", "forwards:",
        "  - {host: 2022, remove: true}", f"  - {{host: {port}, guest: 22}}", name="docker")))
    assert [c.name for c in doctor.run(docker)][-1] == "Docker CLI"


def run_doctor(capsys, *argv):
    """``b2dkit doctor …`` as typed: (exit code, captured output); success does not raise."""
    return cli.task(capsys, "doctor", *argv)


def test_doctor_task_exits_3_and_lists_install_commands(tmp_path, monkeypatch, qemu_profile, capsys):
    only_on_path(tmp_path, monkeypatch, "ssh")  # no qemu, no sshfs
    code, out = run_doctor(capsys, f"--profile={qemu_profile.path}")
    assert code == 3
    assert f"[MISSING] QEMU: {QEMU} not found on PATH" in out.out
    assert APT_QEMU in out.out and BREW_QEMU in out.out
    assert "[MISSING] sshfs: sshfs is not installed" in out.out
    assert "sudo apt-get install sshfs fuse3" in out.out
    assert "[ok ] ssh client" in out.out and "all good" not in out.out
    assert out.err.strip() == "b2dkit: error: 2 check(s) failed: QEMU, sshfs"


def test_doctor_task_names_a_busy_port(monkeypatch, qemu_profile, capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", qemu_profile.port))
        holder.listen()
        code, out = run_doctor(capsys, f"--profile={qemu_profile.path}")
    assert code == 3
    assert f"[FAIL] host ports: in use: 127.0.0.1:{qemu_profile.port}/tcp" in out.out
    assert out.err.strip() == "b2dkit: error: 1 check(s) failed: host ports"


def test_doctor_task_all_good_exits_0(qemu_profile, capsys):
    if not (shutil.which(QEMU) and shutil.which("sshfs") and os.path.exists("/dev/fuse")):
        pytest.skip("needs qemu and sshfs installed")
    code, out = run_doctor(capsys, f"--profile={qemu_profile.path}")
    assert code == 0, out.err
    assert out.out.rstrip().endswith("all good")
    assert out.out.count("[ok ]") == 5


def test_doctor_task_provider_flag_checks_that_hypervisor(tmp_path, monkeypatch, qemu_profile, capsys):
    only_on_path(tmp_path, monkeypatch, "ssh", "sshfs", QEMU)  # QEMU yes, VirtualBox no
    code, out = run_doctor(capsys, f"--profile={qemu_profile.path}", "--provider=virtualbox")
    assert code == 3
    assert "[MISSING] VirtualBox" in out.out and "QEMU" not in out.out
    assert out.err.strip() == "b2dkit: error: 1 check(s) failed: VirtualBox"


# -- what the profile needs, installed with consent (doctor --fix) ------------------------------

QEMU_PACKAGES = {"qemu-system-x86": [QEMU], "qemu-utils": ["qemu-img"], "openssh-client": ["ssh"],
                 "sshfs": ["sshfs"], "fuse3": ["fusermount3"]}


@pytest.fixture
def bare(tmp_path, monkeypatch):
    """A machine with apt-get (fake) and nothing b2dkit needs; root (no sudo), with apt's lists present."""
    from fakepkg import bare_machine

    fake = bare_machine(monkeypatch, tmp_path / "pkg", QEMU_PACKAGES)
    monkeypatch.setenv("B2DKIT_QEMU_ACCEL", "tcg")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # no terminal unless a test says so
    return fake


@pytest.fixture
def plain_profile(tmp_path):
    """QEMU, a local ISO, no mounts: it needs QEMU and ssh, not sshfs."""
    port = free_port()
    path = write_profile(tmp_path, "provider: qemu", "iso: {path: /x.iso}", "forwards:",
                         "  - {host: 2022, remove: true}", f"  - {{host: {port}, guest: 22}}", name="plain")
    return path


def test_doctor_ends_with_one_install_command_per_package_manager(bare, plain_profile, capsys):
    code, out = run_doctor(capsys, f"--profile={plain_profile}")
    assert code == 3
    footer = out.out[out.out.index("to install what is missing:"):].splitlines()
    assert [line.strip() for line in footer[1:]] == [  # root: what works here, with no sudo installed
        "Debian/Ubuntu: apt-get install qemu-system-x86 qemu-utils openssh-client",
        "Fedora: dnf install qemu-system-x86 qemu-img openssh-clients",
        "macOS: brew install qemu",
    ]
    assert "sudo" not in out.out  # the per-check hints and the QEMU error's own text too
    assert bare.calls() == []  # doctor alone installs nothing


def test_as_a_user_every_hint_goes_through_sudo_except_brew(bare, plain_profile, capsys, monkeypatch):
    monkeypatch.setattr("b2dkit.install.as_root", lambda: False)
    code, out = run_doctor(capsys, f"--profile={plain_profile}")
    assert code == 3
    assert "`sudo apt-get install qemu-system-x86 qemu-utils` (Debian/Ubuntu)" in out.out  # the QEMU error
    assert "  Debian/Ubuntu: sudo apt-get install qemu-system-x86 qemu-utils openssh-client" in out.out
    assert "  Fedora: sudo dnf install qemu-system-x86 qemu-img openssh-clients" in out.out
    assert "sudo brew" not in out.out


def test_fix_with_yes_installs_only_what_the_profile_needs_then_checks_again(bare, plain_profile, capsys):
    code, out = run_doctor(capsys, f"--profile={plain_profile}", "--fix", "--yes")
    assert code == 0, out.err
    # sshfs is missing too, but this profile mounts nothing: it is not installed.
    assert bare.calls() == [["apt-get", "install", "-y", "qemu-system-x86", "qemu-utils", "openssh-client"]]
    assert "running: apt-get install -y qemu-system-x86 qemu-utils openssh-client" in out.out
    after = out.out[out.out.index("re-checked after installing:"):]
    assert f"[ok ] QEMU: {bare.bin / QEMU}" in after and "[ok ] ssh client" in after
    assert out.out.rstrip().endswith("all good")


def test_fix_without_a_terminal_or_yes_installs_nothing_and_names_the_command(bare, plain_profile, capsys):
    code, out = run_doctor(capsys, f"--profile={plain_profile}", "--fix")
    assert code == 3 and bare.calls() == []
    err = out.err.strip()
    assert "\n" not in err and "Traceback" not in out.err
    assert err.endswith("nothing was installed: run `apt-get install -y qemu-system-x86 qemu-utils "
                        "openssh-client`, or re-run with --yes")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("answer, installs", [("", True), ("y", True), ("n", False)])
def test_fix_on_a_terminal_shows_the_command_and_asks(bare, plain_profile, capsys, monkeypatch, answer, installs):
    asked = []
    monkeypatch.setattr(sys, "stdin", _Terminal(""))
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or answer)
    code, _ = run_doctor(capsys, f"--profile={plain_profile}", "--fix")
    assert asked == ["Install what this profile needs?\n  apt-get install -y qemu-system-x86 qemu-utils "
                     "openssh-client\n[Y/n] "]
    assert (code, len(bare.calls())) == ((0, 1) if installs else (3, 0))


def test_a_profile_that_builds_the_guest_needs_the_builders_packages(bare, tmp_path, capsys):
    from b2dkit import lifecycle

    if os.geteuid() != 0 or not shutil.which("dpkg-query", path="/usr/bin:/bin"):
        pytest.skip("reading the real kernel needs root on a Debian host")
    builder = lifecycle.guest_builder()
    port = free_port()
    path = write_profile(tmp_path, "provider: qemu", "iso: {build: guest}", "forwards:",
                         "  - {host: 2022, remove: true}", f"  - {{host: {port}, guest: 22}}", name="built")
    prof = profiles.load(str(path))
    check = by_name(doctor.run(prof))["guest build"]
    assert not check.ok and check.packages == {"apt": list(builder.PACKAGES)}  # guest/build.py's own list
    assert check.line().splitlines()[1].strip() == "Debian/Ubuntu: apt-get install " + " ".join(builder.PACKAGES)
    bare.mark_installed(*[p for p in QEMU_PACKAGES])  # what else this profile needs is "there"...
    for program in (QEMU, "ssh"):
        (bare.bin / program).write_text("#!/bin/sh\n")
        (bare.bin / program).chmod(0o755)
    again = doctor.fix(prof, doctor.run(prof), confirm=lambda command: True, log=lambda line: None)
    assert bare.calls() == [["apt-get", "install", "-y", *builder.PACKAGES]]  # ...so only the build's
    assert by_name(again)["guest build"].ok and "readable" in by_name(again)["guest build"].detail


def test_the_docker_cli_is_checked_only_when_the_guest_runs_docker(bare, plain_profile):
    prof = profiles.load(str(plain_profile))
    assert "Docker CLI" not in by_name(doctor.run(prof))
    prof.docker = True  # what a docker setting (or iso.build: guest-docker) turns on
    check = by_name(doctor.run(prof))["Docker CLI"]
    assert not check.ok and check.packages["apt"] == ["docker.io"]


def test_a_dry_run_says_what_it_would_install_and_installs_nothing(bare, plain_profile):
    prof = profiles.load(str(plain_profile))
    said = []
    checks = doctor.run(prof)
    assert doctor.fix(prof, checks, confirm=lambda command: True, log=said.append, dry_run=True) == checks
    assert said == ["would: install qemu-system-x86 qemu-utils openssh-client: "
                    "apt-get install -y qemu-system-x86 qemu-utils openssh-client"]
    assert bare.calls() == []


def test_nothing_to_install_asks_nothing(bare, plain_profile):
    prof = profiles.load(str(plain_profile))
    bare_checks = [doctor.Check("host ports", False, "in use: 127.0.0.1:2022/tcp")]  # no package fixes it
    assert doctor.fix(prof, bare_checks, confirm=lambda command: pytest.fail("asked"), log=print) == bare_checks


# -- every package manager, as root and through sudo (brew: never), end to end --------------------

# What plain_profile needs (QEMU and ssh) in each manager's names; brew has no ssh package
# (it ships with macOS), so that machine has ssh already.
NEEDS = {"apt": ["qemu-system-x86", "qemu-utils", "openssh-client"],
         "dnf": ["qemu-system-x86", "qemu-img", "openssh-clients"], "brew": ["qemu"]}
EVERY_NAME = {**QEMU_PACKAGES, "qemu-img": ["qemu-img"], "openssh-clients": ["ssh"], "qemu": [QEMU, "qemu-img"]}
MACHINES = [("apt", True), ("apt", False), ("dnf", True), ("dnf", False), ("brew", False)]


@pytest.fixture(params=MACHINES, ids=[f"{m}-{'root' if r else 'user'}" for m, r in MACHINES])
def machine(request, tmp_path, monkeypatch):
    from fakepkg import bare_machine

    manager, as_root = request.param
    fake = bare_machine(monkeypatch, tmp_path / "pkg", EVERY_NAME, manager=manager, as_root=as_root,
                        real=("ssh",) if manager == "brew" else ())
    monkeypatch.setenv("B2DKIT_QEMU_ACCEL", "tcg")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    return fake, manager, as_root


def expected_runs(manager, as_root, packages, update=False):
    """What the fakes record: sudo logs its argv, then the manager it runs logs its own."""
    binary = {"apt": "apt-get", "dnf": "dnf", "brew": "brew"}[manager]
    argvs = ([[binary, "update"]] if update else []) + [[binary, "install", *(["-y"] if manager != "brew" else []),
                                                          *packages]]
    if as_root or manager == "brew":
        return argvs
    return [call for argv in argvs for call in (["sudo", *argv], argv)]


def test_fix_with_yes_runs_this_machines_manager_the_way_its_hint_says(machine, plain_profile, capsys):
    fake, manager, as_root = machine
    code, out = run_doctor(capsys, f"--profile={plain_profile}")
    assert code == 3 and fake.calls() == []
    hints = out.out
    code, out = run_doctor(capsys, f"--profile={plain_profile}", "--fix", "--yes")
    assert code == 0, out.err
    assert fake.calls() == expected_runs(manager, as_root, NEEDS[manager])
    shown = " && ".join(" ".join(argv) for argv in expected_runs(manager, True, NEEDS[manager]))
    command = shown if as_root or manager == "brew" else "sudo " + shown
    assert f"running: {command}" in out.out
    system = {"apt": "Debian/Ubuntu", "dnf": "Fedora", "brew": "macOS"}[manager]
    footer = hints[hints.index("to install what is missing:"):]
    assert f"  {system}: {command.replace(' -y', '')}\n" in footer  # the hint is the command, less -y
    assert "sudo brew" not in hints and ("sudo" in hints) is (not as_root)
    after = out.out[out.out.index("re-checked after installing:"):]
    assert f"[ok ] QEMU: {fake.bin / QEMU}" in after and out.out.rstrip().endswith("all good")


def test_a_failing_manager_is_one_line_and_nothing_is_claimed(machine, plain_profile, capsys, monkeypatch):
    fake, manager, as_root = machine
    monkeypatch.setenv("FAKEPKG_FAIL", "1")
    code, out = run_doctor(capsys, f"--profile={plain_profile}", "--fix", "--yes")
    assert code == 3
    err = out.err.strip()
    run = expected_runs(manager, as_root, NEEDS[manager])[0]
    assert "\n" not in err and err.startswith(f"b2dkit: error: `{' '.join(run)}` failed (exit status 100)")
    assert "re-checked" not in out.out and "all good" not in out.out and "Traceback" not in out.out + out.err
    assert fake.installed() == []


@pytest.mark.parametrize("as_root", [True, False])
def test_an_empty_apt_list_is_updated_first_in_the_same_consent(tmp_path, monkeypatch, plain_profile, capsys,
                                                                 as_root):
    from fakepkg import bare_machine

    fake = bare_machine(monkeypatch, tmp_path / "pkg", EVERY_NAME, as_root=as_root, apt_lists=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, out = run_doctor(capsys, f"--profile={plain_profile}", "--fix")  # no --yes, no terminal: say how
    sudo = "" if as_root else "sudo "
    assert code == 3 and fake.calls() == []
    assert f"run `{sudo}apt-get update && {sudo}apt-get install -y qemu-system-x86" in out.err
    code, out = run_doctor(capsys, f"--profile={plain_profile}", "--fix", "--yes")
    assert code == 0, out.err
    assert fake.calls() == expected_runs("apt", as_root, NEEDS["apt"], update=True)
