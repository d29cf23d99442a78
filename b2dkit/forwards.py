"""NAT port forwards and the one host-port policy every provider, doctor and task follows.

Both providers speak in ``Forward`` values; only they know how to apply one
(``VBoxManage ... natpf1`` or QEMU ``hostfwd``).  What this module decides, once:

* which rules are valid (``check_rules``) and when two rules want the same host socket
  (``clash``: same protocol and port, IPs equal or either a wildcard);
* whether the host can bind a port now (``probe``: IPv4 and the IPv6 listeners that a
  browser's ``localhost`` reaches), and who holds it when not (``owner``);
* which rule reaches the guest's sshd (``ssh_forward``) and how to add one (``with_ssh``).
"""

import errno
import os
import platform
import re
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

from .errors import HypervisorError, InputError, PortDenied, PortInUse

PROTOCOLS = ("tcp", "udp")
LOOPBACK = "127.0.0.1"
SSH_GUEST_PORT = 22
DOCKER_PORTS = (2375, 2376)
DOCKER_TLS_PORT = 2376  # the guest's dockerd, TLS only
# Where a VM's forward to its dockerd is picked: first free from 2376 up (one range per purpose,
# apart from SSH's 2200-2250, so the two never take each other's ports).
DOCKER_HOST_RANGE = (2376, 2426)
_SPEC = re.compile(r"^(?:(?P<host>[^:/]*):)?(?P<guest>[^:/]*)(?:/(?P<proto>.*))?$")


@dataclass(frozen=True, order=True)
class Forward:
    """One host→guest rule. ``name`` is derived, so re-adding the same rule is a no-op."""

    host_port: int
    guest_port: int
    proto: str = "tcp"
    host_ip: str = LOOPBACK
    guest_ip: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", rule_name(self.proto, self.host_port))

    def to_dict(self) -> dict:
        return asdict(self)


def ssh_forward(rules: Iterable["Forward"]) -> Optional["Forward"]:
    """The rule that reaches the guest's sshd, if any (b2dkit always makes one)."""
    return next((f for f in rules if is_ssh(f)), None)


def connect_address(fwd: "Forward") -> Tuple[str, int]:
    """Where the host connects for ``fwd``: a wildcard bind is reached on loopback."""
    host = fwd.host_ip if fwd.host_ip not in ("", "0.0.0.0") else LOOPBACK
    return host, fwd.host_port


def ssh_endpoint(rules: Iterable["Forward"], vm: str) -> Tuple[str, int]:
    """Where the host reaches VM ``vm``'s sshd, or the one error both providers give without a rule."""
    ssh = ssh_forward(rules)
    if ssh:
        return connect_address(ssh)
    raise HypervisorError(
        f"VM {vm!r} has no forward to the guest's SSH port 22", hint="run `b2dkit vm.create` again to add it"
    )


def rule_name(proto: str, host_port: int) -> str:
    """Deterministic rule name: one rule per (protocol, host port), as the host can bind it once."""
    return f"{proto}-{host_port}"


AUTO_PREFIX = "auto-"  # rules b2dkit adds for a container's published port (autoports.py)


def auto_name(proto: str, host_port: int) -> str:
    return AUTO_PREFIX + rule_name(proto, host_port)


def port_spec(host_port: int, proto: str) -> str:
    """``8085`` or ``5353/udp``: a host port as ``vm.forward`` / ``vm.unforward`` take it."""
    return str(host_port) + ("" if proto == "tcp" else f"/{proto}")


def is_auto(fwd: "Forward") -> bool:
    """A rule that follows a container (``ports: auto``), as opposed to the VM's own."""
    return fwd.name.startswith(AUTO_PREFIX)


