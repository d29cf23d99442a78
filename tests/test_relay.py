"""relay.py: real sockets on [::1] and 127.0.0.1."""

import socket
import threading

import pytest

from b2dkit import relay
from b2dkit.forwards import Forward

pytestmark = pytest.mark.skipif(not relay.ipv6_available(), reason="this host has no IPv6 loopback")


@pytest.fixture
def echo_server():
    """A TCP server on 127.0.0.1 that echoes one message per connection, then closes."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(b"echo:" + data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    server.close()


def _ask(port, payload=b"hello\n"):
    with socket.create_connection(("::1", port), timeout=5) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return out
            out += chunk


def test_only_loopback_forwards_get_a_relay():
    rules = [Forward(8000, 8000), Forward(5353, 53, "udp"), Forward(9000, 80, host_ip="0.0.0.0"),
             Forward(2022, 22)]  # fmt: skip
    assert relay.wanted(rules) == [("tcp", 2022), ("tcp", 8000), ("udp", 5353)]
    assert relay.wanted_ports(rules) == [2022, 8000]


def test_relay_carries_bytes_both_ways_and_follows_the_forwards(echo_server):
    logs = []
    relays = relay.Relays(log=logs.append)
    try:
        relays.reconcile([Forward(echo_server, 80)])
        assert _ask(echo_server) == b"echo:hello\n"
        big = b"x" * (3 << 20) + b"\n"  # larger than any buffer: the copy loops really loop
        assert _ask(echo_server, big) == b"echo:" + big
        relays.reconcile([])
        with pytest.raises(OSError):
            _ask(echo_server)
        assert any("stopped" in line for line in logs)
    finally:
        relays.close()


def test_a_busy_ipv6_port_is_reported_once_not_raised(echo_server):
    holder = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    holder.bind(("::1", echo_server))
    holder.listen()
    logs = []
    relays = relay.Relays(log=logs.append)
    try:
        relays.reconcile([Forward(echo_server, 80)])
        relays.reconcile([Forward(echo_server, 80)])
        assert ("tcp", echo_server) in relays.failed and ("tcp", echo_server) not in relays.active
        assert len([line for line in logs if "not started" in line]) == 1
        holder.close()
        relays.reconcile([Forward(echo_server, 80)])  # freed: the next look binds it
        assert _ask(echo_server) == b"echo:hello\n"
    finally:
        holder.close()
        relays.close()


@pytest.fixture
def udp_echo():
    """A UDP echo on 127.0.0.1 (replies to whoever sent)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, addr = server.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            server.sendto(b"echo:" + data, addr)

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    stop.set()
    server.close()


def test_udp_relay_answers_each_ipv6_client_and_stops_with_its_forward(udp_echo):
    relays = relay.Relays()
    try:
        relays.reconcile([Forward(udp_echo, 53, "udp")])
        clients = [socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) for _ in range(2)]
        for i, client in enumerate(clients):  # two clients at once: each gets its own reply
            client.settimeout(5)
            client.sendto(b"ping%d" % i, ("::1", udp_echo))
        for i, client in enumerate(clients):
            data, addr = client.recvfrom(2048)
            assert data == b"echo:ping%d" % i and addr[1] == udp_echo
            client.close()
        relays.reconcile([])
        assert relays.active == {}
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", udp_echo))  # the port is free again
        probe.close()
    finally:
        relays.close()
