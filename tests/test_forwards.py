"""forwards.py: host-port checks against real sockets on 127.0.0.1."""

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from b2dkit import forwards
from b2dkit.errors import B2dkitError, InputError, PortDenied, PortInUse
from b2dkit.forwards import Forward


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


# -- one port policy: clash rule, IPv6 listeners, EACCES ----------------------------------------


@pytest.mark.parametrize(
    "a, b, same",
    [
        (Forward(8000, 80), Forward(8000, 81, name="x"), True),
        (Forward(8000, 80), Forward(8000, 80, host_ip="0.0.0.0", name="x"), True),  # a wildcard covers loopback
        (Forward(8000, 80, host_ip=""), Forward(8000, 80, host_ip="10.1.2.3", name="x"), True),
        (Forward(8000, 80), Forward(8000, 80, host_ip="127.0.0.2", name="x"), False),  # two addresses
        (Forward(8000, 80), Forward(8000, 80, proto="udp"), False),
        (Forward(8000, 80), Forward(8001, 80), False),
    ],
)
def test_same_socket_is_ip_aware_with_wildcards(a, b, same):
    assert forwards.same_socket(a, b) is same
    assert (forwards.clash(a, [b]) is b) is same


def test_check_rules_refuses_two_rules_on_one_socket():
    with pytest.raises(InputError, match="both use host port 8000/tcp"):
        forwards.check_rules([Forward(8000, 80, host_ip="0.0.0.0"), Forward(8000, 81, name="again")])


def test_with_ssh_keeps_an_existing_ssh_rule_and_adds_one_otherwise():
    kept = Forward(2299, 22, name="ssh")
    assert forwards.with_ssh([Forward(8000, 80)], current=[kept]) == [Forward(8000, 80), kept]
    added = forwards.with_ssh([Forward(8000, 80)])
    assert forwards.ssh_forward(added).guest_port == 22 and 2200 <= added[-1].host_port <= 2250


def test_the_docker_rule_vm_start_added_survives_a_converge_with_its_port():
    """vm.create converges rules to the profile: the daemon's rule must not flap (DOCKER_HOST stays)."""
    ssh, docker = Forward(2299, 22), Forward(2377, 2376)
    assert forwards.with_ssh([Forward(8000, 80), ssh], current=[docker, ssh]) == [Forward(8000, 80), ssh, docker]
    mine = Forward(3000, 2376)  # a profile that names its own daemon forward wins
    assert forwards.with_ssh([mine, ssh], current=[docker, ssh]) == [mine, ssh]
    wide = Forward(2376, 2376, host_ip="0.0.0.0", name="wide")  # never the rule DOCKER_HOST uses
    assert forwards.docker_forward([wide]) is None


def test_auto_forwards_survive_a_converge_unless_the_profile_wants_their_port():
    ssh, auto = Forward(2299, 22), Forward(8085, 8085, name=forwards.auto_name("tcp", 8085))
    assert forwards.is_auto(auto) and not forwards.is_auto(Forward(8085, 8085))
    assert forwards.with_ssh([ssh], current=[ssh, auto]) == [ssh, auto]
    mine = Forward(8085, 80)  # the profile's own forward on that host port wins
    assert forwards.with_ssh([ssh, mine], current=[ssh, auto]) == [ssh, mine]


def test_the_owner_of_a_busy_port_is_the_listening_process_with_its_pid():
    if not shutil.which("lsof"):
        pytest.skip("lsof is not installed")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        owner = forwards.owner(Forward(port, port))
    assert owner is not None and owner.startswith("python") and owner.endswith(f"(pid {os.getpid()})")


def test_a_new_docker_rule_is_loopback_in_its_own_range_and_skips_busy_and_taken_ports():
    low, high = forwards.DOCKER_HOST_RANGE
    first = forwards.new_docker_forward()
    assert first.host_ip == "127.0.0.1" and first.guest_port == 2376 and low <= first.host_port <= high
    with socket.socket() as holder:  # someone listens there now
        holder.bind(("127.0.0.1", first.host_port))
        holder.listen()
        busy = forwards.new_docker_forward()
    assert busy.host_port != first.host_port and low <= busy.host_port <= high
    taken = forwards.new_docker_forward(taken=[first.host_port])  # another VM's rule (not bound while it is off)
    assert taken.host_port != first.host_port


