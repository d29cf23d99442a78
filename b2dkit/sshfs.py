"""sshfs mounts of guest dirs on the host: the one place that runs sshfs and fusermount.

The seed mounts ``/mnt/sda1/dev`` of the VM at ``~/workspace/dev`` so code is edited
on the laptop and lives on the VM's persistent disk. We mount with the VM's own key
and pinned known_hosts (no password, no agent, no ~/.ssh/config), with ``reconnect``
and keep-alives; after a laptop sleep or a VM reboot a mount can still be listed but
hang or fail with ENOTCONN, so ``list_mounts`` probes each one and ``remount`` repairs
stale ones.
"""

import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from . import guest, install
from .boot2docker import DEFAULT_USER
from .errors import GuestError, InternalError, MountError, ToolMissing
from .paths import StrPath

PROBE_TIMEOUT = 2.0
MOUNT_TIMEOUT = 30.0

_MAC_FUSE_TYPES = ("macfuse", "osxfuse", "fusefs")


@dataclass(frozen=True)
class MountInfo:
    source: str  # user@host:/guest/dir
    local_dir: Path
    state: str  # "alive" | "stale"
    detail: str = ""  # why stale, in a few words

    @property
    def alive(self) -> bool:
        return self.state == "alive"


# -- tools -----------------------------------------------------------------------------------


def require_sshfs() -> str:
    """Path of sshfs, or ToolMissing with the install command for this platform."""
    path = shutil.which("sshfs")
    if path is None:
        raise ToolMissing(f"sshfs is not installed; {install.hint('sshfs')}")
    if sys.platform.startswith("linux") and not os.path.exists("/dev/fuse"):
        raise ToolMissing(
            "FUSE is not available (/dev/fuse is missing); load it with "
            f"`{install.privileged_text('modprobe', 'fuse')}` or {install.hint('fuse')}"
        )
    return path


def _run(argv: List[str], timeout: Optional[float] = None) -> Tuple[int, str, str]:
    """Every sshfs, fusermount and mount run: (exit status, stdout, stderr).

    Output goes to temp files, not pipes: sshfs's ssh child keeps a pipe open for the
    mount's whole life, and we would wait for its EOF forever.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=timeout)
        except FileNotFoundError:
            raise ToolMissing(f"{argv[0]} is not installed; {install.hint('sshfs')}") from None
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")


def _unmount_argv(local_dir: Path, lazy: bool) -> List[str]:
    if sys.platform == "darwin":
        return ["umount", "-f", str(local_dir)] if lazy else ["umount", str(local_dir)]
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise ToolMissing(f"fusermount is not installed; {install.hint('fuse')}")
    return [tool, "-uz" if lazy else "-u", str(local_dir)]


# -- command line ----------------------------------------------------------------------------


def _opt(value: StrPath) -> str:
    """One value inside sshfs ``-o``: FUSE splits on commas, ssh on spaces (macOS paths have them)."""
    return guest.ssh_quote(value).replace("\\", "\\\\").replace(",", "\\,")


def source_of(host: str, remote_dir: str, user: str = DEFAULT_USER) -> str:
    return f"{user}@{host}:{remote_dir}"


# Names, attributes and listings of a ``cache: relaxed`` mount (the profile key): sshfs keeps
# them RELAXED_SSHFS s (to the end of the second it fetched them in, + that many), the kernel
# RELAXED_KERNEL s more on top of what sshfs hands it, so a change made in the guest shows on
# the host within RELAXED_BOUND s (a listing, which the kernel does not keep, within RELAXED_SSHFS + 1).
RELAXED_SSHFS = 9
RELAXED_KERNEL = 10
RELAXED_BOUND = RELAXED_SSHFS + 1 + RELAXED_KERNEL


def cache_note(cache: str) -> str:
    """What a mount's cache mode means to its user; said only of a relaxed mount: the default needs no words."""
    return "" if cache == "fresh" else f" (cache {cache}: changes in the VM seen within {RELAXED_BOUND} s)"


_CACHE_OPTIONS = {
    # A change made in the guest shows on the host within a second (tests/test_sshfs.py).
    # sshfs's cache (names, and attributes filled by each directory listing) stamps entries
    # in whole seconds and keeps them while now <= stamp + timeout: 0 means "until the end
    # of this second" (<= 1 s), its default 20 means up to 21 s. So the kernel must not keep
    # attributes on top (attr_timeout=0: every stat, open and fstat asks sshfs, which answers
    # from that cache, no round trip): 1 fails tests/sshfsrule.py's worst moment. The kernel keeps
    # names for a second (entry_timeout=1): high-level FUSE is path-based, so a cached name
    # still gets fresh attributes, contents and ENOENT from sshfs; it only spares the lookup
    # of every path component on each stat (a stat walk: 4 requests to sshfs per file -> 1-2).
    # Without sshfs's cache (dir_cache=no) every name costs a round trip: du and stat walks
    # about 10x slower under TCG (benchmarks/day.py, docs/architecture.md).
    "fresh": ["dcache_timeout=0", "entry_timeout=1", "attr_timeout=0"],
    # Speed over freshness, asked for per mount: a warm walk within RELAXED_KERNEL s is answered
    # by the kernel alone (names, attributes and "no such file" all kept), never by sshfs; an
    # older one by sshfs's cache. The bound is RELAXED_BOUND s (see above; tests/test_sshfs.py).
    # No kernel_cache/auto_cache: each open still drops the kernel's pages, so a reopened file
    # reads the guest's bytes as they are now (up to the size the kernel knows, within the bound);
    # SFTP mtimes have whole seconds, so auto_cache would keep stale pages of a same-size change
    # made within one second for good, which no time bound covers.
    "relaxed": [f"dcache_timeout={RELAXED_SSHFS}", f"entry_timeout={RELAXED_KERNEL}",
                f"attr_timeout={RELAXED_KERNEL}", f"negative_timeout={RELAXED_KERNEL}"],
}


