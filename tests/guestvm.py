"""One QEMU guest booted from a b2dkit guest ISO for the slow tests (shared by the guest image
and Docker tests): a format-me disk as docker-machine makes it, ISOLINUX boot under TCG, SSH with
a pinned host key, and the ACPI power button."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import paramiko
import pytest
from ports import free_port

MAGIC = b"boot2docker, please format-me"
BOOT_COMPLETE = "b2dkit-guest: boot complete"
GUEST_HTTP_PORT = 8000
DISK_BYTES = 512 << 20
BOOT_TIMEOUT = 180



def make_format_me_disk(path: Path, public_key: bytes, size: int = DISK_BYTES) -> bytes:
    """The persistent disk exactly as docker-machine's MakeDiskImage writes it; returns its header."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        def add(name, data=None, mode=0o644):
            info = tarfile.TarInfo(name)
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        add(MAGIC.decode(), MAGIC)
        add(".ssh", mode=0o700)
        add(".ssh/authorized_keys", public_key)
        add(".ssh/authorized_keys2", public_key)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
        f.truncate(size)
    return buf.getvalue()[:4096]


class Qmp:
    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rw")
        self.file.readline()
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments):
        msg = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self.file.write(json.dumps(msg) + "\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "return" in reply or "error" in reply:
                return reply

    def close(self):
        self.sock.close()


class GuestVM:
    """One qemu-system-x86_64 process booting the ISO via ISOLINUX with a data disk on ide.1."""

    def __init__(self, iso: Path, disk: Path, workdir: Path, key: paramiko.PKey, memory: int = 512, cpus: int = 1,
                 guest_ports=(GUEST_HTTP_PORT,)):
        self.iso, self.disk, self.workdir, self.key = iso, disk, workdir, key
        self.memory, self.cpus, self.guest_ports = memory, cpus, tuple(guest_ports)
        self.ports: dict[int, int] = {}  # guest port -> host port on 127.0.0.1
        self.proc: subprocess.Popen | None = None
        self.boots = 0
        self.pinned: paramiko.PKey | None = None

    def start(self):
        self.boots += 1
        self.ssh_port = free_port()
        self.ports = {guest: free_port() for guest in self.guest_ports}
        self.http_port = self.ports.get(GUEST_HTTP_PORT)
        self.started = time.monotonic()
        self.serial = self.workdir / f"serial-{self.boots}.log"
        self.qmp_path = self.workdir / f"qmp-{self.boots}.sock"
        args = [
            "qemu-system-x86_64", "-accel", "tcg", "-M", "q35", "-m", str(self.memory), "-smp", str(self.cpus),
            "-display", "none", "-serial", f"file:{self.serial}",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"
                       + "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in self.ports.items()),
            "-device", "virtio-net-pci,netdev=n0",
            "-drive", f"file={self.iso},media=cdrom,readonly=on", "-boot", "d",
            "-drive", f"file={self.disk},format=raw,if=none,id=d0",
            "-device", "ide-hd,drive=d0,bus=ide.1",
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while BOOT_COMPLETE not in self.serial_text():
            if self.proc.poll() is not None:
                pytest.fail(f"qemu exited: {self.proc.stderr.read().decode()[-500:]}")
            if time.monotonic() > deadline:
                tail = self.serial_text()[-2000:]
                pytest.fail(f"no '{BOOT_COMPLETE}' in {BOOT_TIMEOUT} s; serial:\n{tail}")
            time.sleep(0.2)
        self.client = self.connect()

    def serial_text(self) -> str:
        return self.serial.read_text(errors="replace") if self.serial.exists() else ""

    def connect(self, **auth) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        # First contact pins the key (as b2dkit does); afterwards any other key is refused.
        if self.pinned is None:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        else:
            client.get_host_keys().add(f"[127.0.0.1]:{self.ssh_port}", self.pinned.get_name(), self.pinned)
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        auth = auth or {"pkey": self.key}
        client.connect("127.0.0.1", self.ssh_port, username="docker", timeout=10, banner_timeout=10,
                       auth_timeout=10, look_for_keys=False, allow_agent=False, **auth)
        if self.pinned is None:
            self.pinned = client.get_transport().get_remote_server_key()
        return client

    def host_key(self) -> paramiko.PKey:
        return self.client.get_transport().get_remote_server_key()

    def run(self, command: str, check: bool = True) -> str:
        _, stdout, stderr = self.client.exec_command(command, timeout=30)
        out, err = stdout.read().decode(), stderr.read().decode()
        status = stdout.channel.recv_exit_status()
        if check:
            assert status == 0, f"{command!r} exited {status}: {err}"
        return out

    def powerdown(self, timeout: float = 60):
        """ACPI power button, as `VBoxManage controlvm acpipowerbutton` / b2dkit's stop."""
        self.client.close()
        qmp = Qmp(self.qmp_path)
        try:
            assert "return" in qmp.execute("system_powerdown")
        finally:
            qmp.close()
        self.proc.wait(timeout=timeout)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
