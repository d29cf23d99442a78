"""IPv6 loopback for forwards the hypervisor binds on IPv4 only.

``localhost`` resolves to ``::1`` first on most laptops, and QEMU's slirp ``hostfwd`` (like
VirtualBox's NAT rules) binds IPv4 addresses only, so ``curl localhost:8000`` would find
nothing.  A ``Relays`` set listens on ``[::1]:PORT`` for each TCP forward on 127.0.0.1 and
copies bytes to ``127.0.0.1:PORT``.  The watcher process runs it and reconciles it with the
VM's forwards, so relays come and go with them.

UDP and forwards on other addresses get no relay (0.0.0.0 would mean ``[::]``, a second
exposure the profile did not ask for).
"""

import contextlib
import socket
import threading
from typing import Callable, Dict, Iterable, List, Optional

from .forwards import LOOPBACK, Forward

IPV6_LOOPBACK = "::1"
BUFFER = 256 * 1024


def wanted_ports(forwards: Iterable[Forward]) -> List[int]:
    """Host ports that need an [::1] relay: TCP forwards bound on IPv4 loopback."""
    return sorted({f.host_port for f in forwards if f.proto == "tcp" and f.host_ip == LOOPBACK})


def ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind((IPV6_LOOPBACK, 0))
        return True
    except OSError:
        return False


class Relay:
    """One listener on [::1]:port; a pair of copy threads per accepted connection."""

    def __init__(self, port: int, target_host: str = LOOPBACK, target_port: Optional[int] = None):
        self.port = port
        self.target = (target_host, target_port or port)
        self._listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            self._listener.bind((IPV6_LOOPBACK, port))
            self._listener.listen(64)
        except OSError:
            self._listener.close()
            raise
        self._closed = threading.Event()
        self._conns = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name=f"relay [::1]:{port}", daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket):
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._conns.update((client, upstream))
        done = threading.Event()
        back = threading.Thread(target=_pump, args=(upstream, client, done), daemon=True)
        back.start()
        _pump(client, upstream, done)
        back.join()
        for sock in (client, upstream):
            with self._lock:
                self._conns.discard(sock)
            sock.close()

    def close(self):
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _pump(src: socket.socket, dst: socket.socket, done: threading.Event):
    """Copy until EOF, then pass the half-close on (HTTP/1.0 clients rely on it)."""
    try:
        while True:
            data = src.recv(BUFFER)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        done.set()


class Relays:
    """The set of [::1] relays of one VM, reconciled with its forwards."""

    def __init__(self, log: Callable[[str], None] = lambda _m: None):
        self.log = log
        self.active: Dict[int, Relay] = {}
        self.failed: Dict[int, str] = {}  # port -> why it could not be bound (reported once)

    def reconcile(self, forwards: Iterable[Forward]) -> None:
        wanted = set(wanted_ports(forwards))
        for port in sorted(set(self.active) - wanted):
            self.active.pop(port).close()
            self.log(f"relay [::1]:{port} stopped (its forward is gone)")
        for port in list(self.failed):
            if port not in wanted:
                del self.failed[port]
        for port in sorted(wanted - set(self.active)):
            try:
                self.active[port] = Relay(port)
            except OSError as exc:
                why = exc.strerror or str(exc)
                if self.failed.get(port) != why:
                    self.log(f"relay [::1]:{port} not started: {why} (something else holds [::1]:{port}?)")
                self.failed[port] = why
                continue
            self.failed.pop(port, None)
            self.log(f"relay [::1]:{port} -> 127.0.0.1:{port} started")

    def close(self):
        for relay in self.active.values():
            relay.close()
        self.active.clear()
