"""The one wrapper of ``qemu-system-x86_64``: its command line, its accelerator, its QMP monitor.

QEMU has no VM registry; a VM is a process.  This module knows how to start that process
detached (``-daemonize``: QEMU's parent exits only once devices and host forwards are set
up, so a port clash is an exit code and a stderr line, not a race), how to talk to its QMP
socket, and how to read QMP's human-monitor text back into ``Forward`` values.  Callers
never see QEMU's text.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ... import atomic, install, paths
from ...errors import HypervisorError, InputError, PortInUse, ToolMissing
from ...forwards import Forward
from ...paths import StrPath
from ..base import VMState

QEMU = "qemu-system-x86_64"
ACCELS = ("kvm", "tcg", "hvf")
ACCEL_ENV = "B2DKIT_QEMU_ACCEL"
NETDEV = "n0"
GUEST_IP = "10.0.2.15"  # what QEMU's user network hands the first (only) guest by DHCP
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS; keep a margin
_FWD_FAILED = "could not set up host forwarding rule"
KVM_DEVICE = "/dev/kvm"
KVM_PVM_MARKERS = (Path("/sys/module/kvm_pvm"), Path("/proc/modules"))  # loaded module dir, module list


# QEMU's run states (``query-status``) → b2dkit's.
# The error states halt the guest but the process still holds the disk: not safe to
# reconfigure, and stop() ends it; info() shows QEMU's own word for it.
_PAUSED = ("paused", "suspended", "internal-error", "io-error", "guest-panicked", "watchdog")
STATES = {"running": VMState.RUNNING, **dict.fromkeys(_PAUSED, VMState.PAUSED)}


# Why QEMU halted a guest, for users: ``vm.status`` shows it and ``vm.start`` stops waiting on it.
HALTED = {
    "io-error": "QEMU paused the guest because a write to its disk failed, most likely because the host "
                "disk is full: free space there, then `b2dkit vm.start` resumes it",
    "guest-panicked": "the guest's kernel panicked (see its console log); `b2dkit vm.stop`, then `b2dkit vm.start`",
    "internal-error": "QEMU stopped the guest on an internal error (see its console log); `b2dkit vm.stop`, "
                      "then `b2dkit vm.start`",
    "watchdog": "the guest's watchdog fired; `b2dkit vm.stop`, then `b2dkit vm.start`",
}


def halted_reason(status: Optional[str]) -> Optional[str]:
    return HALTED.get(status or "")


def map_state(status: str) -> VMState:
    """QEMU's run state → b2dkit's; anything else (prelaunch, migrating...) is BUSY."""
    return STATES.get(status, VMState.BUSY)


def find_qemu() -> str:
    path = shutil.which(QEMU)
    if not path:
        raise ToolMissing(f"{QEMU} not found on PATH: {install.hint('qemu')}")
    return path


# -- command line ---------------------------------------------------------------------------
def escape(value: object) -> str:
    """QEMU option syntax: a comma inside a value is written twice (``file=a,,b``)."""
    return str(value).replace(",", ",,")


def hostfwd_rule(fwd: Forward) -> str:
    """``tcp:127.0.0.1:2022-:22``: the rule text both ``-netdev hostfwd=`` and ``hostfwd_add`` take."""
    return f"{fwd.proto}:{fwd.host_ip}:{fwd.host_port}-{fwd.guest_ip}:{fwd.guest_port}"


def build_argv(
    qemu: str,
    name: str,
    *,
    accel: str,
    memory_mb: int,
    cpus: int,
    iso: StrPath,
    disk: StrPath,
    pidfile: StrPath,
    serial_log: StrPath,
    qmp_socket: StrPath,
    forwards: Iterable[Forward] = (),
) -> List[str]:
    """The full command line; pure, so tests can read it without starting anything.

    Files go through ``-chardev``/``-drive`` options (not the ``file:`` shorthands) because
    only QemuOpts has a defined escape for commas in paths.
    """
    if accel not in ACCELS:
        raise InputError(f"unknown QEMU accelerator {accel!r}: use one of {', '.join(ACCELS)}")
    netdev = f"user,id={NETDEV}" + "".join(f",hostfwd={hostfwd_rule(f)}" for f in forwards)
    options = [
        ("-name", f"guest={escape(name)}"),
        ("-accel", accel),
        *([("-cpu", "host")] if accel != "tcg" else []),  # hardware accel: the real CPU, not qemu64
        ("-M", "q35"),
        ("-m", str(int(memory_mb))),
        ("-smp", str(int(cpus))),
        ("-display", "none"),
        ("-monitor", "none"),
        ("-daemonize",),
        ("-pidfile", str(pidfile)),
        ("-chardev", f"file,id=serial0,path={escape(serial_log)}"),
        ("-serial", "chardev:serial0"),
        ("-chardev", f"socket,id=qmp0,path={escape(qmp_socket)},server=on,wait=off"),
        ("-mon", "chardev=qmp0,mode=control"),
        ("-netdev", netdev),
        ("-device", f"virtio-net-pci,netdev={NETDEV}"),
        # On q35 the CD takes AHCI port ide.0, so the disk goes to ide.1: the guest sees sr0 + sda,
        # as on VirtualBox's SATA controller.
        ("-drive", f"file={escape(iso)},media=cdrom,readonly=on"),
        ("-boot", "d"),
        ("-drive", f"file={escape(disk)},format=raw,if=none,id=d0"),
        ("-device", "ide-hd,drive=d0,bus=ide.1"),
    ]
    argv = [qemu]
    for option in options:
        argv.extend(option)
    return argv


def launch(argv: List[str], log_path: Optional[StrPath] = None, timeout: float = 60.0) -> None:
    """Run a ``-daemonize`` command line; return once QEMU's parent reports the VM is set up.

    stderr goes to a temp file, not a pipe: the daemon could keep a pipe open after its
    parent exits and we would wait forever for EOF.
    """
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise HypervisorError(
                f"{Path(argv[0]).name} did not finish starting in {timeout:.0f} s"
            ) from None
        err.seek(0)
        lines = [line.strip() for line in err.read().decode(errors="replace").splitlines() if line.strip()]
    if proc.returncode == 0:
        return
    last = lines[-1] if lines else f"exit status {proc.returncode}"
    last = re.sub(r"^\S*qemu-system-\S+: ", "", last)
    if _FWD_FAILED in last.lower():
        raise PortInUse(
            f"QEMU could not bind a host port: {last}", hint="free it or pick another host port (HOST:GUEST)"
        )
    where = f"; see {log_path}" if log_path else ""
    raise HypervisorError(f"QEMU failed to start: {last}{where}")


# -- accelerator ----------------------------------------------------------------------------
def choose_accel(qemu: Optional[str] = None) -> str:
    """kvm, hvf or tcg: see ``decide_accel`` for the rule."""
    return decide_accel(qemu)[0]


def decide_accel(qemu: Optional[str] = None) -> Tuple[str, str]:
    """(accelerator, why). A KVM device that opens is not proof that KVM boots a guest.

    Rule, first match wins:
    1. ``B2DKIT_QEMU_ACCEL`` = kvm|tcg|hvf is obeyed (profiles/CI force it).
    2. macOS: hvf if this QEMU lists it, else tcg.
    3. Linux without a read/write ``/dev/kvm``: tcg.
    4. The ``kvm_pvm`` module is loaded (a software nested hypervisor that aborts real boots,
       measured in qemu-guest.md): tcg, without spending a probe.
    5. Otherwise a probe: boot a Linux kernel under ``-accel kvm`` and require it to print
       on the serial console within seconds.  The verdict is cached per (QEMU binary, host
       kernel) in the cache dir, so only the first start on a machine pays for it.
    """
    forced = os.environ.get(ACCEL_ENV, "").strip().lower()
    if forced:
        if forced not in ACCELS:
            raise InputError(f"{ACCEL_ENV}={forced!r} is not an accelerator: use one of {', '.join(ACCELS)}")
        return forced, f"forced by {ACCEL_ENV}"
    if sys.platform == "darwin":
        if "hvf" in _accels_listed(qemu or find_qemu()):
            return "hvf", "macOS Hypervisor.framework"
        return "tcg", "this QEMU has no hvf"
    if not (os.path.exists(KVM_DEVICE) and os.access(KVM_DEVICE, os.R_OK | os.W_OK)):
        return "tcg", f"{KVM_DEVICE} is missing or not accessible"
    if _kvm_pvm_loaded():
        return "tcg", "kvm_pvm (nested software KVM) cannot boot guests"
    return _cached_probe(qemu or find_qemu())


def _accels_listed(qemu: str) -> List[str]:
    out = subprocess.run([qemu, "-accel", "help"], capture_output=True, text=True, check=False).stdout
    return [line.strip() for line in out.splitlines()[1:] if line.strip()]


def _kvm_pvm_loaded() -> bool:
    module_dir, module_list = KVM_PVM_MARKERS
    if module_dir.is_dir():
        return True
    with contextlib.suppress(OSError):
        return any(line.split()[:1] == ["kvm_pvm"] for line in module_list.read_text().splitlines())
    return False


def probe_kernel(boot: StrPath = Path("/boot")) -> Optional[Path]:
    """A bootable kernel to probe with: the running one's image if readable, else any in /boot."""
    boot = Path(boot)
    candidates = [boot / f"vmlinuz-{os.uname().release}"] + sorted(boot.glob("vmlinuz-*"))
    for path in candidates:
        if path.is_file() and os.access(path, os.R_OK):
            return path
    return None


