"""Talk to a running guest over SSH: wait for it, pin its host key, run commands, set it up.

Both providers forward a host port to the guest's sshd, so everything here takes
``host``/``port`` and works the same for VirtualBox and QEMU. Authentication is the
VM's own key only (never an agent, never ``~/.ssh``, never a password) and the guest's
host key is pinned in the VM's own ``known_hosts`` on first contact: a different key
later is an error, because silently trusting it would hand our key and files to
whatever now answers on that port.
"""

import datetime
import logging
import posixpath
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Union

import paramiko

from . import atomic, install
from .boot2docker import DEFAULT_USER, PERSISTENT_ROOT
from .errors import GuestError, InputError, ToolMissing

# paramiko logs every failed banner read with a traceback from its transport thread; while we
# poll a booting guest those are expected. Our own errors say what went wrong in one line.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False

# Setting the clock lands within a few tenths of a second; closer than this is left alone, so a
# re-run on a healthy VM changes nothing.
CLOCK_TOLERANCE = 1.0

Command = Union[str, Sequence[str]]


@dataclass(frozen=True)
class Result:
    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass
class SetupReport:
    created: List[str] = field(default_factory=list)  # persistent dirs made now
    fixed: List[str] = field(default_factory=list)  # existed with the wrong owner; chowned
    present: List[str] = field(default_factory=list)  # already there and right
    clock_set: bool = False
    drift: Optional[float] = None  # guest - host seconds, measured after set-up


# -- host key pinning ------------------------------------------------------------------------


def host_label(host: str, port: int) -> str:
    """The host name as OpenSSH writes it in known_hosts (``[host]:port`` unless port 22)."""
    return host if int(port) == 22 else f"[{host}]:{int(port)}"


def pinned_keys(known_hosts_path, host: str, port: int) -> List[str]:
    """``"<type> <base64>"`` of each key recorded for host:port (normally one)."""
    label = host_label(host, port)
    rows = _known_host_lines(known_hosts_path)
    return [f"{parts[1]} {parts[2]}" for parts in rows if label in parts[0].split(",")]


def forget_host_key(known_hosts_path, host: str, port: int) -> bool:
    """Drop the pinned key for host:port (after the VM was recreated); True if one was there."""
    path = Path(known_hosts_path)
    if not path.exists():
        return False
    label = host_label(host, port)
    lines = path.read_text().splitlines()
    kept = [ln for ln in lines if not (ln.split() and label in ln.split()[0].split(","))]
    if len(kept) == len(lines):
        return False
    atomic.write_bytes(path, "".join(ln + "\n" for ln in kept).encode(), mode=0o600)
    return True


