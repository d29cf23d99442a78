"""``cache: watched`` mounts: the kernel keeps names and attributes, and the VM says when they change.

sshfs cannot have both: a cache that may be 1 s old (``fresh``) makes every warm stat walk
ask sshfs again, and one the kernel keeps (``relaxed``) shows the VM's changes only after its
timeouts. Here the kernel keeps them WATCHED_KERNEL s, and a process of ours drops each one the
moment the VM changes it: it holds the mount's ``/dev/fuse`` descriptor (fusermount3 hands it over,
sshfs then serves it: ``sshfs …  /dev/fd/N``), reads the guest's ``inotifywait -m -r`` over SSH,
and writes FUSE_NOTIFY_INVAL_ENTRY for each changed name into that descriptor, which any holder
of it may do. sshfs's own cache stays at ``dcache_timeout=0`` (to the end of the wall second it
filled in), so each name is dropped twice: when the event comes, and again just after that
second, since a stat in between may have handed the kernel sshfs's older copy.

The supervisor (``python -m b2dkit.mountfeed``) starts the feed, mounts, prints ``ready`` and
then runs sshfs as its child: it ends when the mount ends. Its files, in the VM's folder:
``feed-<id>.pid`` and ``feed-<id>.log``. If the feed stops, it is started again; until then
changes show within the kernel's timeout (WATCHED_BOUND s), and ``vm.mounts`` says so.
Linux only (macFUSE hands out no descriptor); the guest needs inotifywait (b2dkit's guest has it).
"""

import argparse
import contextlib
import hashlib
import math
import os
import re
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from . import guest, paths
from .errors import MountError
from .paths import StrPath

WATCHED_KERNEL = 10  # s the kernel keeps names, attributes and "no such file" between events
WATCHED_BOUND = 1 + WATCHED_KERNEL  # how stale a change can be while the feed is down
READY_TIMEOUT = 90.0  # setting up watches of a big tree under TCG takes a while
MAX_WATCHES = 524288  # the VM's inotify limit for the feed (a default 8192 ends at a big node_modules)
SECOND_PASS_DELAY = 0.02  # after the wall second sshfs's copy was stamped with
MODULE = "b2dkit.mountfeed"

# include/uapi/linux/fuse.h
FUSE_NOTIFY_INVAL_ENTRY = 3
_OUT_HEADER = struct.Struct("<IiQ")  # len, error (= the notify code), unique (= 0)
_INVAL_ENTRY = struct.Struct("<QII")  # parent nodeid, namelen, flags
EVENTS = "modify,attrib,close_write,move,create,delete"  # not open/access: sshfs's own reads make those


def inval_entry_message(parent: int, name: str) -> bytes:
    """One FUSE_NOTIFY_INVAL_ENTRY: the kernel forgets ``name`` in directory ``parent`` (a nodeid,
    which high-level libfuse also reports as st_ino), with its attributes."""
    raw = os.fsencode(name)
    body = _INVAL_ENTRY.pack(parent, len(raw), 0) + raw + b"\0"
    return _OUT_HEADER.pack(_OUT_HEADER.size + len(body), FUSE_NOTIFY_INVAL_ENTRY, 0) + body


def feed_command(remote_dir: str) -> str:
    """The guest's side: raise its watch limit, then one NUL-ended path per change, recursively."""
    q = guest.ssh_quote(remote_dir)
    return (f"sudo -n sh -c 'echo {MAX_WATCHES} > /proc/sys/fs/inotify/max_user_watches' 2>/dev/null; "
            f"exec inotifywait -m -r -e {EVENTS} --no-newline --format '%w%f%0' {q}")  # fmt: skip


def split_events(buffer: bytes) -> Tuple[List[str], bytes]:
    """Complete NUL-ended paths in ``buffer`` and the incomplete rest."""
    *done, rest = buffer.split(b"\0")
    return [os.fsdecode(p) for p in done if p], rest


def host_names(path: str, remote_dir: str, local_dir: Path) -> List[Tuple[Path, str]]:
    """(host dir, name) the kernel may hold for a changed guest ``path``: the name itself, and its
    directory's own name in the directory above (its mtime and link count changed too)."""
    root = remote_dir.rstrip("/") or "/"
    if path.rstrip("/") == root or not path.startswith(root.rstrip("/") + "/"):
        return []
    rel = Path(path[len(root.rstrip("/")) + 1:].rstrip("/"))
    out = [(local_dir / rel.parent, rel.name)]
    if rel.parent != Path("."):
        out.append((local_dir / rel.parent.parent, rel.parent.name))
    return out


