"""Free host ports for tests, from one place.

A port the kernel hands out for ``bind(("127.0.0.1", 0))`` is free only until the socket closes, so
two calls can return the same one: CI failed once on a spec whose SSH forward and second forward
both got 54245. Ports handed out here are remembered for the whole test process and never handed
out twice; the kernel's own choice still keeps them out of the way of other programs.
"""

import socket

_given: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now that no earlier call of this process returned."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port
    raise RuntimeError("the kernel kept returning ports this test process already used")