def _known_host_lines(known_hosts_path):
    path = Path(known_hosts_path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and not parts[0].startswith("#"):
            rows.append(parts)
    return rows


def _record_host_key(known_hosts_path, host, port, key: paramiko.PKey):
    path = Path(known_hosts_path)
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    line = f"{host_label(host, port)} {key.get_name()} {key.get_base64()}\n"
    atomic.write_bytes(path, (old + line).encode(), mode=0o600)


def _changed(known_hosts_path, host, port) -> GuestError:
    vm = Path(known_hosts_path).parent.name
    return GuestError(
        f"the SSH host key of VM {vm!r} at {host_label(host, port)} changed since it was pinned in "
        f"{known_hosts_path}; if you recreated the VM, forget the old key (delete that file) and retry, "
        "otherwise something else is answering on that port: do not connect"
    )


class _PinOnFirstContact(paramiko.MissingHostKeyPolicy):
    """Record the first key we see; paramiko calls this only when no pinned key matched."""

    def __init__(self, known_hosts_path, host, port):
        self.known_hosts_path, self.host, self.port = known_hosts_path, host, port

    def missing_host_key(self, client, hostname, key):
        if pinned_keys(self.known_hosts_path, self.host, self.port):
            raise _changed(self.known_hosts_path, self.host, self.port)  # a key of another type
        _record_host_key(self.known_hosts_path, self.host, self.port, key)


# -- sessions --------------------------------------------------------------------------------


class GuestSession:
    """An authenticated SSH connection to the guest; ``run`` commands over it."""

    def __init__(self, client: paramiko.SSHClient, host: str, port: int, user: str):
        self.client, self.host, self.port, self.user = client, host, port, user

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.client.close()

    def run(self, cmd: Command, check: bool = True, timeout: float = 60.0) -> Result:
        """Run ``cmd`` in the guest's shell.

        A list is quoted with ``shlex.join`` (the remote side only takes a string, so
        this is the one place where arguments become shell text); a string is passed as
        shell code and must not contain unquoted user input.
        """
        text = cmd if isinstance(cmd, str) else shlex.join(str(a) for a in cmd)
        deadline = time.monotonic() + timeout
        try:
            transport = self.client.get_transport()
            if transport is None or not transport.is_active():
                raise EOFError("connection closed")
            chan = transport.open_session(timeout=timeout)
            chan.exec_command(text)
            out, err = bytearray(), bytearray()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    chan.close()
                    raise GuestError(f"command `{text}` did not finish in the guest within {timeout:g} s")
                select.select([chan], [], [], min(left, 0.5))
                while chan.recv_ready():
                    out += chan.recv(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                if chan.eof_received and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
            if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
                chan.close()
                raise GuestError(f"command `{text}` sent no exit status within {timeout:g} s")
            code = chan.recv_exit_status()
            chan.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise GuestError(
                f"lost the SSH connection to the guest at {self.host}:{self.port} while running `{text}`"
                f" ({_describe(exc)}); check the VM is still running"
            ) from None
        result = Result(text, code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
        if check and not result.ok:
            detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise GuestError(
                f"`{text}` failed in the guest with exit code {code}" + (f": {detail[-1]}" if detail else "")
            )
        return result


def connect(
    host: str,
    port: int,
    key_path,
    known_hosts_path,
    user: str = DEFAULT_USER,
    timeout: float = 10.0,
    banner_timeout: float = 10.0,
) -> GuestSession:
    """Open an SSH session with the VM's key, pinning or checking the guest's host key."""
    try:
        return _open(host, port, key_path, known_hosts_path, user, timeout, banner_timeout)
    except paramiko.AuthenticationException:
        raise GuestError(
            f"the guest at {host}:{port} refused the VM's key {key_path} for user {user!r}; "
            "the persistent disk may carry another VM's key: recreate the disk or put the key back"
        ) from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise GuestError(
            f"cannot reach SSH at {host}:{port} ({_describe(exc)}); is the VM running? try `b2dkit vm.status`"
        ) from None


def _open(host, port, key_path, known_hosts_path, user, timeout, banner_timeout, sock=None) -> GuestSession:
    key_path = Path(key_path)
    if not key_path.is_file():
        raise GuestError(f"the VM's SSH key {key_path} is missing; recreate the VM to make a new one")
    client = paramiko.SSHClient()
    keys = client.get_host_keys()  # in memory only: paramiko never writes our known_hosts
    if Path(known_hosts_path).exists():
        keys.load(str(known_hosts_path))
    client.set_missing_host_key_policy(_PinOnFirstContact(known_hosts_path, host, port))
    try:
        client.connect(
            host,
            port=int(port),
            username=user,
            key_filename=str(key_path),
            look_for_keys=False,
            allow_agent=False,
            timeout=timeout,
            banner_timeout=banner_timeout,
            auth_timeout=max(timeout, 10.0),
            sock=sock,
        )
    except paramiko.BadHostKeyException:
        client.close()
        raise _changed(known_hosts_path, host, port) from None
    except BaseException:
        client.close()
        if sock is not None:
            sock.close()
        raise
    return GuestSession(client, host, int(port), user)


# A new TCP try this often while the guest boots; older tries stay open meanwhile, so a try
# stuck in QEMU's NAT (SYN sent before the guest had an IP) never delays the next one, and a
# slow banner (a TCG guest forking sshd) is still caught by the try that asked for it.
PROBE_EVERY = 0.5
PROBE_PATIENCE = 4.0  # how long one try may wait for the banner before it is dropped
HANDSHAKE_TIMEOUT = 10.0  # key exchange + auth once the banner is there: seconds under TCG


def _await_banner(host: str, port: int, deadline: float, check=None):
    """(socket whose server has sent ``SSH-``, peeked so paramiko still reads it, or None; last problem)."""
    pending = {}  # socket -> when to give up on it
    last = "no answer yet"
    next_try = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                return None, last
            if now >= next_try:
                next_try = now + PROBE_EVERY
                if check is not None:
                    check()  # raises when waiting is pointless (the hypervisor halted the guest)
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.settimeout(min(PROBE_EVERY, deadline - now))
                try:
                    sock.connect((host, int(port)))
                    pending[sock] = now + PROBE_PATIENCE
                except OSError as exc:
                    sock.close()
                    last = _describe(exc)
            for sock, give_up in list(pending.items()):
                if now >= give_up:
                    del pending[sock]
                    sock.close()
                    last = "no SSH banner (timed out)"
            wait = max(0.0, min(next_try, deadline) - time.monotonic())
            if not pending:
                time.sleep(wait)
                continue
            for sock in select.select(list(pending), [], [], wait)[0]:
                try:
                    head = sock.recv(4, socket.MSG_PEEK)
                except OSError as exc:
                    head, last = b"", _describe(exc)
                if head == b"SSH-":
                    del pending[sock]
                    sock.settimeout(None)
                    return sock, last
                if len(head) < 4 and b"SSH-".startswith(head) and head:
                    continue  # the rest of the banner is on its way
                del pending[sock]
                sock.close()
                last = f"not an SSH server (it sent {head!r})" if head else "connection closed before the SSH banner"
    finally:
        for sock in pending:
            sock.close()


def wait_for_session(
    host: str,
    port: int,
    key_path,
    known_hosts_path,
    timeout: float = 180.0,
    log_path=None,
    poll: float = 0.5,
    user: str = DEFAULT_USER,
    check=None,
) -> GuestSession:
    """The first session the booting guest accepts, or GuestError pointing at the log.

    ``check()`` runs about every probe and may raise to stop waiting (a guest the hypervisor halted).

    Raw TCP tries watch for the server's banner first (see ``PROBE_EVERY``): before the
    guest has an IP, QEMU's user-mode NAT accepts the connection and then never answers,
    and a paramiko try with a short timeout would also cut off a slow but working key
    exchange. The connection that shows the banner is the one paramiko authenticates on,
    and the caller keeps using it: under TCG every extra handshake costs a few tenths of a
    second. ``poll`` is the pause after a failed handshake only.
    """
    deadline = time.monotonic() + timeout
    while True:
        sock, last = _await_banner(host, port, deadline, check)
        if sock is not None:
            left = min(HANDSHAKE_TIMEOUT, max(deadline - time.monotonic(), 2.0))
            try:
                return _open(host, port, key_path, known_hosts_path, user, left, left, sock=sock)
            except paramiko.AuthenticationException:
                last = f"the guest refused the VM's key for user {user!r}"
            except (paramiko.SSHException, OSError, EOFError) as exc:
                last = _describe(exc)
        left = deadline - time.monotonic()
        if left <= 0:
            where = f"see the guest's console log {log_path}; " if log_path else ""
            raise GuestError(
                f"the guest's SSH at {host}:{port} was not ready within {timeout:g} s (last try: {last}); "
                f"{where}check the VM is running with `b2dkit vm.status`, or start it again"
            )
        time.sleep(min(poll, left))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (paramiko.ssh_exception.NoValidConnectionsError, ConnectionRefusedError)):
        return "connection refused"
    if isinstance(exc, socket.timeout):
        return "timed out"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:160]


# -- guest set-up ----------------------------------------------------------------------------


def persistent_path(path: str, root: str = PERSISTENT_ROOT) -> str:
    """Normalise a profile's persistent dir; relative ones are taken under ``root``.

    Only ``root`` survives a reboot, so anything outside it would be created and then lost.
    """
    if any(c in path for c in "\n\0|"):
        raise InputError(f"persistent dir {path!r} contains a newline, NUL or '|'; rename it")
    full = posixpath.normpath(posixpath.join(root, path))
    if not full.startswith(root.rstrip("/") + "/"):
        raise InputError(
            f"persistent dir {path!r} is outside {root}, which is the only place in the guest that "
            f"survives a reboot; use a path under {root}"
        )
    return full


def setup(
    session: GuestSession,
    persistent_dirs: Sequence[str],
    set_clock: bool = True,
    root: str = PERSISTENT_ROOT,
) -> SetupReport:
    """Make the guest ready after a start: persistent dirs owned by the login user, clock right.

    The clock is set only when it is off by more than CLOCK_TOLERANCE seconds.

    Idempotent and cheap when nothing is to do (one ``stat`` over SSH).
    """
    report = SetupReport()
    dirs = list(dict.fromkeys(persistent_path(d, root) for d in persistent_dirs))
    owner = f"{session.user}:{session.user}"
    if dirs:
        seen = {}
        listing = session.run(["stat", "-c", "%U:%G %F|%n", *dirs], check=False)
        for line in listing.stdout.splitlines():
            info, _, name = line.partition("|")
            seen[name] = info
        missing = [d for d in dirs if d not in seen]
        for d in dirs:
            if d in seen and not seen[d].endswith(" directory"):
                raise GuestError(f"{d} exists in the guest but is not a directory; move it away and retry")
        wrong = [d for d in dirs if d in seen and seen[d].split(" ", 1)[0] != owner]
        if missing:
            session.run(["sudo", "mkdir", "-p", "--", *missing])
        if missing or wrong:
            session.run(["sudo", "chown", owner, "--", *missing, *wrong])
        report.created, report.fixed = missing, wrong
        report.present = [d for d in dirs if d not in missing and d not in wrong]
    report.drift = clock_drift(session)
    if set_clock and abs(report.drift) > CLOCK_TOLERANCE:
        set_guest_clock(session)
        report.clock_set = True
        report.drift = clock_drift(session)
    return report


def root_file_digests(session: GuestSession, paths: Sequence[str]) -> dict:
    """{path: sha256 hex} of those of ``paths`` that exist in the guest (read as root; one command)."""
    result = session.run(["sudo", "sha256sum", "--", *paths], check=False)
    found = {}
    for line in result.stdout.splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) == 64 and name in paths:
            found[name] = digest
    return found