def why_not_started(said: str, timeout: float) -> str:
    """One line for a feed that ended before its watches were set up, from what it said."""
    if re.search(r"inotifywait: (command )?not found", said):
        return ("the VM has no inotifywait, which cache: watched needs (b2dkit's guest has it, boot2docker "
                "does not); use cache: fresh or relaxed")  # fmt: skip
    if "No such file or directory" in said:
        return ("the guest dir does not exist; add it to the profile's persistent dirs and start the VM again")
    lines = [ln.strip() for ln in said.splitlines() if ln.strip() and "Setting up watches" not in ln]
    return f"the VM's change feed did not start: {lines[-1] if lines else f'no answer within {timeout:g} s'}"


class Invalidator:
    """Drops names from the kernel's cache of one mount: now, and again after sshfs's second."""

    def __init__(self, fd: int, remote_dir: str, local_dir: Path) -> None:
        self.fd, self.remote_dir, self.local_dir = fd, remote_dir, local_dir
        self.later: Dict[Tuple[Path, str], float] = {}
        self.count = 0

    def changed(self, guest_paths: Iterable[str], now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        due = math.floor(now) + 1 + SECOND_PASS_DELAY
        for path in guest_paths:
            for key in host_names(path, self.remote_dir, self.local_dir):
                self._drop(*key)
                self.later[key] = due

    def next_due(self) -> Optional[float]:
        return min(self.later.values()) if self.later else None

    def run_due(self, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        for key, due in list(self.later.items()):
            if due <= now:
                del self.later[key]
                self._drop(*key)

    def _drop(self, directory: Path, name: str) -> None:
        try:
            parent = os.lstat(directory).st_ino  # the kernel's own (cached) answer: its nodeid
            os.write(self.fd, inval_entry_message(parent, name))
            self.count += 1
        except OSError:  # ENOENT: the kernel holds no such name (or the dir went): nothing to drop
            pass


# -- files and control from b2dkit commands ----------------------------------------------------


def feed_id(local_dir: StrPath) -> str:
    return hashlib.sha1(os.fsencode(str(local_dir))).hexdigest()[:10]


def files(vm_dir: Path, local_dir: StrPath) -> Tuple[Path, Path]:
    ident = feed_id(local_dir)
    return vm_dir / f"feed-{ident}.pid", vm_dir / f"feed-{ident}.log"


def running(vm_dir: Path, local_dir: StrPath) -> bool:
    """Does the supervisor of the mount on ``local_dir`` run (its pid file names a live one of ours)?"""
    pidfile, _ = files(vm_dir, local_dir)
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return MODULE.encode() in cmdline and os.fsencode(str(local_dir)) in cmdline


def start(vm_dir: Path, host: str, port: int, key_path: StrPath, known_hosts_path: StrPath, remote_dir: str,
          local_dir: Path, user: str) -> None:
    """Mount through the supervisor; returns once the mount answers, or MountError with its reason."""
    if not sys.platform.startswith("linux"):
        raise MountError("cache: watched needs Linux's FUSE (it hands b2dkit the mount's descriptor); "
                         "use cache: fresh or relaxed on this computer")  # fmt: skip
    paths.ensure_dir(vm_dir)
    _, log = files(vm_dir, local_dir)
    argv = [sys.executable, "-m", MODULE, "--vm-dir", str(vm_dir), "--host", host, "--port", str(port),
            "--key", str(key_path), "--known-hosts", str(known_hosts_path), "--user", user,
            "--remote", remote_dir, "--local", str(local_dir)]  # fmt: skip
    with open(log, "ab") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                start_new_session=True, close_fds=True)  # fmt: skip
    assert proc.stdout is not None
    line = b""
    deadline = time.monotonic() + READY_TIMEOUT + 30
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        line += chunk
    proc.stdout.close()
    text = line.decode(errors="replace").strip()
    if text == "ready":
        return
    if proc.poll() is None:
        proc.kill()
    raise MountError(text.removeprefix("error: ") if text.startswith("error: ") else
                     f"the watched mount of {remote_dir} on {local_dir} did not start; see {log}")  # fmt: skip


# -- the supervisor ----------------------------------------------------------------------------


def _log(message: str) -> None:
    sys.stderr.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + message + "\n")
    sys.stderr.flush()


