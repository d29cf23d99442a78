"""Repair what a laptop's sleep (or a paused VM) breaks: the guest clock and stale sshfs mounts.

One function, ``repair``, used by both paths that find damage: the per-VM watcher
(``watcher.py``) right after it notices a wake-up, and every b2dkit command that opens a
session to a running VM (``lifecycle.connect``).  So the watcher only makes the repair
come sooner; without it the next command still fixes things.

Each repair that changed something is appended to the VM's ``repairs.log`` (one line, with
how long each step took) and written whole to ``last_repair.json`` for ``vm.status``.
A lock file serialises repairs of one VM, so the watcher and a command never remount the
same folder at once.
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

from . import atomic, guest, machines, paths
from .boot2docker import DEFAULT_USER
from .errors import B2dkitError
from .machines import Machine

LAST = "last_repair.json"
LOG = "repairs.log"
LOCK = "repair.lock"
DRIFT_LIMIT = guest.CLOCK_TOLERANCE  # seconds; the "drift > 1 s"
LOCK_TIMEOUT = 30.0


@dataclass
class Step:
    what: str  # what was repaired, in words
    seconds: float  # how long it took
    ok: bool = True


@dataclass
class Repair:
    by: str  # "watcher" or the command's name
    reason: str  # why a repair was looked for
    at: str = ""  # UTC ISO time it started
    steps: List[Step] = field(default_factory=list)
    drift_before: Optional[float] = None
    drift_after: Optional[float] = None
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.steps)

    def summary(self) -> str:
        parts = [f"{s.what} in {s.seconds:.2f} s" + ("" if s.ok else " (failed)") for s in self.steps]
        return "; ".join(parts) or "nothing to repair"

    def to_dict(self) -> dict:
        return asdict(self)


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


@contextlib.contextmanager
def _locked(vm_dir: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """One repair of a VM at a time; a killed holder's lock dies with it (flock)."""
    paths.ensure_dir(vm_dir)
    fd = os.open(vm_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another repair of {vm_dir.name} held its lock for {timeout:g} s") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def repair(
    machine: Machine,
    session: "guest.GuestSession",
    endpoint: Tuple[str, int],
    by: str,
    reason: str,
    check_clock: bool = True,
    log: Callable[[str], None] = lambda _m: None,
) -> Repair:
    """Set the guest clock if it is off by more than DRIFT_LIMIT; remount each stale profile mount.

    Mounts that are not mounted at all are left alone: the user may have unmounted them.
    Problems become failed steps, never exceptions: a half-repaired VM is still usable.
    """
    vm_dir = paths.vm_dir(machine.name)
    result = Repair(by=by, reason=reason, at=_now_iso())
    started = time.monotonic()
    with _locked(vm_dir):
        # Mounts in a thread beside the clock: a remount is an SSH handshake, the clock two
        # round trips and a wait for the next whole second; neither needs the other.
        mounts = threading.Thread(target=_repair_mounts, args=(machine, endpoint, result.steps),
                                  name="repair mounts", daemon=True)  # fmt: skip
        mounts.start()
        if check_clock:
            _repair_clock(session, result)
        mounts.join()
    result.seconds = round(time.monotonic() - started, 3)
    for step in result.steps:
        step.seconds = round(step.seconds, 3)
    if result.changed:
        record(vm_dir, result)
        log(f"repaired {machine.name}: {result.summary()}")
    return result


def _repair_clock(session: guest.GuestSession, result: Repair) -> None:
    t0 = time.monotonic()
    try:
        result.drift_before = round(guest.clock_drift(session), 3)
        if abs(result.drift_before) > DRIFT_LIMIT:
            guest.set_guest_clock(session)
            result.drift_after = round(guest.clock_drift(session), 3)
            result.steps.append(Step(
                f"set the guest clock ({result.drift_before:+.2f} s -> {result.drift_after:+.2f} s)",
                time.monotonic() - t0,
            ))  # fmt: skip
    except B2dkitError as exc:
        result.steps.append(Step(f"clock not checked: {exc}", time.monotonic() - t0, ok=False))


def _repair_mounts(machine: Machine, endpoint: Tuple[str, int], steps: List[Step]) -> None:
    """Remount each profile mount that is mounted but does not answer (list.append is thread-safe)."""
    from . import lifecycle, sshfs

    host, port = endpoint
    made = {r.local_dir: r for r in machines.made_mounts(machine.name)}
    for m in machine.mounts:
        local = m.host.expanduser()
        current = sshfs.find_mount(local, check=False)
        if current is None:
            continue
        state, detail = sshfs.probe(local, timeout=1.0)
        if state == "alive":
            continue
        t0 = time.monotonic()
        user = current.source.split("@", 1)[0] or DEFAULT_USER  # remount it as it was
        record = made.get(str(current.local_dir))
        cache = record.cache if record is not None else m.cache  # its record is kept, so keep its mode
        try:
            sshfs.remount(host, port, lifecycle.key_path(machine.name),
                          lifecycle.known_hosts_path(machine.name), m.guest, local, user=user, cache=cache)
            steps.append(Step(f"remounted {local} ({detail})", time.monotonic() - t0))
        except B2dkitError as exc:
            steps.append(Step(f"could not remount {local}: {exc}", time.monotonic() - t0, ok=False))


def record(vm_dir: Path, result: Repair) -> None:
    """Append one line to repairs.log and keep the whole repair in last_repair.json."""
    line = f"{result.at} {result.by}: {result.reason}: {result.summary()} (total {result.seconds:.2f} s)\n"
    with open(vm_dir / LOG, "a", encoding="utf-8") as out:
        out.write(line)
    atomic.write_bytes(vm_dir / LAST, (json.dumps(result.to_dict(), indent=2) + "\n").encode(), mode=0o600)


def last(vm_dir: Path) -> Optional[dict]:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((Path(vm_dir) / LAST).read_text())
    return None


def forward_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if something accepts TCP on host:port (the hypervisor's forward listener is there)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, int(port)))
            return True
        except OSError:
            return False