def install_root_files(session: GuestSession, files: dict) -> None:
    """Write ``{guest path: (bytes or a host Path, mode)}`` as root-owned files: SFTP into a private temp dir,
    then, per file, copy next to the target and rename over it, so a reader (dockerd at boot)
    never sees half a key; the temp dir is removed even when a step fails."""
    tmp = session.run(["mktemp", "-d", "/tmp/.b2dkit-install.XXXXXX"]).stdout.strip()
    try:
        sftp = session.client.open_sftp()
        try:
            staged = []
            for index, (target, (data, mode)) in enumerate(sorted(files.items())):
                source = f"{tmp}/{index}"
                with sftp.open(source, "wb") as handle:
                    handle.chmod(0o600)  # before the bytes: a key is never readable by others
                    handle.set_pipelined(True)
                    if isinstance(data, Path):  # an image tarball: streamed, never held in memory
                        with open(data, "rb") as local:
                            for chunk in iter(lambda: local.read(1 << 20), b""):
                                handle.write(chunk)
                    else:
                        handle.write(data)
                staged.append((source, target, mode))
            _end_sftp(sftp)
        except (OSError, paramiko.SSHException) as exc:
            raise GuestError(f"copying files into the guest over SFTP failed ({_describe(exc)})") from None
        finally:
            sftp.close()
        # busybox has no install(1): cp keeps the staged file's 0600 until chmod gives the final mode.
        script = [shlex.join(["mkdir", "-p", *sorted({posixpath.dirname(t) for _, t, _ in staged})])]
        for source, target, mode in staged:
            part = f"{posixpath.dirname(target)}/.{posixpath.basename(target)}.b2dkit-part"
            script.append(shlex.join(["cp", source, part]))
            script.append(shlex.join(["chown", "root:root", part]))
            script.append(shlex.join(["chmod", f"{mode:o}", part]))
            script.append(shlex.join(["mv", "-f", part, target]))
        session.run(["sudo", "sh", "-ec", "; ".join(script)])
    finally:
        session.run(["rm", "-rf", tmp], check=False)


