"""forwards.py: host-port checks against real sockets on 127.0.0.1."""

import socket
import time

import pytest

from b2dkit import forwards
from b2dkit.errors import InputError


def test_a_listening_port_is_busy():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        assert not forwards.host_port_free(holder.getsockname()[1])


def test_time_wait_left_by_a_stopped_vm_does_not_make_its_port_busy():
    """QEMU's NAT listener (SO_REUSEADDR) closes its side first; the port lingers in TIME_WAIT."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first: TIME_WAIT on the VM's port
    time.sleep(0.1)
    client.close()
    listener.close()
    with socket.socket() as plain:  # the oracle: a bind without the option is refused now
        try:
            plain.bind(("127.0.0.1", port))
            lingering = False
        except OSError:
            lingering = True
    assert lingering
    assert forwards.host_port_free(port)
    # and QEMU's own kind of listener binds it, as the check promised
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()
        assert not forwards.host_port_free(port)


@pytest.mark.parametrize("text", ["::1", "[::1]", " ::1 "])
def test_ipv6_loopback_is_accepted_as_loopback_served_on_both_families(text):
    # The hypervisor binds 127.0.0.1; the watcher's relay adds [::1] (relay.py).
    assert forwards.check_host_ip(text) == "127.0.0.1"
    assert forwards.parse_spec("8000", host_ip=text).host_ip == "127.0.0.1"


def test_other_ipv6_addresses_are_still_refused_in_one_line():
    with pytest.raises(InputError, match="or ::1"):
        forwards.check_host_ip("::")
