"""The per-VM watcher: a small host process that repairs the VM soon after a sleep or a pause.

``vm.start`` starts one per running VM; ``vm.stop`` and ``vm.destroy`` stop it; it also ends
by itself once the VM is no longer running.  It needs no root, and it detaches from the
terminal (double fork + setsid), so closing the terminal that ran ``vm.start`` leaves it
running.  Its files live in the VM's folder: ``watcher.pid``, ``watcher.log`` and
``watcher.lock`` (an flock held for its whole life: one watcher per VM, and a killed one
leaves no stale lock).

What it watches, cheaply:
- the host: a jump between the wall clock and the monotonic clock means the laptop slept;
- the guest: one long-lived shell on its SSH connection answers ``/proc/uptime`` every
  second with shell builtins only (no process is started in the guest).  A paused VM does
  not answer; a guest whose uptime fell behind the host's monotonic clock lost time;
- each sshfs mount: a FUSE ``statvfs`` (instant ENOTCONN once sshfs died).
Any of these triggers ``repair.repair`` (clock, stale mounts), then each forward is
re-checked.  It also runs the [::1] relays of the VM's loopback forwards (``relay.py``),
re-reading the forwards at once on SIGHUP (``vm.forward`` sends it) and every 30 s.
With ``ports: auto`` a thread follows the Docker daemon's events (``autoports.py``).

``B2DKIT_WATCHER=0`` turns it off (the fast tests do, as they fake the hypervisor).
"""

import contextlib
import datetime
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

from . import atomic, paths
from .errors import B2dkitError, GuestError

if TYPE_CHECKING:
    from .forwards import Forward
    from .guest import GuestSession

PIDFILE = "watcher.pid"
RELAYS = "relays.json"  # the [::1] relays running now, for vm.status
LOGFILE = "watcher.log"
LOCKFILE = "watcher.lock"
ENV_SWITCH = "B2DKIT_WATCHER"
TICK = 0.5  # seconds between looks
PROBE_EVERY = 1.0  # guest uptime probe
MOUNTS_EVERY = 1.0  # FUSE statvfs of each mount: instant when sshfs died, one SFTP request otherwise
PROBE_SLOW = 1.5  # an answer slower than this means the guest was not running meanwhile
JUMP = 2.0  # wall minus monotonic step (seconds) that means the host slept
LAG = 0.5  # guest uptime behind host monotonic by this much since the last sync: re-check the clock
STATE_EVERY = 10.0  # ask the hypervisor whether the VM still runs (VBoxManage costs ~0.1 s of CPU)
FORWARDS_EVERY = 30.0  # a fallback: vm.forward and vm.unforward poke the watcher (SIGHUP)
RECONNECT_AFTER = 10.0  # no answer for this long while the hypervisor says running: new connection
START_TIMEOUT = 15.0
UPTIME_PROBE = b"read u _ </proc/uptime; echo $u\n"  # builtins only: nothing is forked in the guest


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "off", "no", "false")


def _files(name: str) -> Tuple[Path, Path, Path]:
    d = paths.vm_dir(name)
    return d / PIDFILE, d / LOGFILE, d / LOCKFILE


MODULE = "b2dkit.watcher"  # in its argv: tells our watcher from a process that reused its pid


def _argv(name: str) -> List[str]:
    return [sys.executable, "-m", MODULE, name]


# -- control from b2dkit commands -------------------------------------------------------------