SFTP_END_TIMEOUT = 10.0


def _end_sftp(sftp: paramiko.SFTPClient) -> None:
    """Let the guest's sftp-server exit, and dropbear reap it, before the next channel opens.

    Dropbear 2022.83 (Debian 12's, in the guest) closes a new channel before its exec request when
    a child's SIGCHLD is still pending (fixed upstream in dropbear PR #326, 2024.86): closing the
    SFTP channel outright and exec-ing at once then fails with "Channel closed" or drops the whole
    connection.  Sending EOF and waiting for the server's exit status is how an exec channel ends.
    """
    chan = sftp.get_channel()
    if chan is None:
        return
    chan.shutdown_write()
    chan.status_event.wait(SFTP_END_TIMEOUT)


def clock_command(epoch: int) -> List[str]:
    """``date`` that sets UTC wall time on busybox and GNU alike.

    The seed's pitfall: a bare ``date -s`` reads the time in the guest's zone (``tz=CST-8``),
    so the clock ends up hours off; ``-u`` and an explicit date make it unambiguous.
    """
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return ["sudo", "date", "-u", "-s", stamp]


def set_guest_clock(session: GuestSession) -> None:
    """Set the guest clock from the host's, aiming at a whole second to beat ``date``'s 1 s grain."""
    started = time.time()
    session.run(["true"])
    half_trip = (time.time() - started) / 2
    target = int(time.time() + half_trip) + 1
    time.sleep(max(0.0, target - half_trip - time.time()))
    session.run(clock_command(target))