def _cached_probe(qemu: str) -> Tuple[str, str]:
    kernel = probe_kernel()
    if kernel is None:
        return "tcg", "no kernel in /boot to prove KVM boots"
    stat = Path(qemu).stat()
    key = f"{qemu}:{stat.st_size}:{stat.st_mtime_ns}:{kernel}:{os.uname().release}"
    cache = paths.cache_dir() / "qemu-accel.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        data = json.loads(cache.read_text())
        if data["key"] == key:
            return data["accel"], data["reason"] + " (cached)"
    if probe_boots(qemu, "kvm", kernel):
        verdict = ("kvm", f"a KVM probe boot of {kernel.name} printed on serial")
    else:
        verdict = ("tcg", f"a KVM probe boot of {kernel.name} showed nothing")
    with contextlib.suppress(OSError, InputError):
        paths.ensure_dir(cache.parent)
        payload = {"key": key, "accel": verdict[0], "reason": verdict[1]}
        atomic.write_bytes(cache, json.dumps(payload).encode())
    return verdict


def probe_boots(qemu: str, accel: str, kernel: StrPath, timeout: float = 10.0) -> bool:
    """Boot ``kernel`` directly under ``accel``; True once it prints its banner on serial.

    A working accelerator prints ``Linux version`` in well under a second (TCG in about one);
    broken nested KVM either dies or prints only the real-mode stub's messages.
    """
    with tempfile.TemporaryDirectory(prefix="b2dkit-probe-") as tmp:
        log = Path(tmp) / "serial.log"
        argv = [
            qemu,
            "-accel",
            accel,
            "-M",
            "q35",
            "-m",
            "128",
            "-display",
            "none",
            "-nodefaults",
            "-no-user-config",
            "-chardev",
            f"file,id=s0,path={escape(log)}",
            "-serial",
            "chardev:s0",
            "-kernel",
            str(kernel),
            "-append",
            "console=ttyS0 panic=0",
        ]
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    if b"Linux version" in log.read_bytes():
                        return True
                if proc.poll() is not None:
                    return False
                time.sleep(0.1)
            return False
        finally:
            proc.kill()
            proc.wait()


