"""NAT port forwards: parsing what users type, naming rules, and checking host ports.

Both providers speak in ``Forward`` values; only they know how to apply one
(``VBoxManage ... natpf1`` or QEMU ``hostfwd``).
"""

import errno
import os
import re
import socket
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

from .errors import InputError, PortInUse

PROTOCOLS = ("tcp", "udp")
LOOPBACK = "127.0.0.1"
SSH_GUEST_PORT = 22
DOCKER_PORTS = (2375, 2376)
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

    def __post_init__(self):
        if not self.name:
            object.__setattr__(self, "name", rule_name(self.proto, self.host_port))

    def to_dict(self):
        return asdict(self)


def ssh_forward(rules) -> Optional["Forward"]:
    """The rule that reaches the guest's sshd, if any (b2dkit always makes one)."""
    return next((f for f in rules if f.guest_port == SSH_GUEST_PORT and f.proto == "tcp"), None)


def connect_address(fwd: "Forward") -> Tuple[str, int]:
    """Where the host connects for ``fwd``: a wildcard bind is reached on loopback."""
    host = fwd.host_ip if fwd.host_ip not in ("", "0.0.0.0") else LOOPBACK
    return host, fwd.host_port


def rule_name(proto: str, host_port: int) -> str:
    """Deterministic rule name: one rule per (protocol, host port), as the host can bind it once."""
    return f"{proto}-{host_port}"


def parse_port(value, what="port") -> int:
    text = str(value).strip()
    if not text.isdigit():
        raise InputError(f"invalid {what} {value!r}: expected a number from 1 to 65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise InputError(f"invalid {what} {value!r}: expected a number from 1 to 65535")
    return port


def parse_spec(spec, host_ip=LOOPBACK) -> Forward:
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


def check_host_ip(host_ip) -> str:
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


def check_exposure(fwd: Forward, force=False):
    """Refuse to publish the Docker daemon beyond loopback unless forced: it is root on the VM."""
    if fwd.guest_port in DOCKER_PORTS and not fwd.host_ip.startswith("127.") and not force:
        raise InputError(
            f"refusing to expose the Docker daemon port {fwd.guest_port} on {fwd.host_ip}: "
            "anyone who reaches it is root in the VM (bind 127.0.0.1, or force it explicitly)"
        )


def host_port_free(port: int, host_ip=LOOPBACK, proto="tcp") -> bool:
    """True if we could bind the port now (what VirtualBox/QEMU will try later).

    TCP binds with SO_REUSEADDR on POSIX, as QEMU's user-mode NAT (libslirp) listener does: the
    connections a VM's last boot left in TIME_WAIT (60 s on Linux) do not stop it, so they
    must not stop a ``vm.stop`` + ``vm.start`` either. A live listener still makes it busy.
    """
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        if proto == "tcp" and os.name == "posix":  # on Windows the option would let us share a live port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host_ip, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise InputError(f"cannot bind {host_ip}:{port}: {exc.strerror}") from None
    return True


def require_free(fwd: Forward, owner=None):
    """Raise PortInUse naming the port and, if known, who has it."""
    who = f" by {owner}" if owner else ""
    if owner or not host_port_free(fwd.host_port, fwd.host_ip, fwd.proto):
        raise PortInUse(
            f"host port {fwd.host_ip}:{fwd.host_port}/{fwd.proto} is already in use{who}",
            hint="free it, pick another host port (HOST:GUEST), or use --auto-correct",
        )


def pick_free_port(host_ip=LOOPBACK, proto="tcp", start=2200, end=2250, taken=()):
    """First free port in a bounded range (Vagrant's usable_port_range), else PortInUse."""
    for port in range(start, end + 1):
        if port not in taken and host_port_free(port, host_ip, proto):
            return port
    raise PortInUse(f"no free host port between {start} and {end} on {host_ip}")
