"""watcher.py (with repair.py and relay.py): the daemon's life, and a laptop's day on a real guest.

Fast part: the daemon on the fake VBoxManage (one instance per VM, detached from our
session and terminal, stopped by vm.stop, gone by itself when the VM stops).
End to end on QEMU (one VM for the class): the [::1] relay with curl -6, a UDP forward to
the guest's echo, a 60 s QMP pause repaired without any command, a killed sshfs remounted.
"""
# ruff: noqa: F811  (fixtures imported from other test modules are re-bound as parameters)

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import qemuclean
from cli import run
from fakevbox import install
from sshserver import free_port
from test_e2e import guest_iso  # noqa: F401

from b2dkit import guest, lifecycle, machines, paths, repair, watcher
from b2dkit.hypervisors.qemu import qemusystem as qemu
from b2dkit.main import make_program
from waiting import wait_for


def proc_stat(pid):
    """(ppid, session id, controlling tty number) from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[3]), int(fields[4])


def gone(pid) -> bool:
    """Exited within moments: no process, or a zombie that init (maybe not a real one) has yet to reap."""
    return bool(wait_for(lambda: not qemu.process_alive(pid), 5, f"process {pid} to end"))


# -- the daemon, on the fake VBoxManage --------------------------------------------------------


@pytest.fixture
def running_fake_vm(tmp_path, monkeypatch, boot2docker_iso):
    """A VirtualBox VM that the fake says is running (its guest is unreachable: no SSH)."""
    install(tmp_path / "fakevbox", monkeypatch)
    iso = tmp_path / "boot2docker.iso"
    shutil.copyfile(boot2docker_iso, iso)
    prof = tmp_path / "small.yaml"
    prof.write_text(f"extends: default\ndisk: 1024\nforwards:\n  - {{host: 2022, remove: true}}\n"
                    f"  - {{host: {free_port()}, guest: 22}}\n")  # fmt: skip
    run("vm.create", f"--profile={prof}", "--provider=virtualbox", "--name=wdev", f"--iso={iso}", "--no-start")
    subprocess.run(["VBoxManage", "startvm", "wdev", "--type", "headless"], check=True, capture_output=True)
    monkeypatch.setenv(watcher.ENV_SWITCH, "1")
    yield "wdev"
    watcher.stop("wdev")


def test_one_detached_watcher_per_vm(running_fake_vm):
    name = running_fake_vm
    pid = watcher.start(name)
    assert pid and watcher.running_pid(name) == pid
    assert watcher.start(name) == pid  # a second start finds the first
    ppid, sid, tty = proc_stat(pid)
    assert sid != os.getsid(0) and sid != pid  # its own session, and not its leader (double fork)
    assert tty == 0  # no controlling terminal: closing ours cannot hang it up
    assert ppid != os.getpid()
    vm_dir = paths.vm_dir(name)
    assert (vm_dir / watcher.PIDFILE).read_text().strip() == str(pid)
    log = (vm_dir / watcher.LOGFILE).read_text()
    assert f"watching VM {name} (pid {pid})" in log
    assert watcher.status(name)["running"] is True
    assert watcher.stop(name) is True
    assert watcher.running_pid(name) is None and gone(pid)
    assert not (vm_dir / watcher.PIDFILE).exists()
    assert watcher.stop(name) is False


def test_a_killed_watcher_leaves_no_stale_lock(running_fake_vm):
    name = running_fake_vm
    pid = watcher.start(name)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: watcher.running_pid(name) is None, 10, "the lock to die with the watcher")
    again = watcher.start(name)
    assert again and again != pid


def test_the_watcher_ends_when_the_vm_stops_and_vm_stop_ends_it(running_fake_vm):
    name = running_fake_vm
    watcher.start(name)
    subprocess.run(["VBoxManage", "controlvm", name, "poweroff"], check=True, capture_output=True)
    wait_for(lambda: watcher.running_pid(name) is None, watcher.STATE_EVERY + 15, "the watcher to notice")
    assert "is no longer running; watcher exits" in (paths.vm_dir(name) / watcher.LOGFILE).read_text()
    subprocess.run(["VBoxManage", "startvm", name, "--type", "headless"], check=True, capture_output=True)
    watcher.start(name)
    out = lifecycle.stop(machines.load(name), timeout=5)
    assert "stopped the watcher" in out.done and watcher.running_pid(name) is None


def test_the_switch_turns_it_off(running_fake_vm, monkeypatch):
    monkeypatch.setenv(watcher.ENV_SWITCH, "0")
    assert watcher.start(running_fake_vm) is None and watcher.running_pid(running_fake_vm) is None


def test_status_renders_the_watcher_and_its_last_repair(tmp_path):
    vm_dir = tmp_path
    result = repair.Repair(by="watcher", reason="the guest did not answer for 60.2 s (paused or asleep)",
                           at="2026-12-02T06:00:00.00Z",
                           steps=[repair.Step("set the guest clock (-60.20 s -> +0.10 s)", 1.234),
                                  repair.Step(f"remounted {vm_dir}/dev (not connected)", 0.9)])  # fmt: skip
    repair.record(vm_dir, result)
    from b2dkit import status

    info = {"running": True, "pid": 4242, "log": "/x/watcher.log", "last_repair": repair.last(vm_dir),
            "ipv6_relays": {"active": ["2022/tcp", "8000/tcp"], "failed": {"9000/tcp": "Address already in use"}}}
    text = "\n".join(status.render_watcher(info))
    assert "watcher:    running (pid 4242)" in text
    assert "also on [::1]: 2022/tcp, 8000/tcp" in text and "not on [::1]:9000/tcp: Address already in use" in text
    assert "by watcher (the guest did not answer for 60.2 s (paused or asleep))" in text
    assert "set the guest clock (-60.20 s -> +0.10 s) in 1.23 s" in text
    assert (vm_dir / repair.LOG).read_text().count("\n") == 1


# -- a laptop's day on a real guest (QEMU) -----------------------------------------------------

VM = "e2e-day"


@pytest.fixture(scope="module")
def day(tmp_path_factory, guest_iso):  # noqa: F811
    root = tmp_path_factory.mktemp("day")
    home = root / "home"
    home.mkdir()
    ports = {"ssh": free_port(), "http": free_port(), "udp": free_port()}
    profile = root / "day.yaml"
    profile.write_text(f"""extends: cst