# -- the process ----------------------------------------------------------------------------
def read_pid(pidfile: StrPath) -> Optional[int]:
    with contextlib.suppress(OSError, ValueError):
        pid = int(Path(pidfile).read_text().strip())
        return pid if pid > 0 else None
    return None


def process_alive(pid: int, marker: Optional[str] = None) -> bool:
    """True if ``pid`` runs and is not a zombie; with ``marker``, its argv must contain it.

    The marker (our pidfile path) guards against a recycled pid belonging to something else.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else: the marker check below decides
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return marker is None  # no /proc (macOS): trust the pidfile
    try:
        stat = (proc / "stat").read_text()
        if stat[stat.rindex(")") + 2] in "ZX":  # reaped late when pid 1 is not a real init
            return False
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return False
    return marker is None or _names(argv, marker)


def _names(argv: List[bytes], path: str) -> bool:
    """``path`` is in ``argv``, as spelled or through symlinks (``/tmp`` is ``/private/tmp`` on macOS;
    a B2DKIT_HOME reached by another spelling): a live VM must never look dead and lose its files."""
    wanted = os.fsencode(path)
    if wanted in argv:
        return True
    real, name = os.path.realpath(wanted), os.path.basename(wanted)
    return any(arg.endswith(name) and os.path.realpath(arg) == real for arg in argv if arg)


def processes_by_pidfile(under: Path) -> List[Tuple[int, Path, List[str]]]:
    """(pid, pidfile, argv) of every live QEMU whose own ``-pidfile`` argument lies under ``under``.

    b2dkit's marker survives the pid file and even the VM folder being deleted: the kernel keeps
    QEMU's argv, so an orphan can still be named and stopped.  Linux (/proc) only.
    """
    found: List[Tuple[int, Path, List[str]]] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    prefix = os.fsencode(str(under)) + b"/"
    real_prefix = os.fsencode(os.path.realpath(under)) + b"/"
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-pidfile" not in argv[:-1] or not os.path.basename(argv[0]).startswith(b"qemu-system"):
            continue
        pidfile = argv[argv.index(b"-pidfile") + 1]
        if not pidfile.startswith(prefix):
            if not os.path.realpath(pidfile).startswith(real_prefix):
                continue
            pidfile = prefix + os.path.realpath(pidfile)[len(real_prefix):]  # named as the caller spells it
        if process_alive(int(entry.name), os.fsdecode(pidfile)):
            found.append((int(entry.name), Path(os.fsdecode(pidfile)), [os.fsdecode(a) for a in argv if a]))
    return found


def forwards_in_argv(argv: List[str]) -> List[Forward]:
    """The ``hostfwd=`` rules a QEMU command line holds (to name an orphan that has a port)."""
    found = []
    for item in argv:
        for part in item.split(","):
            match = re.match(r"^hostfwd=(tcp|udp):([\d.]*):(\d+)-[\d.]*:(\d+)$", part)
            if match:
                proto, ip, host, guest = match.groups()
                found.append(Forward(host_port=int(host), guest_port=int(guest), proto=proto, host_ip=ip))
    return found


def wait_exit(pid: int, timeout: float, marker: Optional[str] = None) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid, marker):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def socket_path(preferred: Path) -> Path:
    """``preferred`` if it fits in sun_path, else a short per-user path derived from it.

    Deterministic (a hash of the preferred path), so nothing has to remember where it went.
    """
    if len(os.fsencode(str(preferred))) <= SOCKET_PATH_MAX:
        return preferred
    runtime = Path("/tmp") / f"b2dkit-{os.getuid()}"
    runtime.mkdir(mode=0o700, exist_ok=True)
    info = runtime.lstat()
    if not runtime.is_dir() or runtime.is_symlink() or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise HypervisorError(f"{runtime} is not a private directory of yours; remove it and retry")
    digest = hashlib.sha256(os.fsencode(str(preferred))).hexdigest()[:16]
    return runtime / f"{digest}.qmp"


# -- QMP ------------------------------------------------------------------------------------
class QMPError(HypervisorError):
    """QEMU answered a QMP command with an error object."""


class QMP:
    """A minimal QMP client: one connection, JSON lines, events skipped.

    QEMU serves one QMP client per socket at a time, so open it, ask, and close it.
    """

    def __init__(self, path: StrPath, timeout: float = 5.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.path)
            self._file = self._sock.makefile("rwb")
            greeting = self._read()
            if "QMP" not in greeting:
                raise HypervisorError(f"{self.path} is not a QMP socket (greeting {greeting!r})")
            self.execute("qmp_capabilities")
        except (OSError, ValueError) as exc:
            self.close()
            raise HypervisorError(f"cannot talk to QEMU's monitor at {self.path}: {exc}") from None
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "QMP":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(Exception):
            self._sock.close()

    def _read(self) -> Dict[str, Any]:  # one QMP message: parsed JSON
        line = self._file.readline()
        if not line:
            raise ConnectionResetError("QEMU closed the monitor connection")
        return json.loads(line)

    def execute(self, command: str, arguments: Optional[Dict[str, Any]] = None) -> Any:
        """Send one command; return its ``return`` value (parsed JSON: Any), raise QMPError on ``error``."""
        message: Dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._file.write(json.dumps(message).encode() + b"\n")
        self._file.flush()
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                err = reply["error"]
                raise QMPError(f"QEMU refused {command}: {err.get('desc', err)}")
            # anything else is an asynchronous event: not ours to answer

    def hmp(self, command_line: str) -> str:
        """A human-monitor command; its output text (errors come back as text too)."""
        return self.execute("human-monitor-command", {"command-line": command_line}) or ""

    # -- parsed helpers ---------------------------------------------------------------------
    def status(self) -> str:
        """QEMU's run state: running, paused, shutdown, internal-error, prelaunch..."""
        return self.execute("query-status")["status"]

    def kvm_enabled(self) -> bool:
        return bool(self.execute("query-kvm").get("enabled"))

    def host_forwards(self, netdev: str = NETDEV) -> List[Forward]:
        return parse_usernet(self.hmp("info usernet")).get(netdev, [])

    def hostfwd_add(self, fwd: Forward, netdev: str = NETDEV) -> None:
        rule = hostfwd_rule(fwd)
        out = self.hmp(f"hostfwd_add {netdev} {rule}").strip()
        if not out:
            return
        if _FWD_FAILED in out.lower():
            raise PortInUse(
                f"host port {fwd.host_ip}:{fwd.host_port}/{fwd.proto} is already in use (QEMU: {out})",
                hint="free it or pick another host port (HOST:GUEST)",
            )
        raise HypervisorError(f"QEMU refused forward {rule}: {out}")

    def hostfwd_remove(self, fwd: Forward, netdev: str = NETDEV) -> None:
        rule = f"{fwd.proto}:{fwd.host_ip}:{fwd.host_port}"
        out = self.hmp(f"hostfwd_remove {netdev} {rule}").strip()
        if out and "removed" not in out:
            raise HypervisorError(f"QEMU could not remove forward {rule}: {out}")


