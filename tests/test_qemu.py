"""qemu.py: command line, accelerator rule, QMP client, ``info usernet`` parsing, process checks."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import threading
from pathlib import Path

import pytest

from b2dkit.hypervisors.qemu import qemusystem as qemu
from b2dkit.errors import HypervisorError, InputError, PortInUse, ToolMissing
from b2dkit.forwards import Forward, pick_free_port

HAVE_QEMU = shutil.which(qemu.QEMU) is not None
needs_qemu = pytest.mark.skipif(not HAVE_QEMU, reason="qemu-system-x86_64 not installed")

# Real output of QMP human-monitor-command "info usernet", captured from qemu-system-x86_64 7.2.22
# (Debian 1:7.2+dfsg-7+deb12u18+b3) started with
#   -netdev user,id=n0,hostfwd=tcp:127.0.0.1:2022-:22,hostfwd=udp:127.0.0.1:5353-:53,
#           hostfwd=tcp:0.0.0.0:2023-10.0.2.16:23
# while a host client had a connection open to port 2022 (the guest did not answer: SYN_SENT row).
USERNET = (
    "Hub -1 (n0):\r\n"
    "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n"
    "  TCP[SYN_SENT]      18       127.0.0.1  2022       10.0.2.15    22     0     0\r\n"
    "  TCP[HOST_FORWARD]  14       127.0.0.1  2022       10.0.2.15    22     0     0\r\n"
    "  TCP[HOST_FORWARD]  12               *  2023       10.0.2.16    23     0     0\r\n"
    "  UDP[HOST_FORWARD]  13       127.0.0.1  5353       10.0.2.15    53     0     0\r\n"
)


# -- command line ---------------------------------------------------------------------------
def _argv(tmp_path, **kw):
    args = dict(
        accel="tcg",
        memory_mb=1024,
        cpus=2,
        iso=tmp_path / "b2d.iso",
        disk=tmp_path / "disk.img",
        pidfile=tmp_path / "qemu.pid",
        serial_log=tmp_path / "serial.log",
        qmp_socket=tmp_path / "qmp.sock",
        forwards=[],
    )
    args.update(kw)
    return qemu.build_argv("/usr/bin/qemu-system-x86_64", "dev", **args)


def _opt(argv, flag):
    """All values given to ``flag``."""
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_argv_has_the_machine_the_guest_expects(tmp_path):
    argv = _argv(tmp_path)
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert _opt(argv, "-accel") == ["tcg"] and "-cpu" not in argv
    assert _opt(argv, "-M") == ["q35"] and _opt(argv, "-m") == ["1024"] and _opt(argv, "-smp") == ["2"]
    assert "-daemonize" in argv and _opt(argv, "-pidfile") == [str(tmp_path / "qemu.pid")]
    assert f"socket,id=qmp0,path={tmp_path / 'qmp.sock'},server=on,wait=off" in _opt(argv, "-chardev")
    assert _opt(argv, "-drive") == [
        f"file={tmp_path / 'b2d.iso'},media=cdrom,readonly=on",
        f"file={tmp_path / 'disk.img'},format=raw,if=none,id=d0",
    ]
    assert "ide-hd,drive=d0,bus=ide.1" in _opt(argv, "-device")
    assert _opt(argv, "-netdev") == ["user,id=n0"]


def test_argv_doubles_commas_in_every_path(tmp_path):
    odd = tmp_path / "a,b"
    argv = _argv(
        tmp_path, iso=odd / "x,y.iso", disk=odd / "d.img", serial_log=odd / "s.log", qmp_socket=odd / "q.sock"
    )
    joined = "\n".join(argv)
    assert f"file={tmp_path}/a,,b/x,,y.iso,media=cdrom" in joined
    assert f"file={tmp_path}/a,,b/d.img,format=raw" in joined
    assert f"path={tmp_path}/a,,b/s.log" in joined
    assert f"path={tmp_path}/a,,b/q.sock,server=on" in joined
    assert qemu.escape("a,,b") == "a,,,,b"


def test_argv_forwards_are_hostfwd_rules(tmp_path):
    fwds = [
        Forward(2022, 22),
        Forward(5353, 53, proto="udp"),
        Forward(8080, 80, host_ip="0.0.0.0", guest_ip="10.0.2.16"),
    ]
    (netdev,) = _opt(_argv(tmp_path, forwards=fwds), "-netdev")
    assert netdev.split(",") == [
        "user",
        "id=n0",
        "hostfwd=tcp:127.0.0.1:2022-:22",
        "hostfwd=udp:127.0.0.1:5353-:53",
        "hostfwd=tcp:0.0.0.0:8080-10.0.2.16:80",
    ]


def test_argv_hardware_accel_uses_the_host_cpu_and_unknown_accel_is_refused(tmp_path):
    argv = _argv(tmp_path, accel="kvm")
    assert _opt(argv, "-accel") == ["kvm"] and _opt(argv, "-cpu") == ["host"]
    with pytest.raises(InputError, match="xen"):
        _argv(tmp_path, accel="xen")


def test_find_qemu_missing_names_the_install_commands(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolMissing) as err:
        qemu.find_qemu()
    assert "apt-get install qemu-system-x86" in str(err.value) and "brew install qemu" in str(err.value)
    assert "\n" not in str(err.value)


# -- accelerator ----------------------------------------------------------------------------
@pytest.fixture
def fake_host(tmp_path, monkeypatch):
    """A KVM device node and module markers we control (regular files stand in for them)."""
    dev = tmp_path / "kvm"
    dev.write_bytes(b"")
    monkeypatch.setattr(qemu, "KVM_DEVICE", str(dev))
    monkeypatch.setattr(qemu, "KVM_PVM_MARKERS", (tmp_path / "sys-kvm_pvm", tmp_path / "modules"))
    monkeypatch.setattr(qemu.sys, "platform", "linux")
    monkeypatch.delenv(qemu.ACCEL_ENV, raising=False)
    (tmp_path / "modules").write_text("kvm_intel 380928 0 - Live 0x0\nkvm 1150976 1 kvm_intel, Live 0x0\n")
    return tmp_path


def test_accel_env_wins_and_bad_value_is_refused(fake_host, monkeypatch):
    monkeypatch.setenv(qemu.ACCEL_ENV, "KVM")
    assert qemu.decide_accel("/bin/false") == ("kvm", f"forced by {qemu.ACCEL_ENV}")
    monkeypatch.setenv(qemu.ACCEL_ENV, "vmx")
    with pytest.raises(InputError, match=qemu.ACCEL_ENV):
        qemu.choose_accel("/bin/false")


def test_accel_without_kvm_device_is_tcg(fake_host, monkeypatch):
    monkeypatch.setattr(qemu, "KVM_DEVICE", str(fake_host / "missing"))
    assert qemu.choose_accel("/bin/false") == "tcg"


def test_accel_with_kvm_pvm_is_tcg_without_a_probe(fake_host, monkeypatch):
    def no_probe(*a, **k):
        raise AssertionError("probed although kvm_pvm is known not to boot")

    monkeypatch.setattr(qemu, "probe_boots", no_probe)
    with open(fake_host / "modules", "a") as fh:
        fh.write("kvm_pvm 65536 0 - Live 0x0\n")
    accel, why = qemu.decide_accel("/bin/false")
    assert accel == "tcg" and "kvm_pvm" in why
    (fake_host / "modules").write_text("")
    (fake_host / "sys-kvm_pvm").mkdir()
    assert qemu.choose_accel("/bin/false") == "tcg"


def test_accel_probe_verdict_is_cached_per_qemu_binary(fake_host, monkeypatch):
    if qemu.probe_kernel() is None:
        pytest.skip("no kernel in /boot")
    calls = []
    monkeypatch.setattr(qemu, "probe_boots", lambda q, accel, kernel: calls.append(q) or True)
    fake_qemu = fake_host / "qemu-system-x86_64"
    fake_qemu.write_bytes(b"v1")
    assert qemu.decide_accel(str(fake_qemu))[0] == "kvm"
    accel, why = qemu.decide_accel(str(fake_qemu))
    assert (accel, len(calls)) == ("kvm", 1) and why.endswith("(cached)")
    fake_qemu.write_bytes(b"version 2")  # an upgraded QEMU is probed again
    monkeypatch.setattr(qemu, "probe_boots", lambda q, accel, kernel: calls.append(q) or False)
    assert qemu.choose_accel(str(fake_qemu)) == "tcg"
    assert len(calls) == 2


def test_probe_kernel_prefers_the_running_kernel(tmp_path):
    assert qemu.probe_kernel(tmp_path) is None
    (tmp_path / "vmlinuz-0.0.1-other").write_bytes(b"x")
    assert qemu.probe_kernel(tmp_path).name == "vmlinuz-0.0.1-other"
    (tmp_path / f"vmlinuz-{os.uname().release}").write_bytes(b"x")
    assert qemu.probe_kernel(tmp_path).name == f"vmlinuz-{os.uname().release}"


@pytest.mark.slow
@needs_qemu
def test_probe_sees_a_kernel_boot_under_tcg_and_not_under_kvm_pvm():
    kernel = qemu.probe_kernel()
    if kernel is None:
        pytest.skip("no kernel in /boot")
    assert qemu.probe_boots(qemu.find_qemu(), "tcg", kernel, timeout=20)
    if qemu._kvm_pvm_loaded() and os.access("/dev/kvm", os.R_OK | os.W_OK):
        # qemu-guest.md: kvm_pvm opens /dev/kvm but never gets a kernel to its banner.
        assert not qemu.probe_boots(qemu.find_qemu(), "kvm", kernel, timeout=5)


# -- launch ---------------------------------------------------------------------------------
@pytest.mark.slow
@needs_qemu
def test_launch_port_taken_is_port_in_use(tmp_path):
    port = pick_free_port(start=21000, end=21999)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        argv = [
            qemu.find_qemu(),
            "-M",
            "q35",
            "-display",
            "none",
            "-daemonize",
            "-nodefaults",
            "-pidfile",
            str(tmp_path / "pid"),
            "-netdev",
            f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device",
            "virtio-net-pci,netdev=n0",
        ]
        with pytest.raises(PortInUse) as err:
            qemu.launch(argv, log_path=tmp_path / "serial.log")
    assert f"127.0.0.1:{port}" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "pid").exists()


@pytest.mark.slow
@needs_qemu
def test_launch_failure_shows_last_stderr_line_and_log(tmp_path):
    argv = [
        qemu.find_qemu(),
        "-display",
        "none",
        "-daemonize",
        "-nodefaults",
        "-drive",
        f"file={tmp_path / 'missing.img'},format=raw",
    ]
    with pytest.raises(HypervisorError) as err:
        qemu.launch(argv, log_path=tmp_path / "serial.log")
    message = str(err.value)
    assert "missing.img" in message and str(tmp_path / "serial.log") in message and "\n" not in message


# -- processes and sockets ------------------------------------------------------------------
def _exec_done(pid: int, program: str, within: float = 30.0) -> bool:
    """Until the child has exec'd, /proc shows the forked Python's argv, not the program's."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(program.encode()):
                return True
        except OSError:
            return False
        time.sleep(0.01)
    return False