def _lock_held(lockfile: Path) -> bool:
    if not lockfile.exists():
        return False
    fd = os.open(lockfile, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True  # held: a watcher lives (or is in its last moments)
    finally:
        os.close(fd)


def running_pid(name: str) -> Optional[int]:
    """The watcher's pid if one runs for this VM (it holds the lock and is our program)."""
    pidfile, _, lockfile = _files(name)
    if not _lock_held(lockfile):
        return None
    with contextlib.suppress(OSError, ValueError):
        return int(pidfile.read_text().strip())
    return None  # exiting: the pidfile is gone, the lock not yet


def start(name: str) -> Optional[int]:
    """Start the VM's watcher unless one runs; its pid (None when turned off)."""
    if not enabled():
        return None
    pid = running_pid(name)
    if pid:
        return pid
    paths.ensure_dir(paths.vm_dir(name))
    proc = subprocess.Popen(_argv(name), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, close_fds=True)  # fmt: skip
    try:
        line, _ = proc.communicate(timeout=START_TIMEOUT)  # the first child exits once the daemon is ready
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise GuestError(f"the watcher of VM {name!r} did not start within {START_TIMEOUT:g} s; "
                         f"see {_files(name)[1]}") from None  # fmt: skip
    text = line.decode(errors="replace").split()
    if len(text) == 2 and text[0] in ("ready", "running") and text[1].isdigit():
        return int(text[1])
    raise GuestError(f"the watcher of VM {name!r} did not start; see {_files(name)[1]}")


def stop(name: str, timeout: float = 10.0) -> bool:
    """Stop the VM's watcher; True if one was running."""
    pid = running_pid(name)
    if not pid:
        return False
    from .hypervisors.qemu import qemusystem as qemu  # generic process helpers: alive, wait, kill

    qemu.kill(pid, signal.SIGTERM)
    if not qemu.wait_exit(pid, timeout, MODULE):
        qemu.kill(pid, signal.SIGKILL)
        qemu.wait_exit(pid, 5.0, MODULE)
        pidfile = _files(name)[0]
        with contextlib.suppress(OSError):
            if pidfile.read_text().strip() == str(pid):  # it had no chance to remove its own
                pidfile.unlink()
    # An exiting process loses its argv before its files: wait for the lock too, so a
    # vm.start right after this finds no watcher.
    deadline = time.monotonic() + 5.0
    while _lock_held(_files(name)[2]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return True


def poke(name: str) -> None:
    """Ask the watcher to re-read the forwards now (after vm.forward / vm.unforward)."""
    pid = running_pid(name)
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGHUP)


def status(name: str) -> dict:
    from . import repair

    pidfile, logfile, _ = _files(name)
    pid = running_pid(name)
    relays: dict = {"active": [], "failed": {}}
    if pid:
        with contextlib.suppress(OSError, ValueError):
            relays = json.loads((paths.vm_dir(name) / RELAYS).read_text())
    return {
        "running": bool(pid),
        "pid": pid,
        "log": str(logfile),
        "ipv6_relays": relays,
        "last_repair": repair.last(paths.vm_dir(name)),
    }


# -- the daemon -------------------------------------------------------------------------------


def _daemonize(notify_fd: int, logfile: Path) -> None:
    """Double fork + setsid: no controlling terminal, not a session leader, parent is init."""
    if os.fork() > 0:
        os._exit(0)  # first child: the launcher waits on the pipe, not on us
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    log_fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    for fd in (devnull, log_fd):
        if fd > 2 and fd != notify_fd:
            os.close(fd)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop installs its own


def _log(text: str) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    sys.stdout.write(f"{stamp} {text}\n")
    sys.stdout.flush()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m b2dkit.watcher VM", file=sys.stderr)
        return 2
    name = paths.check_vm_name(args[0])
    pidfile, logfile, lockfile = _files(name)
    paths.ensure_dir(pidfile.parent)
    sys.stdout.flush()
    notify = os.dup(1)  # the launcher reads "ready PID" here
    _daemonize(notify, logfile)
    lock = os.open(lockfile, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = running_pid(name) or 0
        os.write(notify, f"running {other}\n".encode())
        os.close(notify)
        return 0
    tmp = pidfile.with_name(f".{PIDFILE}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, pidfile)
    try:
        try:
            watch = Watcher(name)
            _log(f"watching VM {name} (pid {os.getpid()})")
        finally:
            os.write(notify, f"ready {os.getpid()}\n".encode())  # or, on error, EOF: see the log
            os.close(notify)
        watch.run()
    except Exception as exc:  # the log is its only voice
        _log(f"watcher stopped by an error: {type(exc).__name__}: {exc}")
        return 1
    finally:
        with contextlib.suppress(OSError):
            if pidfile.read_text().strip() == str(os.getpid()):
                pidfile.unlink()
    return 0


class Watcher:
    def __init__(self, name: str):
        from . import lifecycle, machines, relay

        self.name = name
        self.machine = machines.load(name)
        self.provider = lifecycle.provider_for(self.machine)
        self.relays = relay.Relays(log=_log)
        self.session: Optional["GuestSession"] = None
        self.shell: Any = None  # paramiko channel running the guest's sh for the uptime probe
        self.endpoint: Optional[Tuple[str, int]] = None
        self.pending_since: Optional[float] = None  # monotonic time the unanswered probe was sent
        self.buffer = b""
        self.sync_mono: Optional[float] = None  # host monotonic and guest uptime at the last clock sync
        self.sync_uptime: Optional[float] = None
        self.stalled_logged = False
        self.stop_requested = False
        self.reread_forwards = True
        self.follower: Any = None  # autoports.Follower when the profile says ports: auto
        # before "ready": a vm.stop right after vm.start must find the handlers in place
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)

    # -- loop -------------------------------------------------------------------------------
    def run(self) -> None:
        last_wall, last_mono = time.time(), time.monotonic()
        next_probe = next_state = next_forwards = next_mounts = 0.0
        try:
            self._follow_containers()
            while not self.stop_requested:
                now = time.monotonic()
                wall = time.time()
                jump = (wall - last_wall) - (now - last_mono)
                last_wall, last_mono = wall, now
                reason = None
                if abs(jump) > JUMP:
                    reason = f"the host clock jumped {jump:+.1f} s (sleep or clock change)"
                if now >= next_state:
                    next_state = now + STATE_EVERY
                    if not self._vm_running():
                        _log(f"VM {self.name} is no longer running; watcher exits")
                        return
                if self.reread_forwards or now >= next_forwards:
                    self.reread_forwards = False
                    next_forwards = now + FORWARDS_EVERY
                    self._reconcile_relays()
                if self.session is None:
                    if not self._connect():
                        self._sleep(1.0)
                        continue
                    reason = reason or "watcher connected"
                answered = self._read_probe()
                if answered:
                    reason = reason or answered
                elif self.pending_since is None and now >= next_probe:
                    next_probe = now + PROBE_EVERY
                    self._send_probe()
                stall = self._stalled(now)
                if not stall and not reason and now >= next_mounts:
                    next_mounts = now + MOUNTS_EVERY
                    reason = self._stale_mount()
                if reason and self.session is not None and not stall:
                    self._repair(reason)
                self._sleep(TICK)
        finally:
            if self.follower is not None:
                self.follower.stop()
            self.relays.close()
            self._disconnect()
            _log("watcher stopped")

    def _sleep(self, seconds: float) -> None:
        if self.shell is not None:
            with contextlib.suppress(OSError, ValueError):
                select.select([self.shell], [], [], seconds)  # wake early for the guest's answer
                return
        time.sleep(seconds)

    def _follow_containers(self) -> None:
        """``ports: auto``: a thread follows the Docker daemon (autoports.py); it never blocks
        this loop, and a guest without a daemon only costs it a retry now and then."""
        from . import autoports

        try:
            self.follower = autoports.follow(self.machine, log=_log, on_change=self._on_hup)
        except B2dkitError as exc:
            _log(f"auto ports: not followed: {exc}")

    def _on_term(self, *_: object) -> None:
        self.stop_requested = True

    def _on_hup(self, *_: object) -> None:
        self.reread_forwards = True

    # -- the VM -----------------------------------------------------------------------------
    def _vm_running(self) -> bool:
        from .hypervisors.base import VMState

        try:
            state = self.provider.state()
        except B2dkitError as exc:
            _log(f"cannot ask the hypervisor about {self.name}: {exc}")
            return self.machine_exists()
        return state in (VMState.RUNNING, VMState.PAUSED, VMState.BUSY)

    def machine_exists(self) -> bool:
        return (paths.vm_dir(self.name) / "b2dkit.json").exists()

    def _forwards(self) -> Optional[List["Forward"]]:
        """The VM's rules, or None (logged) when the hypervisor cannot say now: try again next round."""
        try:
            return self.provider.forwards()
        except B2dkitError as exc:
            _log(f"cannot read the forwards: {exc}")
            return None

    def _reconcile_relays(self) -> None:
        rules = self._forwards()
        if rules is None:
            return
        before = (sorted(self.relays.active), dict(self.relays.failed))
        self.relays.reconcile(rules)
        now = (sorted(self.relays.active), dict(self.relays.failed))
        if now != before or not (paths.vm_dir(self.name) / RELAYS).exists():
            data = {"active": [f"{port}/{proto}" for proto, port in now[0]],
                    "failed": {f"{port}/{proto}": why for (proto, port), why in now[1].items()}}
            atomic.write_bytes(paths.vm_dir(self.name) / RELAYS, (json.dumps(data) + "\n").encode())

    # -- the guest --------------------------------------------------------------------------
    def _connect(self) -> bool:
        from . import forwards as fw
        from . import guest, lifecycle

        try:
            ssh = fw.ssh_forward(self.provider.forwards())
            self.endpoint = fw.connect_address(ssh) if ssh else self.provider.ssh_endpoint()
            self.session = guest.connect(*self.endpoint, lifecycle.key_path(self.name),
                                         lifecycle.known_hosts_path(self.name), timeout=10, banner_timeout=10)
            transport = self.session.client.get_transport()
            if transport is None:  # paramiko: the connection closed right after the login
                raise EOFError("the SSH connection closed")
            transport.set_keepalive(0)
            self.shell = transport.open_session(timeout=10)
            self.shell.exec_command("sh")
        except (B2dkitError, OSError, EOFError, Exception) as exc:  # noqa: B014 - paramiko raises broadly
            _log(f"cannot reach the guest yet: {exc}")
            self._disconnect()
            return False
        self.pending_since = None
        self.buffer = b""
        self.sync_mono = self.sync_uptime = None
        _log(f"connected to the guest at {self.endpoint[0]}:{self.endpoint[1]}")
        return True

    def _disconnect(self) -> None:
        for thing in (self.shell, self.session):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()
        self.shell = self.session = None
        self.pending_since = None

    def _send_probe(self) -> None:
        try:
            self.shell.sendall(UPTIME_PROBE)
            self.pending_since = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - a dead channel raises paramiko's or OSError
            _log(f"lost the guest connection: {exc}")
            self._disconnect()

    def _read_probe(self) -> Optional[str]:
        """A reason to repair, from the guest's answer; None if nothing came or all is well."""
        if self.shell is None or self.pending_since is None:
            return None
        try:
            while self.shell.recv_ready():
                self.buffer += self.shell.recv(4096)
            closed = self.shell.exit_status_ready() or self.shell.closed
        except Exception as exc:  # noqa: BLE001
            _log(f"lost the guest connection: {exc}")
            self._disconnect()
            return None
        if b"\n" not in self.buffer:
            if closed:
                _log("the guest's shell ended; reconnecting")
                self._disconnect()
            return None
        line, self.buffer = self.buffer.split(b"\n", 1)
        took = time.monotonic() - self.pending_since
        now = time.monotonic()
        self.pending_since = None
        if self.stalled_logged:
            _log(f"the guest answers again after {took:.1f} s")
            self.stalled_logged = False
        try:
            uptime = float(line.decode().strip())
        except ValueError:
            return None
        if took > PROBE_SLOW:
            self.sync_mono, self.sync_uptime = None, None
            return f"the guest did not answer for {took:.1f} s (paused or asleep)"
        if self.sync_mono is None or self.sync_uptime is None:
            self.sync_mono, self.sync_uptime = now, uptime
            return None
        lag = (now - self.sync_mono) - (uptime - self.sync_uptime)
        if abs(lag) > LAG:
            self.sync_mono, self.sync_uptime = None, None
            return f"the guest's uptime fell {lag:.1f} s behind the host's"
        return None

    def _stalled(self, now: float) -> bool:
        if self.pending_since is None:
            return False
        waited = now - self.pending_since
        if waited < PROBE_SLOW:
            return False
        if not self.stalled_logged:
            _log("the guest does not answer (paused, asleep or busy)")
            self.stalled_logged = True
        if waited > RECONNECT_AFTER and self._running_now():
            _log(f"no answer for {waited:.0f} s although the VM runs; reconnecting")
            self._disconnect()
        return True

    def _running_now(self) -> bool:
        from .hypervisors.base import VMState

        with contextlib.suppress(B2dkitError):
            return self.provider.state() == VMState.RUNNING
        return False

    def _stale_mount(self) -> Optional[str]:
        from . import sshfs

        for m in self.machine.mounts:
            local = m.host.expanduser()
            current = sshfs.find_mount(local, check=False)
            if current is None:
                continue
            state, detail = sshfs.probe(local, timeout=1.0)
            if state != "alive":
                return f"mount {local} is stale ({detail})"
        return None

    def _repair(self, reason: str) -> None:
        from . import repair

        _log(f"checking: {reason}")
        if self.session is None or self.endpoint is None:  # the caller checks; this says so to mypy
            return
        try:
            result = repair.repair(self.machine, self.session, self.endpoint, by="watcher", reason=reason,
                                   check_clock=not reason.startswith("mount "))  # a dead sshfs: mounts only
        except (B2dkitError, TimeoutError) as exc:
            _log(f"repair failed: {exc}")
            self._disconnect()
            return
        _log(f"{result.summary()} (total {result.seconds:.2f} s, drift was {result.drift_before})")
        self._check_forwards()
        # The clock set or the wait may have moved the guest's uptime baseline: start over.
        self.sync_mono = self.sync_uptime = None

    def _check_forwards(self) -> None:
        from . import forwards as fw
        from . import repair

        rules = self._forwards()
        if rules is None:
            return
        bad = []
        for rule in rules:
            if rule.proto != "tcp":
                continue
            if not repair.forward_answers(*fw.connect_address(rule)):
                bad.append(f"{rule.host_ip}:{rule.host_port}")
        self._reconcile_relays()
        if bad:
            _log(f"forwards not answering on the host: {', '.join(bad)}")
        else:
            _log(f"forwards checked: {len(rules)} in place")


if __name__ == "__main__":
    sys.exit(main())