_HUB = re.compile(r"^Hub\s+-?\d+\s+\((?P<netdev>[^)]*)\):")
_HOSTFWD = re.compile(
    r"^\s*(?P<proto>TCP|UDP)\[HOST_FORWARD\]\s+-?\d+\s+(?P<src>\S+)\s+(?P<sport>\d+)"
    r"\s+(?P<dst>\S+)\s+(?P<dport>\d+)"
)


def parse_usernet(text: str) -> dict:
    """``info usernet`` → {netdev id: [Forward...]} for its HOST_FORWARD rows.

    QEMU prints 0.0.0.0 as ``*``; a rule to the default guest address reads back with an
    empty ``guest_ip``, as the rule was written.
    """
    result: Dict[str, List[Forward]] = {}
    netdev = None
    for line in text.splitlines():
        hub = _HUB.match(line.strip())
        if hub:
            netdev = hub.group("netdev")
            result.setdefault(netdev, [])
            continue
        row = _HOSTFWD.match(line)
        if not row or netdev is None:
            continue
        src, dst = row.group("src"), row.group("dst")
        result[netdev].append(
            Forward(
                host_port=int(row.group("sport")),
                guest_port=int(row.group("dport")),
                proto=row.group("proto").lower(),
                host_ip="0.0.0.0" if src == "*" else src,
                guest_ip="" if dst == GUEST_IP else dst,
            )
        )
    return result