def test_process_alive_checks_marker_and_ignores_zombies(tmp_path):
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert _exec_done(proc.pid, "sleep")  # a condition, not a moment: fork+exec is slow on busy cores
        assert qemu.process_alive(proc.pid, "30")
        assert not qemu.process_alive(proc.pid, "not-in-its-argv")
        proc.send_signal(signal.SIGKILL)
        assert qemu.wait_exit(proc.pid, 5.0, "30")  # a zombie (not reaped yet) counts as gone
    finally:
        proc.kill()
        proc.wait()
    assert not qemu.process_alive(proc.pid)


def test_a_qemu_started_under_another_spelling_of_its_folder_is_alive(tmp_path):
    """B2DKIT_HOME through a symlink (/tmp is /private/tmp on macOS): the VM must not look dead, or
    _pid() would delete the pid file and monitor socket of a QEMU that runs (seen in a test run)."""
    real = tmp_path / "real" / "vms" / "a"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    script = "import time; time.sleep(30)"
    proc = subprocess.Popen(["qemu-system-fake", "-c", script, "-pidfile", str(real / "qemu.pid")],
                            executable=sys.executable)
    try:
        assert _exec_done(proc.pid, "qemu-system-fake")
        other = tmp_path / "link" / "vms" / "a" / "qemu.pid"
        assert qemu.process_alive(proc.pid, str(other))
        assert not qemu.process_alive(proc.pid, str(tmp_path / "link" / "vms" / "b" / "qemu.pid"))
        found = qemu.processes_by_pidfile(tmp_path / "link" / "vms")
        assert [(pid, pidfile) for pid, pidfile, _ in found] == [(proc.pid, other)]
    finally:
        proc.kill()
        proc.wait()