def parse_port(value: object, what: str = "port") -> int:
    text = str(value).strip()
    if not text.isdigit():
        raise InputError(f"invalid {what} {value!r}: expected a number from 1 to 65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise InputError(f"invalid {what} {value!r}: expected a number from 1 to 65535")
    return port


def parse_spec(spec: object, host_ip: str = LOOPBACK) -> Forward:
    """``8000`` | ``8080:80`` | ``5353:53/udp`` → Forward (host port first, as in ``docker -p``)."""
    text = str(spec).strip()
    match = _SPEC.match(text)
    if not text or not match:
        raise InputError(f"invalid forward {spec!r}: use PORT, HOST:GUEST or HOST:GUEST/udp")
    proto = (match.group("proto") or "tcp").lower()
    if proto not in PROTOCOLS:
        raise InputError(f"invalid forward {spec!r}: unknown protocol {proto!r} (use tcp or udp)")
    guest = parse_port(match.group("guest"), "guest port")
    host_text = match.group("host")
    host = guest if host_text is None else parse_port(host_text, "host port")
    return Forward(host_port=host, guest_port=guest, proto=proto, host_ip=check_host_ip(host_ip))


IPV6_LOOPBACK = ("::1", "[::1]")


def check_host_ip(host_ip: Optional[str]) -> str:
    """An IPv4 address; ``::1`` means loopback, as each TCP forward on 127.0.0.1 is also
    served on [::1] by the watcher's relay (QEMU's and VirtualBox's NAT bind IPv4 only)."""
    text = str(host_ip or LOOPBACK).strip()
    if text in IPV6_LOOPBACK:
        return LOOPBACK
    try:
        socket.inet_aton(text)
    except OSError:
        raise InputError(f"invalid host IP {host_ip!r}: expected an IPv4 address such as 127.0.0.1, or ::1") from None
    if text.count(".") != 3:
        raise InputError(f"invalid host IP {host_ip!r}: expected an IPv4 address such as 127.0.0.1")
    return text


def check_exposure(fwd: Forward, force: bool = False) -> None:
    """Refuse to publish the Docker daemon beyond loopback unless forced: it is root on the VM."""
    if fwd.guest_port in DOCKER_PORTS and not fwd.host_ip.startswith("127.") and not force:
        raise InputError(
            f"refusing to expose the Docker daemon port {fwd.guest_port} on {fwd.host_ip}: "
            "anyone who reaches it is root in the VM (bind 127.0.0.1, or force it explicitly)"
        )


# -- rules ---------------------------------------------------------------------------------------

WILDCARDS = ("", "0.0.0.0")
_BAD_NAME_CHARS = re.compile(r'[,"\\\n]')


def check_name(name: str) -> str:
    """Rule names travel through VBoxManage's comma-separated, unescaped rule format."""
    if not name or _BAD_NAME_CHARS.search(name):
        raise InputError(f"invalid forward name {name!r}: no commas, quotes or backslashes")
    return name


def check_rules(rules: Iterable[Forward]) -> List[Forward]:
    """Validate forwards before any hypervisor call: ports, protocol, IP, name, duplicates."""
    out: List[Forward] = []
    for fwd in rules:
        if not isinstance(fwd, Forward):
            raise InputError(f"invalid forward {fwd!r}")
        parse_port(fwd.host_port, "host port")
        parse_port(fwd.guest_port, "guest port")
        if fwd.proto not in PROTOCOLS:
            raise InputError(f"invalid forward {fwd.name!r}: unknown protocol {fwd.proto!r} (use tcp or udp)")
        if fwd.host_ip:
            check_host_ip(fwd.host_ip)
        check_name(fwd.name)
        for seen in out:
            if seen.name == fwd.name or same_socket(fwd, seen):
                raise InputError(
                    f"forwards {seen.name!r} and {fwd.name!r} both use host port {fwd.host_port}/{fwd.proto}"
                )
        out.append(fwd)
    return out


def same_socket(a: Forward, b: Forward) -> bool:
    """Would ``a`` and ``b`` bind the same host socket? The IP matters, wildcards overlap all."""
    ips = a.host_ip == b.host_ip or a.host_ip in WILDCARDS or b.host_ip in WILDCARDS
    return a.proto == b.proto and a.host_port == b.host_port and ips


def clash(fwd: Forward, rules: Iterable[Forward]) -> Optional[Forward]:
    """The first rule of another name that wants ``fwd``'s host socket (Vagrant PR #4616)."""
    return next((r for r in rules if r.name != fwd.name and same_socket(fwd, r)), None)


def holder(fwd: Forward, rules: Iterable[Forward]) -> Optional[Forward]:
    """The rule other than ``fwd`` that already has its host port (by name or socket): for
    ``vm.forward`` that is a clash, never a replace (it could be the VM's SSH route)."""
    return next((r for r in rules if r != fwd and (r.name == fwd.name or same_socket(fwd, r))), None)


def is_ssh(fwd: Forward) -> bool:
    return fwd.guest_port == SSH_GUEST_PORT and fwd.proto == "tcp"


def describe(fwd: Forward) -> str:
    """``127.0.0.1:8080 → 80/tcp``: how change lines and errors show a rule."""
    return f"{fwd.host_ip or '*'}:{fwd.host_port} → {fwd.guest_port}/{fwd.proto}"


def refuse_clash(fwd: Forward, other: Forward, vm: str) -> None:
    """The one error for a rule whose host socket another rule of the same VM has (both providers)."""
    removable = other.name == rule_name(other.proto, other.host_port) and not is_ssh(other)
    spec = port_spec(other.host_port, other.proto)
    what = " (the VM's SSH route)" if is_ssh(other) else ""
    raise PortInUse(
        f"host port {fwd.host_ip or '*'}:{fwd.host_port}/{fwd.proto} is already forwarded by rule "
        f"{other.name!r}{what} of VM {vm!r}",
        hint=(f"remove it first with `b2dkit vm.unforward {spec}` or " if removable else "")
        + "pick another host port (HOST:GUEST)",
    )


def with_ssh(rules: List[Forward], current: Sequence[Forward] = (), taken: Iterable[int] = ()) -> List[Forward]:
    """``rules`` plus b2dkit's own rules: a forward to the guest's sshd when none is there (an
    existing one keeps its port), the Docker daemon's forward ``vm.start`` added earlier
    (kept, so ``DOCKER_HOST`` stays the same and a re-run of ``vm.create`` changes nothing),
    and the auto forwards of running containers, unless ``rules`` wants their port."""
    out = list(rules)
    out += [f for f in current if is_auto(f) and not any(same_socket(f, r) for r in rules)]
    docker = docker_forward(current)
    if docker and not docker_forward(rules) and not any(same_socket(docker, f) for f in rules):
        out.append(docker)
    if ssh_forward(rules):
        return out
    kept = ssh_forward(current)
    if kept:
        return out + [kept]
    port = pick_free_port(taken={f.host_port for f in out} | set(taken))
    return out + [Forward(host_port=port, guest_port=SSH_GUEST_PORT)]


def docker_forward(rules: Iterable[Forward]) -> Optional[Forward]:
    """The loopback rule that reaches the guest's TLS dockerd, if any."""
    return next((f for f in rules if f.guest_port == DOCKER_TLS_PORT and f.proto == "tcp"
                 and f.host_ip.startswith("127.")), None)


def new_docker_forward(taken: Iterable[int] = ()) -> Forward:
    """127.0.0.1:<first free port of DOCKER_HOST_RANGE, not in ``taken``> → 2376."""
    start, end = DOCKER_HOST_RANGE
    return Forward(host_port=pick_free_port(LOOPBACK, "tcp", start, end, taken), guest_port=DOCKER_TLS_PORT)


def moved_docker_forward(rules: Sequence[Forward], taken: Iterable[int] = ()) -> Optional[Tuple[Forward, Forward]]:
    """(old, new) when the host port of a stopped VM's Docker forward is held by something else
    now: that rule only carries DOCKER_HOST (which ``vm.env`` reads back), so it moves to the next
    free port of DOCKER_HOST_RANGE instead of failing the start. None when it is free or absent."""
    old = docker_forward(rules)
    if old is None or probe(old.host_port, old.host_ip) != BUSY:
        return None
    return old, new_docker_forward(taken={f.host_port for f in rules} | set(taken))


# -- the host's ports ------------------------------------------------------------------------------

FREE, BUSY, DENIED = "free", "busy", "denied"


def _bind(family: int, proto: str, host_ip: str, port: int) -> str:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        if proto == "tcp" and os.name == "posix":  # on Windows the option would let us share a live port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host_ip, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return BUSY
            if exc.errno in (errno.EACCES, getattr(errno, "WSAEACCES", errno.EACCES)):  # Windows: 10013
                return DENIED
            raise
    return FREE


def probe(port: int, host_ip: str = LOOPBACK, proto: str = "tcp") -> str:
    """``free``, ``busy`` or ``denied`` (EACCES): can the hypervisor bind this port now?

    TCP binds with SO_REUSEADDR on POSIX, as QEMU's user-mode NAT (libslirp) listener does: the
    connections a VM's last boot left in TIME_WAIT (60 s on Linux) do not stop it, so they
    must not stop a ``vm.stop`` + ``vm.start`` either. A live listener still makes it busy.
    A loopback or wildcard rule is also busy when a program listens on ``::1``/``::``: a
    browser's ``localhost:PORT`` would reach that program instead of the VM.
    """
    host_ip = host_ip or "0.0.0.0"
    try:
        result = _bind(socket.AF_INET, proto, host_ip, port)
    except OSError as exc:
        raise InputError(f"cannot bind {host_ip}:{port}: {exc.strerror}") from None
    if result != FREE or not socket.has_ipv6:
        return result
    six = "::" if host_ip in WILDCARDS else "::1" if host_ip.startswith("127.") else None
    if six is None:
        return result
    try:
        return _bind(socket.AF_INET6, proto, six, port)
    except OSError:  # no IPv6 on this host (EADDRNOTAVAIL, EAFNOSUPPORT): nothing can listen there
        return FREE


def host_port_free(port: int, host_ip: str = LOOPBACK, proto: str = "tcp") -> bool:
    return probe(port, host_ip, proto) == FREE


Neighbours = Callable[[], Iterable[Tuple[str, Sequence[Forward]]]]


def owner(fwd: Forward, neighbours: Optional[Neighbours] = None) -> Optional[str]:
    """Who holds ``fwd``'s host port: another VM's rule (``neighbours`` yields (label, rules)),
    else the listening process as ``lsof`` names it, else None. Asked only once a bind failed."""
    for label, rules in neighbours() if neighbours else ():
        other = next((r for r in rules if same_socket(fwd, r)), None)
        if other:
            return f"{label} (NAT rule {other.name!r})"
    return _listener(fwd.host_port, fwd.proto)


def _listener(port: int, proto: str) -> Optional[str]:
    lsof = shutil.which("lsof")
    if not lsof:
        return None
    what = [f"-iTCP:{port}", "-sTCP:LISTEN"] if proto == "tcp" else [f"-iUDP:{port}"]
    try:
        out = subprocess.run([lsof, "-nP", *what, "-Fpc"], capture_output=True, text=True, timeout=3).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    pid = None
    for line in out.splitlines():  # "p<pid>" then "c<command>" per process
        if line.startswith("p"):
            pid = line[1:]
        elif line.startswith("c"):
            return f"{line[1:]} (pid {pid})" if pid else line[1:]
    return None


UNPRIVILEGED_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")


def unprivileged_port_start(path: Path = UNPRIVILEGED_START) -> int:
    """Linux's lowest port a user may bind (a sysctl); 1024 when it cannot be read."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 1024


def denied(fwd: Forward, system: Optional[str] = None, start: Optional[int] = None) -> PortDenied:
    """EACCES said plainly, with what works on this OS instead (never "already in use")."""
    system = system or platform.system()
    where = f"{fwd.host_ip or '*'}:{fwd.host_port}/{fwd.proto}"
    floor = 1024
    if system == "Linux":
        floor = unprivileged_port_start() if start is None else start
    alternative = fwd.host_port + 8000 if fwd.host_port + 8000 <= 65535 else floor  # 80 -> 8080, 443 -> 8443
    alternative = max(alternative, floor)
    suffix = "/udp" if fwd.proto == "udp" else ""
    other = f"`b2dkit vm.forward {alternative}:{fwd.guest_port}{suffix}`"
    message = f"host port {where} may not be bound by this user"
    if system == "Darwin" and fwd.host_ip not in WILDCARDS:
        return PortDenied(
            message + ": on macOS a port below 1024 needs root on a single address such as 127.0.0.1",
            hint=f"on macOS 0.0.0.0 needs no privilege: give this forward host_ip: 0.0.0.0 in the profile "
                 f"(any network can then reach it), or use a port of 1024 or more: {other}",
        )
    if system == "Linux":
        return PortDenied(
            message + f": on Linux ports below {floor} need privileges (net.ipv4.ip_unprivileged_port_start)",
            hint=f"use a host port of {floor} or more: {other}; or let users bind from {fwd.host_port} up: "
                 f"`sudo sysctl -w net.ipv4.ip_unprivileged_port_start={fwd.host_port}`",
        )
    if system == "Windows":
        return PortDenied(
            message + f": Windows reserves it (`netsh interface ipv4 show excludedportrange protocol={fwd.proto}`)",
            hint=f"use another host port: {other}",
        )
    return PortDenied(message + " (ports below 1024 need privileges here)",
                      hint=f"use a host port of 1024 or more: {other}")


def require_free(fwd: Forward, neighbours: Optional[Neighbours] = None) -> None:
    """PortInUse (naming the holder when known) or PortDenied unless the host can bind ``fwd`` now."""
    state = probe(fwd.host_port, fwd.host_ip, fwd.proto)
    if state == FREE:
        return
    where = f"{fwd.host_ip or '*'}:{fwd.host_port}/{fwd.proto}"
    if state == DENIED:
        raise denied(fwd)
    holder = owner(fwd, neighbours)
    raise PortInUse(
        f"host port {where} is already in use" + (f" by {holder}" if holder else ""),
        hint="free it, or pick another host port (HOST:GUEST)",
    )


def pick_free_port(host_ip: str = LOOPBACK, proto: str = "tcp", start: int = 2200, end: int = 2250,
                   taken: Iterable[int] = ()) -> int:
    """First free port in a bounded range (Vagrant's usable_port_range), else PortInUse."""
    for port in range(start, end + 1):
        if port not in taken and host_port_free(port, host_ip, proto):
            return port
    raise PortInUse(f"no free host port between {start} and {end} on {host_ip}")