name: {VM}
provider: qemu
memory: 512
cpus: 1
disk: 2048
iso: {{path: {guest_iso}}}
forwards:
  - {{host: 2022, remove: true}}
  - {{host: 8000, remove: true}}
  - {{host: {ports['ssh']}, guest: 22}}
  - {{host: {ports['http']}, guest: 8000}}
  - {{host: {ports['udp']}, guest: 53, proto: udp}}
""")
    mp = pytest.MonkeyPatch()
    b2dkit_home = root / "b2dkit-home"
    mp.setenv("B2DKIT_HOME", str(b2dkit_home))
    mp.setenv("HOME", str(home))
    mp.setenv("B2DKIT_QEMU_ACCEL", os.environ.get("B2DKIT_QEMU_ACCEL", "tcg"))
    mp.setenv(watcher.ENV_SWITCH, "1")
    run("vm.create", f"--profile={profile}")
    yield {"home": b2dkit_home, "ports": ports, "mount": home / "workspace" / "dev"}
    mp.setenv("B2DKIT_HOME", str(b2dkit_home))
    try:
        make_program().run(["b2dkit", "vm.destroy", f"--name={VM}", "--yes", "--purge"], exit=False)
    except BaseException:  # noqa: B036 - teardown goes on
        pass
    qemuclean.kill_all(root)
    mp.undo()


@pytest.fixture
def on_day(day, monkeypatch):
    monkeypatch.setenv("B2DKIT_HOME", str(day["home"]))
    monkeypatch.setenv(watcher.ENV_SWITCH, "1")
    return day


def guest_session():
    endpoint = lifecycle.provider_for(machines.load(VM)).ssh_endpoint()
    return guest.connect(*endpoint, lifecycle.key_path(VM), lifecycle.known_hosts_path(VM))


def mount_answers(local: Path, timeout: float = 0.5) -> bool:
    """Mounted, and statvfs through it answered by the guest's sftp-server (in a thread that may hang)."""
    from b2dkit import sshfs

    if sshfs.find_mount(local, check=False) is None:
        return False  # the bare host dir would answer statvfs too
    state, _ = sshfs.probe(local, timeout=timeout)
    return state == "alive"


def watcher_log() -> str:
    return (paths.vm_dir(VM) / watcher.LOGFILE).read_text()


def sshfs_pids(local: Path):
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"sshfs") and os.fsencode(str(local)) in argv:
                found.append(int(entry.name))
    return found


