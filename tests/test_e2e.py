"""End to end on a real guest: the tasks a user types, on QEMU, with b2dkit's boot2docker-compatible guest.

One VM is shared by the tests in this module (they run in order, each building on the
last) to keep the wall time sensible: create → tz/persistent dirs → status → mounts →
forwards → stop/start persistence → destroy keeps the disk → --purge deletes it.
"""

import json
import os
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from jsonschemas import validate

from b2dkit import paths
from b2dkit.main import make_program
import qemuclean
from cli import run, run_failing
from ports import free_port as _free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
VM = "e2e-cst"



@pytest.fixture(scope="session")
def guest_iso():
    proc = subprocess.run([sys.executable, str(REPO / "guest" / "build.py")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def world(tmp_path_factory, guest_iso):
    """A private B2DKIT_HOME and HOME, and a profile that extends the seed's cst set-up."""
    root = tmp_path_factory.mktemp("e2e")
    home = root / "home"
    home.mkdir()
    ssh_port = _free_port()
    profile = root / "e2e.yaml"
    profile.write_text(
        f"""extends: cst
name: {VM}
provider: qemu
memory: 512
cpus: 1
disk: 2048
iso: {{path: {guest_iso}}}
forwards:
  - {{host: 2022, remove: true}}
  - {{host: 8000, remove: true}}
  - {{host: {ssh_port}, guest: 22}}
"""
    )
    mp = pytest.MonkeyPatch()
    b2dkit_home = root / "b2dkit-home"
    mp.setenv("B2DKIT_HOME", str(b2dkit_home))
    mp.setenv("HOME", str(home))
    mp.setenv("B2DKIT_QEMU_ACCEL", os.environ.get("B2DKIT_QEMU_ACCEL", "tcg"))
    yield {"root": root, "home": home, "profile": profile, "ssh_port": ssh_port,
           "mount": home / "workspace" / "dev", "b2dkit_home": b2dkit_home}
    mp.setenv("B2DKIT_HOME", str(b2dkit_home))
    try:
        make_program().run(["b2dkit", "vm.destroy", f"--name={VM}", "--yes", "--purge"], exit=False)
    except BaseException:  # noqa: B036 - teardown must go on to kill QEMU whatever happened
        pass
    qemuclean.kill_all(root)
    mp.undo()


@pytest.fixture(autouse=True)
def _same_home(world, monkeypatch):
    # conftest gives every test its own B2DKIT_HOME; these tests share one VM, so one home.
    monkeypatch.setenv("B2DKIT_HOME", str(world["b2dkit_home"]))




def guest(capfd, command):
    """``vm.ssh -c`` as a user runs it; returns the command's stdout."""
    capfd.readouterr()
    run("vm.ssh", "-c", command)
    return capfd.readouterr().out.strip()


def test_create_boots_the_remastered_iso_with_cst(world, capfd):
    run("vm.create", f"--profile={world['profile']}")
    out = capfd.readouterr().out
    assert f"{VM} is ready" in out
    cmdline = guest(capfd, "cat /proc/cmdline")
    assert "tz=CST-8" in cmdline.split()
    assert guest(capfd, "date +%Z") == "CST"
    # The profile's persistent dir exists on the data disk, owned by docker.
    assert guest(capfd, "stat -c '%U %F' /mnt/sda1/dev") == "docker directory"
    assert guest(capfd, "grep ' /mnt/sda1 ' /proc/mounts").split()[2] == "ext4"


def test_ssh_passes_the_exit_code_through(world, capfd):
    code, _ = run_failing(capfd, "vm.ssh", "-c", "exit 7")
    assert code == 7


def test_ssh_config_lets_plain_openssh_reach_the_vm(world, capfd):
    capfd.readouterr()
    run("vm.ssh-config")
    config = world["root"] / "ssh_config"
    config.write_text(capfd.readouterr().out)
    proc = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", f"b2dkit-{VM}", "date +%Z"],
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout.strip()) == (0, "CST"), proc.stderr


def test_ssh_without_a_command_is_an_interactive_shell_on_a_tty(world):
    """``vm.ssh`` as a person uses it: a real terminal, the guest's login environment, exit code back."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: b2dkit vm.ssh on the pty, as typed in a terminal
        os.execv(sys.executable, [sys.executable, "-m", "b2dkit", "vm.ssh"])
    out = bytearray()
    os.write(fd, b"tty; echo tz=$TZ; exit 3\n")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = out.decode(errors="replace")
    assert "/dev/pts/" in text and "tz=CST-8" in text, text
    assert os.waitstatus_to_exitcode(status) == 3


def test_status_shows_the_running_vm_and_a_synced_clock(world, capfd):
    capfd.readouterr()
    run("vm.status", "--json")
    info = json.loads(capfd.readouterr().out)
    validate("vm.status", info)  # the running guest's facts (pid, QMP socket, a numeric drift) too
    assert info["state"] == "running" and info["provider"] == "qemu" and info["boot_codes"] == ["tz=CST-8"]
    assert abs(info["clock_drift_seconds"]) < 3
    assert [m["status"] for m in info["mounts"]] == ["alive"]


def test_mount_carries_files_both_ways(world, capfd):
    local = world["mount"]
    (local / "from-host.txt").write_text("hello from the host\n")
    assert guest(capfd, "cat /mnt/sda1/dev/from-host.txt") == "hello from the host"
    guest(capfd, "echo hello from the guest > /mnt/sda1/dev/from-guest.txt")
    deadline = time.monotonic() + 10
    while not (local / "from-guest.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # sshfs caches directory listings briefly
    assert (local / "from-guest.txt").read_text() == "hello from the guest\n"


def test_forward_while_running_reaches_the_guest_http_server(world, capfd):
    port = _free_port()
    run("vm.forward", f"{port}:8000")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as resp:
        assert "b2dkit-guest" in resp.read().decode()
    run("vm.unforward", str(port))
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)


def test_forward_to_a_busy_host_port_names_it(world, capfd):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        code, out = run_failing(capfd, "vm.forward", f"{busy}:8000")
    assert code == 3  # a busy port is the machine's state, not bad input
    assert f"127.0.0.1:{busy}/tcp is already in use" in out.err


def test_only_mnt_sda1_survives_a_restart(world, capfd):
    guest(capfd, "echo kept > /mnt/sda1/dev/keep.txt && echo lost > /home/docker/gone.txt && sync")
    known_hosts = (paths.vm_dir(VM) / "known_hosts").read_text()
    run("vm.stop")
    assert not os.path.ismount(world["mount"])  # vm.stop unmounts first
    run("vm.start")
    assert guest(capfd, "cat /mnt/sda1/dev/keep.txt") == "kept"
    assert guest(capfd, "test -e /home/docker/gone.txt && echo present || echo absent") == "absent"
    assert (paths.vm_dir(VM) / "known_hosts").read_text() == known_hosts  # same host key after reboot
    assert os.path.ismount(world["mount"])  # vm.start mounts again


def test_a_stop_that_powers_off_keeps_a_file_just_saved_in_the_mount(world, capfd):
    # The user saves a file in the mounted folder and stops at once; the guest is given far less
    # than its shutdown takes, so b2dkit powers it off -- after syncing the guest's disks.
    (world["mount"] / "just-saved.txt").write_text("saved a moment ago\n")
    capfd.readouterr()
    run("vm.stop", "--timeout=0.05")  # far less than the guest's own shutdown takes, even on KVM
    said = capfd.readouterr().out
    assert "powered off" in said and "synced first" in said, said
    run("vm.start")
    assert guest(capfd, "cat /mnt/sda1/dev/just-saved.txt") == "saved a moment ago"


def test_destroy_keeps_the_disk_and_a_new_create_finds_the_file(world, capfd):
    disk = paths.vm_dir(VM) / "disk.img"
    run("vm.destroy", "--yes")
    assert disk.exists()
    assert "kept its disk" in capfd.readouterr().out
    run("vm.create", f"--profile={world['profile']}")
    assert guest(capfd, "cat /mnt/sda1/dev/keep.txt") == "kept"


def test_destroy_purge_deletes_the_disk(world, capfd):
    disk = paths.vm_dir(VM) / "disk.img"
    run("vm.destroy", "--yes", "--purge")
    assert not disk.exists()
    assert not os.path.ismount(world["mount"])