def test_read_pid(tmp_path):
    assert qemu.read_pid(tmp_path / "none") is None
    (tmp_path / "p").write_text("garbage")
    assert qemu.read_pid(tmp_path / "p") is None
    (tmp_path / "p").write_text("1234\n")
    assert qemu.read_pid(tmp_path / "p") == 1234


def test_socket_path_short_stays_long_moves_to_private_runtime_dir(tmp_path):
    short = Path("/tmp/x/qmp.sock")
    assert qemu.socket_path(short) == short
    deep = tmp_path.joinpath(*["d" * 30] * 4, "qmp.sock")
    moved = qemu.socket_path(deep)
    assert moved == qemu.socket_path(deep) and moved != deep
    assert len(str(moved)) <= qemu.SOCKET_PATH_MAX
    assert moved.parent.stat().st_mode & 0o777 == 0o700 and moved.parent.stat().st_uid == os.getuid()
    assert qemu.socket_path(deep.with_name("other.sock")) != moved
    with socket.socket(socket.AF_UNIX) as sock:  # the kernel accepts it
        sock.bind(str(moved))
    moved.unlink()


# -- QMP --------------------------------------------------------------------------------------
class FakeQMP:
    """A QMP server on a UNIX socket speaking what QEMU 7.2 says (greeting, events, errors)."""

    def __init__(self, path, replies, greeting=True):
        self.path, self.replies, self.greeting = str(path), replies, greeting
        self.received = []
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(self.path)
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.server.accept()
        with conn, conn.makefile("rwb") as f:
            if self.greeting:
                f.write(
                    b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, '
                    b'"capabilities": ["oob"]}}\r\n'
                )
                f.flush()
            for line in f:
                msg = json.loads(line)
                self.received.append(msg)
                if msg["execute"] == "qmp_capabilities":
                    out = [{"return": {}}]
                else:
                    out = self.replies.pop(0)
                for obj in out:
                    f.write(json.dumps(obj).encode() + b"\r\n")
                f.flush()

    def close(self):
        self.server.close()
        self.thread.join(2)


