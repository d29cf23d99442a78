"""forwards.py: host-port checks against real sockets on 127.0.0.1."""

import socket
import time

from b2dkit import forwards


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
