"""IPv6 loopback for forwards the hypervisor binds on IPv4 only.

``localhost`` resolves to ``::1`` first on most laptops, and QEMU's slirp ``hostfwd`` (like
VirtualBox's NAT rules) binds IPv4 addresses only, so ``curl localhost:8000`` would find
nothing.  A ``Relays`` set listens on ``[::1]:PORT`` for each forward on 127.0.0.1 and
copies bytes (or datagrams) to ``127.0.0.1:PORT``.  The watcher process runs it and reconciles it with the
VM's forwards, so relays come and go with them.

UDP forwards get a datagram relay (one IPv4 socket per IPv6 client, so replies find their
way back). Forwards on other addresses get none (0.0.0.0 would mean ``[::]``, a second
exposure the profile did not ask for).
"""

import contextlib
import socket
import threading
import select
import time
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple, Union

from .forwards import LOOPBACK, Forward

IPV6_LOOPBACK = "::1"
BUFFER = 256 * 1024


def wanted(forwards: Iterable[Forward]) -> List[Tuple[str, int]]:
    """(proto, host port) of each forward bound on IPv4 loopback: each gets an [::1] relay."""
    return sorted({(f.proto, f.host_port) for f in forwards if f.host_ip == LOOPBACK})


def wanted_ports(forwards: Iterable[Forward]) -> List[int]:
    """Host ports of the TCP forwards that need an [::1] relay."""
    return [port for proto, port in wanted(forwards) if proto == "tcp"]


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
        self._conns: Set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name=f"relay [::1]:{port}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
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

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _pump(src: socket.socket, dst: socket.socket, done: threading.Event) -> None:
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


class UdpRelay:
    """[::1]:port datagrams to 127.0.0.1:port; each IPv6 client has its own IPv4 socket for replies."""

    IDLE = 60.0  # a client socket unused this long is closed

    def __init__(self, port: int, target_host: str = LOOPBACK):
        self.port = port
        self.target = (target_host, port)
        self._front = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self._front.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            self._front.bind((IPV6_LOOPBACK, port))
        except OSError:
            self._front.close()
            raise
        self._clients: Dict[tuple, Tuple[socket.socket, float]] = {}
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"udp relay [::1]:{port}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            backs = {sock: addr for addr, (sock, _) in self._clients.items()}
            try:
                ready, _, _ = select.select([self._front, *backs], [], [], 1.0)
            except (OSError, ValueError):
                return  # closed under us
            now = time.monotonic()
            for sock in ready:
                try:
                    if sock is self._front:
                        data, addr = sock.recvfrom(65535)
                        back = self._clients.get(addr, (None, 0))[0]
                        if back is None:
                            back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                            back.connect(self.target)
                        self._clients[addr] = (back, now)
                        back.send(data)
                    else:
                        addr = backs[sock]
                        self._front.sendto(sock.recv(65535), addr)
                        self._clients[addr] = (sock, now)
                except OSError:
                    continue  # ICMP unreachable on a connected socket, a vanished client: drop it
            for addr, (sock, used) in list(self._clients.items()):
                if now - used > self.IDLE:
                    sock.close()
                    del self._clients[addr]

    def close(self) -> None:
        """Stop the thread first: a socket closed while select() holds it stays bound until then."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._front.shutdown(socket.SHUT_RDWR)  # wakes select(), even on an unconnected UDP socket
        self._thread.join(timeout=2.0)
        self._front.close()
        for sock, _ in list(self._clients.values()):
            sock.close()


class Relays:
    """The set of [::1] relays of one VM, reconciled with its forwards."""

    def __init__(self, log: Callable[[str], None] = lambda _m: None):
        self.log = log
        self.active: Dict[Tuple[str, int], Union["Relay", "UdpRelay"]] = {}  # (proto, port) -> its relay
        self.failed: Dict[Tuple[str, int], str] = {}  # why it could not be bound (reported once)

    def reconcile(self, forwards: Iterable[Forward]) -> None:
        want = set(wanted(forwards))
        for key in sorted(set(self.active) - want):
            self.active.pop(key).close()
            self.log(f"relay [::1]:{key[1]}/{key[0]} stopped (its forward is gone)")
        for key in list(self.failed):
            if key not in want:
                del self.failed[key]
        for key in sorted(want - set(self.active)):
            proto, port = key
            try:
                self.active[key] = Relay(port) if proto == "tcp" else UdpRelay(port)
            except OSError as exc:
                why = exc.strerror or str(exc)
                if self.failed.get(key) != why:
                    self.log(f"relay [::1]:{port}/{proto} not started: {why} (something else holds it?)")
                self.failed[key] = why
                continue
            self.failed.pop(key, None)
            self.log(f"relay [::1]:{port}/{proto} -> 127.0.0.1:{port} started")

    def close(self) -> None:
        for relay in self.active.values():
            relay.close()
        self.active.clear()