@pytest.fixture
def sock_path(tmp_path):
    return tmp_path / "q.sock"


def test_qmp_handshake_skips_events_and_returns_values(sock_path):
    event = {"event": "POWERDOWN", "timestamp": {"seconds": 1, "microseconds": 2}}
    server = FakeQMP(
        sock_path,
        [
            [event, {"return": {"status": "running", "singlestep": False, "running": True}}],
            [{"return": {"enabled": False, "present": True}}],
            [{"return": USERNET}],
        ],
    )
    try:
        with qemu.QMP(sock_path, timeout=3) as mon:
            assert mon.status() == "running"
            assert mon.kvm_enabled() is False
            assert mon.host_forwards() == [
                Forward(2022, 22),
                Forward(2023, 23, host_ip="0.0.0.0", guest_ip="10.0.2.16"),
                Forward(5353, 53, proto="udp"),
            ]
    finally:
        server.close()
    assert [m["execute"] for m in server.received] == [
        "qmp_capabilities",
        "query-status",
        "query-kvm",
        "human-monitor-command",
    ]
    assert server.received[-1]["arguments"] == {"command-line": "info usernet"}


def test_qmp_error_object_is_a_hypervisor_error(sock_path):
    server = FakeQMP(
        sock_path, [[{"error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}}]]
    )
    try:
        with (
            qemu.QMP(sock_path, timeout=3) as mon,
            pytest.raises(qemu.QMPError, match="bogus has not been found"),
        ):
            mon.execute("bogus")
    finally:
        server.close()


def test_hmp_hostfwd_text_errors(sock_path):
    # The texts QEMU 7.2 returned (captured alongside USERNET): success is an empty string.
    server = FakeQMP(
        sock_path,
        [
            [{"return": ""}],
            [{"return": "Could not set up host forwarding rule 'tcp:127.0.0.1:8001-:8000'\r\n"}],
            [{"return": "host forwarding rule for tcp:127.0.0.1:8001 removed\r\n"}],
            [{"return": "host forwarding rule for tcp:127.0.0.1:8001 not found\r\n"}],
            [{"return": "unrecognized netdev id 'n9'\r\n"}],
        ],
    )
    fwd = Forward(8001, 8000)
    try:
        with qemu.QMP(sock_path, timeout=3) as mon:
            mon.hostfwd_add(fwd)
            with pytest.raises(PortInUse, match="127.0.0.1:8001"):
                mon.hostfwd_add(fwd)
            mon.hostfwd_remove(fwd)
            with pytest.raises(HypervisorError, match="not found"):
                mon.hostfwd_remove(fwd)
            with pytest.raises(HypervisorError, match="n9"):
                mon.hostfwd_add(fwd, netdev="n9")
    finally:
        server.close()
    commands = [m["arguments"]["command-line"] for m in server.received[1:]]
    assert commands[:3] == [
        "hostfwd_add n0 tcp:127.0.0.1:8001-:8000",
        "hostfwd_add n0 tcp:127.0.0.1:8001-:8000",
        "hostfwd_remove n0 tcp:127.0.0.1:8001",
    ]


def test_qmp_silent_or_missing_server_is_a_one_line_error(sock_path, tmp_path):
    with pytest.raises(HypervisorError, match="cannot talk"):
        qemu.QMP(tmp_path / "nobody.sock", timeout=1)
    server = FakeQMP(sock_path, [], greeting=False)
    try:
        with pytest.raises(HypervisorError, match="cannot talk"):
            qemu.QMP(sock_path, timeout=0.5)
    finally:
        server.close()


def test_parse_usernet_groups_by_netdev_and_ignores_connections():
    two = USERNET + "Hub -1 (n1):\r\n  TCP[HOST_FORWARD]  9  127.0.0.1  9000  10.0.2.15  90  0  0\r\n"
    parsed = qemu.parse_usernet(two)
    assert [f.host_port for f in parsed["n0"]] == [2022, 2023, 5353]
    assert parsed["n1"] == [Forward(9000, 90)]
    assert qemu.parse_usernet("") == {}


def test_a_guest_qemu_halted_on_a_disk_error_is_explained_and_named_in_text_status():
    from b2dkit import status
    from b2dkit.hypervisors.base import VMState

    why = qemu.halted_reason("io-error")
    assert "disk is full" in why and "b2dkit vm.start" in why
    assert qemu.halted_reason("running") is None and qemu.halted_reason(None) is None
    assert qemu.map_state("io-error") == VMState.PAUSED
    info = {"name": "dev", "active": True, "provider": "qemu", "state": "paused", "halted": why,
            "boot_codes": [], "iso": "-", "disk": None, "forwards": [], "mounts": []}
    assert f"state:      paused ({why})" in status.render(info).splitlines()