class _Feed:
    """The guest's inotifywait over ssh: started, read, restarted."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.proc: Optional[subprocess.Popen] = None
        self.buffer = b""

    def start(self, timeout: float) -> Optional[str]:
        """None once the guest's watches are set up, else why not."""
        a = self.args
        argv = guest.ssh_argv(a.host, a.port, a.key, a.known_hosts, command=feed_command(a.remote), user=a.user)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        said = b""
        deadline = time.monotonic() + timeout
        while b"Watches established" not in said:
            ready, _, _ = select.select([self.proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self.proc.stderr.fileno(), 4096) if ready else b""
            if not chunk:
                self.stop()
                return why_not_started(said.decode(errors="replace"), timeout)
            said += chunk
        return None

    def fileno(self) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def read(self) -> Optional[List[str]]:
        """Changed guest paths; None once the feed ended."""
        chunk = os.read(self.fileno(), 65536)
        if not chunk:
            return None
        done, self.buffer = split_events(self.buffer + chunk)
        return done

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.kill()
            self.proc.wait()
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
            self.proc = None
            self.buffer = b""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=MODULE)
    for opt in ("--vm-dir", "--host", "--key", "--known-hosts", "--user", "--remote", "--local"):
        parser.add_argument(opt, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    from . import sshfs

    local = Path(args.local)
    pidfile, _ = files(Path(args.vm_dir), local)
    feed = _Feed(args)

    def fail(message: str) -> int:
        _log(message)
        with contextlib.suppress(OSError):
            os.write(1, f"error: {message}\n".encode())
        feed.stop()
        return 1

    why = feed.start(READY_TIMEOUT)
    if why:
        return fail(why)
    source = sshfs.source_of(args.host, args.remote, args.user)
    try:
        fd = sshfs.fuse_fd(local, source)
        child, err_path = sshfs.serve(fd, args.host, args.port, args.key, args.known_hosts, args.remote, args.user)
    except MountError as exc:
        return fail(str(exc))
    deadline = time.monotonic() + sshfs.MOUNT_TIMEOUT
    while sshfs.probe(local)[0] != "alive":
        if child.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(MountError):
                sshfs.unmount(local, lazy=True)
            said = [ln for ln in Path(err_path).read_text(errors="replace").splitlines() if ln.strip()]
            return fail(f"cannot mount {source} on {local}: {said[-1] if said else 'sshfs failed'}")
        time.sleep(0.05)
    pidfile.write_text(f"{os.getpid()}\n")
    _log(f"mounted {source} on {local}, sshfs pid {child.pid}; kernel keeps names {WATCHED_KERNEL} s between events")
    os.write(1, b"ready\n")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the starter has read its line: nothing more goes there
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    drop = Invalidator(fd, args.remote, local)
    retry_at: Optional[float] = None
    try:
        while child.poll() is None:
            if feed.proc is None and retry_at is not None and time.monotonic() >= retry_at:
                why = feed.start(READY_TIMEOUT)
                retry_at = None if not why else time.monotonic() + 5
                _log(why or "change feed started again")
            due = drop.next_due()
            wait = 0.5 if due is None else max(0.0, min(0.5, due - time.time()))
            ready, _, _ = select.select([feed] if feed.proc is not None else [], [], [], wait)
            if ready:
                changed = feed.read()
                if changed is None:
                    _log(f"change feed ended (ssh exit {feed.proc.wait() if feed.proc else '?'}); "
                         f"changes show within {WATCHED_BOUND} s until it is back")  # fmt: skip
                    feed.stop()
                    retry_at = time.monotonic() + 1
                else:
                    drop.changed(changed)
            drop.run_due()
    finally:
        feed.stop()
        with contextlib.suppress(OSError):
            if pidfile.read_text().strip() == str(os.getpid()):
                pidfile.unlink()
        _log(f"mount on {local} ended (sshfs exit {child.poll()}); {drop.count} names dropped in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