def clock_drift(session: GuestSession) -> float:
    """Guest minus host wall clock in seconds, read at the midpoint of the round trip."""
    before = time.time()
    out = session.run(["date", "+%s.%N"]).stdout.strip()
    after = time.time()
    try:
        guest = float(out)
    except ValueError:  # a date without %N: whole seconds, so take the middle of that second
        guest = float(out.split(".", 1)[0]) + 0.5
    return guest - (before + after) / 2


# -- interactive ssh -------------------------------------------------------------------------


def ssh_argv(
    host: str,
    port: int,
    key_path,
    known_hosts_path,
    command: Optional[Command] = None,
    user: str = DEFAULT_USER,
) -> List[str]:
    """The OpenSSH client command line for ``vm.ssh``: our key and pins only, no user config."""
    argv = ["ssh", "-F", "/dev/null", "-i", str(key_path), "-p", str(int(port))]
    for option in ssh_options(known_hosts_path) + ["LogLevel=ERROR"]:
        argv += ["-o", option]
    argv.append(f"{user}@{host}")
    if command is not None:
        argv.append(command if isinstance(command, str) else shlex.join(str(a) for a in command))
    return argv


def ssh_options(known_hosts_path, quote=None) -> List[str]:
    """The OpenSSH options of every client b2dkit starts (``vm.ssh`` and sshfs's ssh): the VM's
    pinned host key only, no agent keys, never a password prompt. (``-F /dev/null`` goes with
    them: the user's ~/.ssh/config must not redirect or re-key this VM.)"""
    return [
        "UserKnownHostsFile=" + (quote or ssh_quote)(known_hosts_path),
        "GlobalKnownHostsFile=/dev/null",
        "StrictHostKeyChecking=yes",
        "IdentitiesOnly=yes",
        "BatchMode=yes",
    ]


def ssh_quote(path) -> str:
    """ssh splits option values on spaces (macOS's "Application Support"); quote them."""
    text = str(path)
    if '"' in text:
        raise GuestError(f"path {text!r} contains a double quote, which ssh options cannot carry")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def interactive_shell(host: str, port: int, key_path, known_hosts_path,
                      command: Optional[Command] = None, user: str = DEFAULT_USER) -> int:
    """Run ``ssh`` in the foreground (a real TTY) and return its exit code.

    Without an OpenSSH client, a command still runs through paramiko; a shell cannot.
    """
    if not pinned_keys(known_hosts_path, host, port):
        connect(host, port, key_path, known_hosts_path, user=user).close()  # pin before ssh checks
    if shutil.which("ssh") is None:
        if command is None:
            raise ToolMissing(
                f"the OpenSSH client `ssh` is needed for an interactive shell; {install.hint('ssh')}; "
                "or pass -c CMD"
            )
        with connect(host, port, key_path, known_hosts_path, user=user) as session:
            result = session.run(command, check=False, timeout=24 * 3600)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        return result.exit_code
    argv = ssh_argv(host, port, key_path, known_hosts_path, command=command, user=user)
    # Ctrl-C belongs to ssh (and the remote command): keep it from killing us first. A
    # Python-level handler, unlike SIG_IGN, is reset to the default in the child by exec.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        return subprocess.call(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