@pytest.mark.e2e
@pytest.mark.slow
class TestADay:
    def test_vm_start_left_a_detached_watcher(self, on_day, capfd):
        pid = watcher.running_pid(VM)
        assert pid, "vm.create did not start the watcher"
        _, sid, tty = proc_stat(pid)
        assert sid != os.getsid(0) and tty == 0
        capfd.readouterr()
        run("vm.status", "--json")
        info = json.loads(capfd.readouterr().out)
        assert info["watcher"]["running"] and info["watcher"]["pid"] == pid
        ports = on_day["ports"]
        wanted = [f"{p}/tcp" for p in sorted([ports["ssh"], ports["http"]])] + [f"{ports['udp']}/udp"]
        wait_for(lambda: watcher.status(VM)["ipv6_relays"]["active"] == wanted, 10, "relays for the TCP forwards")

    def test_loopback_forward_answers_on_ipv6_with_curl(self, on_day):
        if shutil.which("curl") is None:
            pytest.skip("curl is not installed")
        port = on_day["ports"]["http"]

        def fetch(p):
            proc = subprocess.run(["curl", "-6", "-sS", "--max-time", "10", f"http://localhost:{p}/"],
                                  capture_output=True, text=True)  # fmt: skip
            return proc.returncode == 0 and "b2dkit-guest" in proc.stdout

        assert wait_for(lambda: fetch(port), 15, f"curl -6 on [::1]:{port}")
        # A forward added later, asked for on ::1, gets its relay within moments (vm.forward pokes).
        extra = free_port()
        run("vm.forward", f"{extra}:8000", "--host-ip=::1")
        assert wait_for(lambda: fetch(extra), 10, f"curl -6 on the new forward [::1]:{extra}")
        run("vm.unforward", str(extra))

        def refused():
            with socket.socket(socket.AF_INET6) as s:
                s.settimeout(2)
                return s.connect_ex(("::1", extra)) != 0

        assert wait_for(refused, 10, "the relay to stop with its forward")

    def test_udp_forward_reaches_the_guest_echo(self, on_day):
        port = on_day["ports"]["udp"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.5)
            deadline = time.monotonic() + 30
            payload = b"b2dkit-udp-" + os.urandom(4).hex().encode()
            while True:  # UDP: re-send until answered, as any UDP client does
                sock.sendto(payload, ("127.0.0.1", port))
                try:
                    data, _ = sock.recvfrom(2048)
                    break
                except socket.timeout:
                    assert time.monotonic() < deadline, "no UDP echo through the forward"
        assert data == payload
        # and through the [::1] relay, as a client that resolved localhost to ::1 sends it
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.5)
            deadline = time.monotonic() + 30
            while True:
                sock.sendto(payload, ("::1", port))
                try:
                    data, _ = sock.recvfrom(2048)
                    break
                except socket.timeout:
                    assert time.monotonic() < deadline, "no UDP echo through the [::1] relay"
        assert data == payload

    def test_a_60s_pause_is_repaired_within_3s_of_resume_without_any_command(self, on_day):
        local = on_day["mount"]
        assert mount_answers(local, timeout=5)
        provider = lifecycle.provider_for(machines.load(VM))
        with guest_session() as session:
            assert abs(guest.clock_drift(session)) < 1.5
            with qemu.QMP(provider.qmp_socket) as mon:
                mon.execute("stop")
            # the scenario: a laptop lid closed for a minute (the VM's clock stands still)
            time.sleep(60)
            with qemu.QMP(provider.qmp_socket) as mon:
                mon.execute("cont")
            resumed = time.monotonic()
            drifts = []

            def clock_right():
                d = guest.clock_drift(session)
                drifts.append(round(d, 2))
                return abs(d) < 1.0

            wait_for(clock_right, 20, "the guest clock to be right")
            clock_s = time.monotonic() - resumed
            wait_for(lambda: mount_answers(local), 20, "the mount to answer")
            mount_s = time.monotonic() - resumed
        print(f"resume -> clock right {clock_s:.2f} s, mount answers {mount_s:.2f} s; drifts {drifts}")
        assert drifts[0] < -30, drifts  # it really was a minute behind after the resume
        assert clock_s <= 3.0 and mount_s <= 3.0, (clock_s, mount_s, watcher_log()[-2000:])
        # The watcher did it (no command ran), and says so once its repair is written down.
        wait_for(lambda: "set the guest clock" in watcher_log(), 15, "the repair in the watcher's log")
        last = wait_for(lambda: repair.last(paths.vm_dir(VM)), 5, "last_repair.json")
        assert last["by"] == "watcher" and any("clock" in s["what"] for s in last["steps"])

    def test_a_killed_sshfs_is_remounted_by_the_watcher_within_3s(self, on_day):
        local = on_day["mount"]
        assert mount_answers(local, timeout=5)
        old = sshfs_pids(local)
        assert old, ("no sshfs process serves the mount", [
            (p.name, (p / "cmdline").read_bytes()) for p in Path("/proc").iterdir()
            if p.name.isdigit() and b"sshfs" in (p / "cmdline").read_bytes()])
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: sshfs_pids(local) and set(sshfs_pids(local)).isdisjoint(old) and mount_answers(local),
                 20, "the watcher to remount")  # fmt: skip
        took = time.monotonic() - killed
        print(f"sshfs killed -> mount answers again {took:.2f} s")
        assert took <= 3.0, watcher_log()[-2000:]
        (local / "after-remount.txt").write_text("still here\n")
        with guest_session() as session:
            assert session.run(["cat", "/mnt/sda1/dev/after-remount.txt"]).stdout == "still here\n"

    def test_vm_stop_stops_the_watcher(self, on_day):
        pid = watcher.running_pid(VM)
        run("vm.stop")
        assert watcher.running_pid(VM) is None
        assert gone(pid)