def sshfs_argv(
    host: str,
    port: int,
    key_path: StrPath,
    known_hosts_path: StrPath,
    remote_dir: str,
    local_dir: StrPath,
    user: str = DEFAULT_USER,
    cache: str = "fresh",
) -> List[str]:
    """The sshfs command line; ``cache`` is the profile's mode (profile.MOUNT_CACHES)."""
    if cache not in _CACHE_OPTIONS:
        raise InternalError(f"unknown sshfs cache mode {cache!r}")
    options = [
        f"IdentityFile={_opt(key_path)}",
        *guest.ssh_options(known_hosts_path, quote=_opt),
        "ConnectTimeout=10",
        "reconnect",
        "ServerAliveInterval=15",
        "ServerAliveCountMax=3",
        "idmap=user",  # files of the guest's docker user show up as the laptop user's
        *_CACHE_OPTIONS[cache],
    ]
    return [
        "sshfs", source_of(host, remote_dir, user), str(local_dir),
        "-p", str(int(port)),
        "-F", "/dev/null",  # the user's ~/.ssh/config must not redirect or re-key this VM
        "-o", ",".join(options),
    ]  # fmt: skip


# -- listing ---------------------------------------------------------------------------------


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_proc_mounts(text: str) -> List[Tuple[str, Path]]:
    """(source, mount point) of every sshfs entry in /proc/self/mounts text."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "fuse.sshfs":
            found.append((_unescape(fields[0]), Path(_unescape(fields[1]))))
    return found


def parse_macos_mount(text: str) -> List[Tuple[str, Path]]:
    """(source, mount point) of every sshfs entry in macOS ``mount`` output."""
    found = []
    for line in text.splitlines():
        match = re.match(r"^(?P<src>\S+@\S+:.*) on (?P<dir>/.*) \((?P<type>[^,)]+)(?:, [^)]*)?\)$", line)
        if match and match.group("type") in _MAC_FUSE_TYPES:
            found.append((match.group("src"), Path(match.group("dir"))))
    return found


def _raw_mounts() -> List[Tuple[str, Path]]:
    if sys.platform == "darwin":
        return parse_macos_mount(_run(["mount"])[1])
    try:
        return parse_proc_mounts(Path("/proc/self/mounts").read_text())
    except OSError:
        return []


def probe(local_dir: StrPath, timeout: float = PROBE_TIMEOUT) -> Tuple[str, str]:
    """("alive", "") or ("stale", why): ask the server through the mount, in a thread.

    ``statvfs`` is used because sshfs answers it from the server every time (stat and
    listings may come from its cache); a dead mount fails with ENOTCONN or EIO, a hung
    one blocks -- the thread is abandoned after ``timeout`` rather than hanging us.
    """
    outcome: Dict[str, Tuple[str, str]] = {}

    def check() -> None:
        try:
            os.statvfs(local_dir)
            outcome["state"] = ("alive", "")
        except OSError as exc:
            reason = "not connected" if exc.errno == errno.ENOTCONN else (exc.strerror or str(exc)).lower()
            outcome["state"] = ("stale", reason)

    worker = threading.Thread(target=check, daemon=True, name=f"probe {local_dir}")
    worker.start()
    worker.join(timeout)
    return outcome.get("state", ("stale", f"no answer within {timeout:g} s"))


def list_mounts(check: bool = True, timeout: float = PROBE_TIMEOUT) -> List[MountInfo]:
    """Every sshfs mount on this host, each probed for life unless ``check`` is False."""
    mounts = []
    for source, local in _raw_mounts():
        state, detail = probe(local, timeout) if check else ("alive", "not checked")
        mounts.append(MountInfo(source, local, state, detail))
    return mounts


def find_mount(local_dir: StrPath, check: bool = True) -> Optional[MountInfo]:
    target = Path(os.path.realpath(Path(local_dir).expanduser()))
    for source, local in _raw_mounts():
        if local == target:
            state, detail = probe(local) if check else ("alive", "not checked")
            return MountInfo(source, local, state, detail)
    return None


# -- mount / unmount -------------------------------------------------------------------------


def mount(host: str, port: int, key_path: StrPath, known_hosts_path: StrPath, remote_dir: str, local_dir: StrPath,
          user: str = DEFAULT_USER, cache: str = "fresh") -> str:
    """Mount guest ``remote_dir`` at host ``local_dir``; "mounted" or "already mounted" (in
    whatever cache mode: the mount table does not say; lifecycle.mount_changes knows from its record).

    The host dir is created if needed; a non-empty one is refused, because mounting over
    it would hide its files (and an editor saving there would write into the void).
    """
    require_sshfs()
    local = Path(local_dir).expanduser()
    source = source_of(host, remote_dir, user)
    existing = find_mount(local)
    if existing is not None:
        if existing.source != source:
            raise MountError(
                f"{local} is already mounted from {existing.source}; unmount it first with `b2dkit vm.unmount`"
            )
        if existing.alive:
            return "already mounted"
        raise MountError(
            f"{local} is a stale mount of {source} ({existing.detail}); repair it with `b2dkit vm.mount --remount`"
        )
    if local.exists() and not local.is_dir():
        raise MountError(f"{local} exists and is not a directory; choose another mount point")
    if local.is_dir() and any(local.iterdir()):
        raise MountError(f"{local} is not empty; move its files away or choose another mount point")
    try:
        local.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MountError(f"cannot create the mount point {local}: {exc.strerror or exc}; "
                         "choose a host dir you can write to") from None
    if not guest.pinned_keys(known_hosts_path, host, port):
        _diagnose(host, port, key_path, known_hosts_path, user, source, local)  # pins on first contact
    argv = sshfs_argv(host, port, key_path, known_hosts_path, remote_dir, local, user, cache)
    try:
        returncode, _, stderr = _run(argv, timeout=MOUNT_TIMEOUT)
    except subprocess.TimeoutExpired:
        _lazy_unmount_quietly(local)
        raise MountError(f"sshfs did not mount {source} on {local} within {MOUNT_TIMEOUT:g} s; "
                         "check the VM with `b2dkit vm.status`") from None  # fmt: skip
    if returncode != 0:
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        if any("No such file or directory" in ln for ln in lines):
            raise MountError(
                f"cannot mount {source} on {local}: the guest dir does not exist; "
                "add it to the profile's persistent dirs and start the VM again"
            )
        # sshfs hides ssh's own message ("read: Connection reset by peer"): ask over SSH why
        _diagnose(host, port, key_path, known_hosts_path, user, source, local)
        raise MountError(f"cannot mount {source} on {local}: {lines[-1] if lines else 'sshfs failed'}")
    return "mounted"


def _diagnose(
    host: str, port: int, key_path: StrPath, known_hosts_path: StrPath, user: str, source: str, local: Path
) -> None:
    """Raise MountError with the SSH-level reason (host key, key refused, VM down), if there is one."""
    try:
        guest.connect(host, port, key_path, known_hosts_path, user=user, timeout=5, banner_timeout=5).close()
    except GuestError as exc:
        raise MountError(f"cannot mount {source} on {local}: {exc}") from None


def unmount(local_dir: StrPath, lazy: bool = False) -> bool:
    """Unmount an sshfs mount; False if nothing was mounted there (so ``vm.stop`` may always call it)."""
    local = Path(local_dir).expanduser()
    if find_mount(local, check=False) is None:
        return False
    returncode, _, stderr = _run(_unmount_argv(local, lazy))
    if returncode != 0:
        detail = (stderr.strip().splitlines() or ["unknown error"])[-1]
        if "busy" in detail.lower():
            raise MountError(f"{local} is busy (a shell or editor has it open); close it and retry")
        raise MountError(f"cannot unmount {local}: {detail}")
    return True


def _lazy_unmount_quietly(local: Path) -> None:
    try:
        _run(_unmount_argv(local, lazy=True))
    except ToolMissing:
        pass


def remount(host: str, port: int, key_path: StrPath, known_hosts_path: StrPath, remote_dir: str, local_dir: StrPath,
            user: str = DEFAULT_USER, cache: str = "fresh") -> str:
    """Make the mount work again after sleep or a VM reboot: "alive", "repaired" or "mounted"."""
    require_sshfs()
    local = Path(local_dir).expanduser()
    source = source_of(host, remote_dir, user)
    existing = find_mount(local)
    if existing is not None and existing.source != source:
        raise MountError(
            f"{local} is mounted from {existing.source}, not {source}; unmount it first with `b2dkit vm.unmount`"
        )
    if existing is not None and existing.alive:
        return "alive"
    if existing is not None:
        # lazy: a stale FUSE mount cannot answer a normal unmount's checks
        _run(_unmount_argv(local, lazy=True))
        if find_mount(local, check=False) is not None:
            raise MountError(f"cannot detach the stale mount at {local}; try `fusermount -uz {local}`")
        mount(host, port, key_path, known_hosts_path, remote_dir, local, user, cache)
        return "repaired"
    return mount(host, port, key_path, known_hosts_path, remote_dir, local, user, cache)