def test_an_ipv6_listener_makes_the_loopback_port_busy():
    """A program on [::]:PORT answers a browser's localhost:PORT, so the VM must not take it."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    with socket.socket(socket.AF_INET6) as holder:
        holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # IPv4 stays bindable
        try:
            holder.bind(("::", 0))
        except OSError:
            pytest.skip("IPv6 is disabled on this host")
        holder.listen()
        port = holder.getsockname()[1]
        with socket.socket() as v4:  # the oracle: IPv4 alone is free
            v4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            v4.bind(("127.0.0.1", port))
        assert forwards.probe(port, "127.0.0.1") == forwards.BUSY
        with pytest.raises(PortInUse, match=f"127.0.0.1:{port}/tcp is already in use"):
            forwards.require_free(Forward(port, 80))
    assert forwards.probe(port, "127.0.0.1") == forwards.FREE


def test_a_privileged_port_is_denied_not_in_use(tmp_path):
    """EACCES is its own message: nothing holds the port, this user may not bind it."""
    start = int(open("/proc/sys/net/ipv4/ip_unprivileged_port_start").read())
    setpriv = shutil.which("setpriv")
    if start <= 80 or (os.geteuid() == 0 and not setpriv):
        pytest.skip("ports below 1024 are not privileged here, or root cannot drop the privilege (setpriv)")
    # As root, drop CAP_NET_BIND_SERVICE for the child: it is then refused like any user.
    drop = [setpriv, "--bounding-set", "-net_bind_service"] if os.geteuid() == 0 else []
    code = (
        "from b2dkit import forwards\n"
        "from b2dkit.errors import PortDenied\n"
        "print(forwards.probe(80, '127.0.0.1'))\n"
        "try:\n"
        "    forwards.require_free(forwards.Forward(80, 80))\n"
        "except PortDenied as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([*drop, sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=True).stdout.splitlines()
    assert out[0] == "denied"
    assert "may not be bound by this user" in out[1] and "in use" not in out[1]
    assert f"ports below {start} need privileges" in out[1] and "b2dkit vm.forward 8080:80" in out[1]
    assert not issubclass(PortDenied, PortInUse)


@pytest.mark.parametrize("system, says", [
    ("Darwin", ["needs root on a single address", "0.0.0.0 needs no privilege", "b2dkit vm.forward 8080:80"]),
    ("Linux", ["ports below 1000 need privileges", "net.ipv4.ip_unprivileged_port_start=80",
               "b2dkit vm.forward 8080:80"]),
    ("Windows", ["Windows reserves it", "excludedportrange protocol=tcp", "b2dkit vm.forward 8080:80"]),
    ("FreeBSD", ["below 1024 need privileges", "b2dkit vm.forward 8080:80"]),
])
def test_a_denied_port_says_what_works_on_this_os(system, says):
    text = str(forwards.denied(Forward(80, 80), system=system, start=1000))
    assert text.startswith("host port 127.0.0.1:80/tcp may not be bound by this user")
    assert all(part in text for part in says), text
    assert "in use" not in text


def test_a_denied_port_alternative_is_one_the_user_may_bind():
    assert "vm.forward 8443:443`" in str(forwards.denied(Forward(443, 443), system="Linux", start=1024))
    assert "vm.forward 9000:53/udp`" in str(forwards.denied(Forward(53, 53, proto="udp"), system="Linux", start=9000))
    # on macOS 0.0.0.0 itself was refused: no advice to use it
    assert "0.0.0.0 needs no" not in str(forwards.denied(Forward(80, 80, host_ip="0.0.0.0"), system="Darwin"))


def test_linux_unprivileged_start_is_read_from_its_sysctl(tmp_path):
    sysctl = tmp_path / "ip_unprivileged_port_start"
    sysctl.write_text("443\n")
    assert forwards.unprivileged_port_start(sysctl) == 443
    assert forwards.unprivileged_port_start(tmp_path / "absent") == 1024


def test_both_providers_refuse_the_same_clash_with_the_same_error(tmp_path, monkeypatch):
    """A rule whose host socket another rule of the VM holds: one class, one text, on both."""
    import fakevbox

    from b2dkit.hypervisors.base import MachineSpec
    from b2dkit.hypervisors.qemu.provider import QemuProvider
    from b2dkit.hypervisors.virtualbox.provider import VirtualBoxProvider

    iso = tmp_path / "boot.iso"
    iso.write_bytes(b"an ISO for the definition only")
    fakevbox.install(tmp_path / "fakevbox", monkeypatch)
    ssh = forwards.pick_free_port(start=23000, end=23999)
    web = forwards.pick_free_port(start=24000, end=24999)
    spec = MachineSpec("dev", 1024, 1, 8, iso, [Forward(ssh, 22), Forward(web, 80, host_ip="0.0.0.0")],
                       "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyForTestsOnly b2dkit-test")
    errors = []
    for kind in (VirtualBoxProvider, QemuProvider):
        home = tmp_path / kind.name
        home.mkdir()
        monkeypatch.setenv("B2DKIT_HOME", str(home))
        vm = kind("dev")
        vm.create(spec)
        with pytest.raises(B2dkitError) as err:
            vm.add_forward(Forward(web, 8080, name="web"))  # 127.0.0.1:web is inside the wildcard rule's 0.0.0.0:web
        errors.append((type(err.value), str(err.value)))
        assert all(f.guest_port != 8080 for f in vm.forwards())
    assert errors[0] == errors[1]
    assert errors[0][0] is PortInUse
    assert f"host port 127.0.0.1:{web}/tcp is already forwarded by rule 'tcp-{web}' of VM 'dev'" in errors[0][1]


def test_a_taken_docker_port_of_a_stopped_vm_moves_within_its_range_and_a_free_one_stays():
    low, high = forwards.DOCKER_HOST_RANGE
    ssh, docker = Forward(2299, 22), forwards.new_docker_forward()
    assert forwards.moved_docker_forward([ssh, docker]) is None  # free: DOCKER_HOST stays
    assert forwards.moved_docker_forward([ssh, Forward(8000, 80)]) is None  # no daemon forward at all
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", docker.host_port))
        holder.listen()
        old, new = forwards.moved_docker_forward([ssh, docker], taken=[docker.host_port + 1])
    assert old == docker
    assert new.guest_port == 2376 and new.host_ip == "127.0.0.1" and low <= new.host_port <= high
    assert new.host_port not in (docker.host_port, docker.host_port + 1)  # not another VM's port either
