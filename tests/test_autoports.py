"""Ports that follow the containers: the allow-list, what the daemon publishes, and the policy."""

import pytest

from b2dkit import autoports
from b2dkit.autoports import Published, decide, parse_allow
from b2dkit.errors import InputError
from b2dkit.forwards import Forward

ALLOW = parse_allow(["3000-3999", "8000-8999", "5353/udp"])
SSH = Forward(host_port=2022, guest_port=22)
DOCKER = Forward(host_port=2376, guest_port=2376)


def free(_rule):
    return None


def never_asked(rule):
    raise AssertionError(f"the host was asked about {rule}, which b2dkit forwards already")


def web(port=8085, proto="tcp", name="web", ip="0.0.0.0"):
    return Published(port, proto, name, "0123456789ab", ip)


# -- the allow-list -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, low, high, proto", [
    ("3000-3999", 3000, 3999, None), (8080, 8080, 8080, None), ("5353/udp", 5353, 5353, "udp"),
    (" 9000-9001/TCP ", 9000, 9001, "tcp"),
])
def test_allow_items_parse(text, low, high, proto):
    assert autoports.parse_range(text) == autoports.PortRange(low, high, proto)


@pytest.mark.parametrize("text, said", [
    ("3999-3000", "ends below its start (write 3000-3999)"), ("80-", "not a port or a range"),
    ("1-70000", "expected a number from 1 to 65535"), ("53/sctp", "unknown protocol 'sctp'"),
    (True, "expected a port or a range"), (0, "expected a number from 1 to 65535"), ("all", "not a port"),
])
def test_bad_allow_items_are_one_line(text, said):
    with pytest.raises(InputError) as excinfo:
        autoports.parse_range(text)
    assert said in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_a_range_without_protocol_covers_both_and_one_with_it_only_that():
    tcp_only = autoports.parse_range("8000/tcp")
    assert autoports.allowed(3500, "udp", ALLOW) and autoports.allowed(3500, "tcp", ALLOW)
    assert autoports.allowed(5353, "udp", ALLOW) and not autoports.allowed(5353, "tcp", ALLOW)
    assert tcp_only.covers(8000, "tcp") and not tcp_only.covers(8000, "udp")
    assert [str(r) for r in ALLOW] == ["3000-3999", "8000-8999", "5353/udp"]


# -- what the daemon publishes ---------------------------------------------------------------------


def test_published_ports_from_containers_json():
    listing = [
        {"Id": "0123456789abcdef", "Names": ["/web"], "Ports": [
            {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8085, "Type": "tcp"},
            {"IP": "::", "PrivatePort": 80, "PublicPort": 8085, "Type": "tcp"},  # the same port, IPv6
            {"PrivatePort": 443, "Type": "tcp"},  # EXPOSEd only
        ]},
        {"Id": "fedcba9876543210", "Names": ["/dns"], "Ports": [
            {"IP": "127.0.0.1", "PrivatePort": 53, "PublicPort": 5353, "Type": "udp"}]},
        {"Id": "aaaaaaaaaaaa0000", "Names": ["/quiet"], "Ports": None},
    ]
    assert autoports.published(listing) == [
        Published(5353, "udp", "dns", "fedcba987654", "127.0.0.1"),
        Published(8085, "tcp", "web", "0123456789ab", "0.0.0.0"),
    ]
    assert autoports.published({"message": "not a list"}) == []


# -- the policy ------------------------------------------------------------------------------------


def test_an_allowed_port_gets_the_same_host_port_on_loopback():
    changes = decide([web()], [SSH, DOCKER], ALLOW, free)
    (added,) = changes.add
    assert added.rule == Forward(host_port=8085, guest_port=8085, name="auto-tcp-8085")
    assert added.rule.host_ip == "127.0.0.1" and added.container == "web"
    assert not changes.remove and not changes.refused
    assert changes.lines == ["add auto forward 127.0.0.1:8085 → 8085/tcp for container web"]


def test_a_port_off_the_allow_list_is_refused_with_the_list():
    changes = decide([web(9090)], [SSH], ALLOW, never_asked)
    (refused,) = changes.refused
    assert not changes.add and refused.reason == autoports.NOT_ALLOWED
    assert refused.line == ("9090/tcp of container web not forwarded: not on the profile's allow-list "
                            "(3000-3999, 8000-8999, 5353/udp)")


def test_a_host_clash_is_reported_with_its_owner_and_never_moved():
    changes = decide([web()], [SSH], ALLOW, lambda rule: (autoports.IN_USE, "python3 (pid 4242)"))
    (refused,) = changes.refused
    assert not changes.add and not changes.remove
    assert (refused.port, refused.container, refused.owner) == (8085, "web", "python3 (pid 4242)")
    assert refused.detail == ("host port 127.0.0.1:8085/tcp is in use by python3 (pid 4242); "
                              "it is not moved to another port")


def test_a_privileged_port_says_it_may_not_be_bound():
    allow = parse_allow(["80"])
    (refused,) = decide([web(80)], [SSH], allow, lambda rule: (autoports.DENIED, None)).refused
    assert refused.reason == autoports.DENIED and "may not be bound by this user" in refused.detail


def test_the_vms_own_forward_on_that_port_wins():
    profile_rule = Forward(host_port=8000, guest_port=8000)
    changes = decide([web(8000)], [SSH, profile_rule], ALLOW, never_asked)
    (refused,) = changes.refused
    assert not changes.add and refused.reason == autoports.FORWARDED
    assert "the VM's own forward tcp-8000 (127.0.0.1:8000 → 8000/tcp) has that host port" in refused.detail
    # Another host address still counts: the host port is the one the container was promised.
    wide = Forward(host_port=8000, guest_port=80, host_ip="0.0.0.0")
    assert decide([web(8000)], [wide], ALLOW, never_asked).refused[0].reason == autoports.FORWARDED


def test_a_forward_in_place_is_kept_without_asking_the_host():
    there = autoports.rule_for(web())
    changes = decide([web()], [SSH, there], ALLOW, never_asked)
    assert [o.rule for o in changes.keep] == [there] and not changes.add and not changes.remove


def test_a_stopped_containers_forward_goes_and_the_vms_own_stay():
    old = autoports.rule_for(web(3000, name="old"))
    changes = decide([], [SSH, DOCKER, old], ALLOW, never_asked)
    assert changes.remove == [old] and not changes.add
    assert changes.lines == ["remove auto forward 127.0.0.1:3000 → 3000/tcp (its container stopped)"]


def test_an_auto_forward_changed_by_hand_is_put_back():
    edited = Forward(host_port=8085, guest_port=80, name="auto-tcp-8085")
    changes = decide([web()], [edited], ALLOW, never_asked)  # our own rule holds the port: no probe
    assert changes.remove == [edited] and [o.rule for o in changes.add] == [autoports.rule_for(web())]


def test_a_port_on_the_guests_loopback_only_is_not_forwarded():
    (refused,) = decide([web(ip="127.0.0.1")], [], ALLOW, never_asked).refused
    assert refused.reason == autoports.GUEST_LOOPBACK and "-p 8085:" in refused.detail


def test_udp_and_tcp_of_one_port_are_two_forwards():
    changes = decide([web(3000), web(3000, "udp")], [], ALLOW, free)
    assert sorted(o.rule.name for o in changes.add) == ["auto-tcp-3000", "auto-udp-3000"]


def test_a_dismissed_port_is_refused_while_its_container_publishes_it_and_forgotten_after():
    dismissed = {"auto-tcp-8085": {"container": "web", "id": "0123456789ab"}}
    left = autoports.rule_for(web())  # the auto forward, if it is still there, goes too
    changes = decide([web()], [SSH, left], ALLOW, never_asked, dismissed)
    (refused,) = changes.refused
    assert not changes.add and changes.remove == [left] and changes.dismissed == dismissed
    assert refused.reason == autoports.DISMISSED and refused.container == "web"
    assert "dismissed with `b2dkit vm.unforward 8085`" in refused.detail
    assert "`b2dkit vm.forward 8085` brings it back" in refused.detail
    assert "`b2dkit vm.forward 5353/udp`" in autoports.dismissed_detail(5353, "udp")
    # The container is gone: the dismissal ends with it (the record's next value drops it).
    assert decide([], [SSH], ALLOW, never_asked, dismissed).dismissed == {}
    # Another container publishing the same port is not the one dismissed: a fresh forward.
    other = Published(8085, "tcp", "web2", "fedcba987654")
    changes = decide([other], [SSH], ALLOW, free, dismissed)
    assert [o.container for o in changes.add] == ["web2"] and not changes.refused and changes.dismissed == {}


def test_a_dismissal_of_unknown_owner_binds_to_the_publisher_and_outlives_an_own_forward():
    unknown = {"auto-tcp-8085": {"container": None, "id": None}}  # vm.unforward found no owner in the record
    changes = decide([web()], [SSH], ALLOW, never_asked, unknown)
    assert changes.refused[0].reason == autoports.DISMISSED
    assert changes.dismissed == {"auto-tcp-8085": {"container": "web", "id": "0123456789ab"}}
    # `vm.forward 8085` (the way back) wins as the VM's own forward; the dismissal stays meanwhile.
    own = Forward(host_port=8085, guest_port=8085)
    changes = decide([web()], [SSH, own], ALLOW, never_asked, changes.dismissed)
    assert changes.refused[0].reason == autoports.FORWARDED and "auto-tcp-8085" in changes.dismissed


def test_the_real_host_check_names_the_listening_process(tmp_path):
    import os
    import shutil
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        reason, owner = autoports.host_check(Forward(host_port=port, guest_port=port))
    assert reason == autoports.IN_USE
    if shutil.which("lsof"):
        assert owner is not None and f"(pid {os.getpid()})" in owner
    assert autoports.host_check(Forward(host_port=port, guest_port=port)) is None  # closed: free again


# -- what vm.forwards shows ------------------------------------------------------------------------


def test_forward_rows_name_the_container_of_each_auto_forward(tmp_path, monkeypatch):
    from b2dkit import paths

    monkeypatch.setenv("B2DKIT_HOME", str(tmp_path))
    paths.ensure_dir(paths.vm_dir("vm1"))
    auto = autoports.rule_for(web())
    autoports._save("vm1", {"owners": {auto.name: {"container": "web", "id": "0123456789ab"}}})
    rows = autoports.forward_rows("vm1", [auto, SSH])
    assert [r.get("auto") for r in rows] == [None, {"container": "web", "id": "0123456789ab"}]
    assert autoports.rule_line(rows[1]).endswith("127.0.0.1:8085 -> 8085/tcp  (auto: container web)")
    (paths.vm_dir("vm1") / autoports.STATE).write_text("{truncated")
    assert autoports.forward_rows("vm1", [auto])[0]["auto"] == {"container": None, "id": None}


# -- the follower against a daemon that speaks TLS over a real socket ---------------------------------


class _Daemon:
    """A tiny Docker daemon stand-in: mutual TLS with the VM's certs, ``/containers/json`` from a list,
    ``/events`` as a chunked stream the test feeds; ``down()`` drops it, ``up()`` brings it back."""

    def __init__(self, name: str, port: int = 0):
        import queue
        import ssl

        from b2dkit import dockerd, tlscerts

        certs = dockerd.cert_dir(name)
        tlscerts.ensure(certs, name)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs / tlscerts.CA_CERT))
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_cert_chain(str(certs / tlscerts.SERVER_CERT), str(certs / tlscerts.SERVER_KEY))
        self.containers: list = []
        self.events: "queue.Queue" = queue.Queue()
        self.streams = 0
        self.port = port
        self.server = None
        self.up()

    def up(self) -> None:
        import http.server
        import json
        import threading

        daemon = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.startswith("/containers/json"):
                    body = json.dumps(daemon.containers).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                assert self.path == autoports.EVENTS, self.path
                daemon.streams += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                while True:
                    event = daemon.events.get()
                    if event is None:  # the daemon goes away: its socket closes mid-stream
                        self.close_connection = True
                        return
                    line = json.dumps(event).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.server.socket = self.context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        self.events.put(None)  # ends the open stream
        self.server.shutdown()
        self.server.server_close()

    def event(self, name: str, action: str) -> None:
        self.events.put({"Type": "container", "Action": action, "Actor": {"Attributes": {"name": name}}})


class _Hypervisor:
    """The VM's NAT rules in memory (the providers' own add/remove are tested with each provider)."""

    def __init__(self, rules):
        import threading

        self.rules = list(rules)
        self.lock = threading.Lock()

    def forwards(self):
        with self.lock:
            return list(self.rules)

    def add_forward(self, rule):
        with self.lock:
            self.rules.append(rule)

    def remove_forward(self, name):
        with self.lock:
            self.rules = [r for r in self.rules if r.name != name]


def _container(name, port, ident="0123456789abcdef"):
    return {"Id": ident, "Names": [f"/{name}"], "Ports": [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": port,
                                                          "Type": "tcp"}]}


def _until(condition, what="the follower's change"):
    from waiting import wait_for

    return wait_for(condition, 20.0, what)


def _followed_vm(tmp_path, monkeypatch):
    """VM vm1 with a fake daemon on its Docker forward and two free allowed ports A < B."""
    from b2dkit import paths
    from b2dkit.forwards import pick_free_port

    monkeypatch.setenv("B2DKIT_HOME", str(tmp_path))
    paths.ensure_dir(paths.vm_dir("vm1"))
    daemon = _Daemon("vm1")
    a = pick_free_port(start=8100, end=8999)
    b = pick_free_port(start=a + 1, end=8999)
    return daemon, a, b, _Hypervisor([SSH, Forward(host_port=daemon.port, guest_port=2376)])


def test_the_follower_follows_events_and_converges_after_the_daemon_comes_back(tmp_path, monkeypatch):
    daemon, a, b, vm = _followed_vm(tmp_path, monkeypatch)
    changed, log = [], []
    daemon.containers = [_container("web", a)]
    follower = autoports.Follower("vm1", vm, parse_allow(["8000-8999"]), log.append, lambda: changed.append(1))
    follower.start()
    try:
        _until(lambda: changed)  # listed on connect: forwarded, recorded, and the watcher told (relays)
        assert autoports.auto_name("tcp", a) in {r.name for r in vm.forwards()}
        assert autoports.owners("vm1") == {f"auto-tcp-{a}": {"container": "web", "id": "0123456789ab"}}
        assert autoports.state("vm1")["daemon"] == "followed"
        daemon.containers = []
        daemon.event("web", "die")
        _until(lambda: autoports.owners("vm1") == {})  # the record is written last: removed and logged by then
        assert not [r for r in vm.forwards() if r.name.startswith("auto-")]
        assert f"auto ports: removed 127.0.0.1:{a} → {a}/tcp (container web stopped)" in log
        daemon.down()  # the daemon (or the VM) goes away; a container starts meanwhile
        _until(lambda: "unreachable" in autoports.state("vm1").get("daemon", ""))
        daemon.containers = [_container("api", b, "fedcba9876543210")]
        daemon.up()
        _until(lambda: autoports.auto_name("tcp", b) in autoports.owners("vm1"))  # no event: the re-list
        assert autoports.auto_name("tcp", b) in {r.name for r in vm.forwards()}
        assert daemon.streams == 2 and autoports.state("vm1")["daemon"] == "followed"
    finally:
        follower.stop()
        daemon.down()
    follower.thread.join(10)  # the stream ended: the thread sees it was asked to stop
    assert not follower.thread.is_alive()


def test_a_dismissed_port_stays_off_until_its_container_is_gone_then_a_new_one_gets_it(tmp_path, monkeypatch):
    daemon, a, b, vm = _followed_vm(tmp_path, monkeypatch)
    rule_a, rule_b = (autoports.auto_name("tcp", port) for port in (a, b))
    log = []
    daemon.containers = [_container("web", a)]
    follower = autoports.Follower("vm1", vm, parse_allow(["8000-8999"]), log.append).start()
    names = lambda: {r.name for r in vm.forwards()}  # noqa: E731
    try:
        _until(lambda: rule_a in autoports.owners("vm1"))  # the record is written after the forward
        line = autoports.dismiss("vm1", vm, autoports.rule_for(web(a)))  # what vm.unforward A does
        assert rule_a not in names() and f"removed auto forward 127.0.0.1:{a} → {a}/tcp of container web" in line
        assert autoports.state("vm1")["dismissed"] == {rule_a: {"container": "web", "id": "0123456789ab"}}
        # The next event re-lists: web still publishes A (not re-added), and api's B is forwarded.
        daemon.containers = [_container("web", a), _container("api", b, "fedcba9876543210")]
        daemon.event("api", "start")
        _until(lambda: rule_b in autoports.owners("vm1"))
        assert rule_b in names() and rule_a not in names()
        (refused,) = autoports.state("vm1")["refused"]
        assert (refused["port"], refused["reason"], refused["container"]) == (a, autoports.DISMISSED, "web")
        assert f"`b2dkit vm.forward {a}` brings it back" in refused["detail"]
        # web stops: its dismissal ends with it.
        daemon.containers = [_container("api", b, "fedcba9876543210")]
        daemon.event("web", "die")
        _until(lambda: not autoports.state("vm1").get("dismissed"), "the dismissal to end")
        assert rule_a not in names() and not autoports.state("vm1")["refused"]
        # A new container publishing A: a fresh auto forward, owned by it.
        daemon.containers.append(_container("web2", a, "aaaabbbbccccdddd"))
        daemon.event("web2", "start")
        _until(lambda: rule_a in autoports.owners("vm1"))
        assert rule_a in names() and autoports.owners("vm1")[rule_a] == {"container": "web2", "id": "aaaabbbbcccc"}
    finally:
        follower.stop()
        daemon.down()


@pytest.mark.parametrize("vbox_version", ["6.1.50", "7.1.4"], indirect=True)  # the old NAT engine, libslirp
def test_the_follower_changes_a_running_virtualbox_vm_live(tmp_path, monkeypatch, vbox_version):
    """The real VirtualBoxProvider on a running (fake) VM: adds and removes are ``controlvm natpf1``."""
    import fakevbox

    from b2dkit.forwards import pick_free_port
    from b2dkit.hypervisors.base import MachineSpec
    from b2dkit.hypervisors.virtualbox.provider import VirtualBoxProvider

    fake = fakevbox.install(tmp_path / "fakevbox", monkeypatch)
    iso = tmp_path / "b2d.iso"
    iso.write_bytes(b"not really an iso")
    ssh, docker = pick_free_port(start=2200, end=2250), pick_free_port(start=2376, end=2426)
    vb = VirtualBoxProvider("dev")
    vb.create(MachineSpec("dev", 512, 1, 4, iso, [Forward(ssh, 22), Forward(docker, 2376)], "ssh-ed25519 AAAA t"))
    vb.start()
    # The guest's dockerd behind the Docker forward: the fake's NAT keeps no port bound (real
    # VirtualBox's would hold it and carry the connection in), so the stand-in listens there itself.
    daemon = _Daemon("dev", port=docker)
    a = pick_free_port(start=8100, end=8999)
    rule = autoports.rule_for(web(a))
    daemon.containers = [_container("web", a)]
    changed, log = [], []
    follower = autoports.Follower("dev", vb, parse_allow(["8000-8999"]), log.append, lambda: changed.append(1))
    mark = len(fake.calls())
    follower.start()
    try:
        _until(lambda: rule.name in autoports.owners("dev"))  # the record is written after the forward
        assert rule in vb.forwards()
        natpf = [c for c in fake.calls()[mark:] if c[:3] == ["controlvm", "dev", "natpf1"]]
        assert natpf == [["controlvm", "dev", "natpf1", f"auto-tcp-{a},tcp,127.0.0.1,{a},,{a}"]]
        assert not [c for c in fake.calls()[mark:] if c[0] == "modifyvm"]  # never on a running VM
        daemon.containers = []
        daemon.event("web", "die")
        _until(lambda: autoports.owners("dev") == {})
        assert rule not in vb.forwards()
        assert ["controlvm", "dev", "natpf1", "delete", f"auto-tcp-{a}"] in fake.calls()[mark:]
        assert f"auto ports: removed 127.0.0.1:{a} → {a}/tcp (container web stopped)" in log
        assert fake.machine("dev")["state"] == "running"
    finally:
        follower.stop()
        daemon.down()


def test_the_record_is_one_read_modify_write_at_a_time(tmp_path, monkeypatch):
    """The follower (a thread of the watcher) and vm.unforward (another process) both update it:
    an update that started waits for the one in progress, so neither loses the other's change."""
    import threading

    from b2dkit import paths

    monkeypatch.setenv("B2DKIT_HOME", str(tmp_path))
    paths.ensure_dir(paths.vm_dir("vm1"))
    inside, release, done = threading.Event(), threading.Event(), []

    def slow_writer():
        with autoports.updating("vm1") as data:
            inside.set()
            release.wait(10)
            data["owners"] = {"auto-tcp-8085": {"container": "web", "id": "0123456789ab"}}

    def second_writer():
        with autoports.updating("vm1") as data:
            data["dismissed"] = {"auto-tcp-3000": {"container": "api", "id": "ba9876543210"}}
        done.append(1)

    first = threading.Thread(target=slow_writer)
    first.start()
    inside.wait(10)
    second = threading.Thread(target=second_writer)
    second.start()
    second.join(0.3)
    assert not done  # it waits for the lock, rather than reading the record the first is rewriting
    release.set()
    first.join(10)
    second.join(10)
    assert set(autoports.state("vm1")) == {"owners", "dismissed"}


# -- the hooks: vm.forwards / vm.status, vm.create keeps them, vm.stop and vm.forward remove them ----


@pytest.fixture(params=["qemu", "virtualbox-6.1.50", "virtualbox-7.1.4"])
def auto_vm(request, tmp_path, monkeypatch, capsys, boot2docker_iso):
    """A VM with ``ports: auto``, not started, holding one auto forward as the watcher leaves it:
    on QEMU, and on VirtualBox (the fake) with the old NAT engine and with libslirp."""
    import shutil

    from b2dkit import lifecycle, machines
    from cli import run
    from fakevbox import install
    from ports import free_port

    provider, _, version = request.param.partition("-")
    fake = None
    if version:
        monkeypatch.setenv("FAKEVBOX_VERSION", version)
        fake = install(tmp_path / "fakevbox", monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    iso = tmp_path / "b2d.iso"
    shutil.copyfile(boot2docker_iso, iso)
    prof = tmp_path / "auto.yaml"
    prof.write_text(f"extends: default\nprovider: {provider}\ndisk: 1024\nports: {{auto: {{allow: [8000-8999]}}}}\n"
                    f"forwards:\n  - {{host: 2022, remove: true}}\n  - {{host: {free_port()}, guest: 22}}\n")
    run("vm.create", f"--profile={prof}", "--name=qa", f"--iso={iso}", "--no-start")
    machine = machines.load("qa")
    assert machine.auto_ports == ["8000-8999"] and machine.provider == provider
    rule = autoports.rule_for(web())
    lifecycle.provider_for(machine).add_forward(rule)
    autoports._save("qa", {"owners": {rule.name: {"container": "web", "id": "0123456789ab"}}, "daemon": "followed",
                           "refused": [autoports.Refused(9090, "tcp", "api", "ba9876543210", autoports.NOT_ALLOWED,
                                                         "not on the profile's allow-list (8000-8999)").to_dict()]})
    capsys.readouterr()
    return {"machine": machine, "profile": prof, "iso": iso, "rule": rule, "fake": fake}


def test_vm_forwards_and_status_name_the_container_in_their_schemas(auto_vm, capsys):
    import json

    from cli import task
    from jsonschemas import validate

    code, out = task(capsys, "vm.forwards", "--name=qa", "--json")
    doc = json.loads(out.out)
    validate("vm.forwards", doc)
    (row,) = [r for r in doc["forwards"] if r["name"] == "auto-tcp-8085"]
    assert row["auto"] == {"container": "web", "id": "0123456789ab"} and row["host_ip"] == "127.0.0.1"
    assert all("auto" not in r for r in doc["forwards"] if r is not row)
    assert doc["auto_ports"]["allow"] == ["8000-8999"] and doc["auto_ports"]["refused"][0]["port"] == 9090
    code, out = task(capsys, "vm.forwards", "--name=qa")
    assert "auto-tcp-8085  127.0.0.1:8085 -> 8085/tcp  (auto: container web)" in out.out
    assert "auto ports: allow 8000-8999; daemon followed" in out.out
    assert "9090/tcp of container api not forwarded: not on the profile's allow-list (8000-8999)" in out.out
    code, out = task(capsys, "vm.status", "--name=qa", "--json")
    status = json.loads(out.out)
    validate("vm.status", status)
    assert status["auto_ports"] == doc["auto_ports"]
    code, out = task(capsys, "vm.status", "--name=qa")
    assert "127.0.0.1:8085 -> 8085/tcp  (auto-tcp-8085; auto: container web)" in out.out


def test_a_second_vm_create_keeps_the_auto_forward(auto_vm, capsys):
    from b2dkit import lifecycle
    from cli import run

    run("vm.create", f"--profile={auto_vm['profile']}", "--name=qa", f"--iso={auto_vm['iso']}", "--no-start")
    assert auto_vm["rule"] in lifecycle.provider_for(auto_vm["machine"]).forwards()


def test_a_profile_forward_on_the_port_replaces_the_auto_forward(auto_vm, capsys):
    from b2dkit import lifecycle

    with open(auto_vm["profile"], "a") as f:
        f.write("  - {host: 8085, guest: 80}\n")
    from cli import run

    run("vm.create", f"--profile={auto_vm['profile']}", "--name=qa", f"--iso={auto_vm['iso']}", "--no-start")
    rules = lifecycle.provider_for(auto_vm["machine"]).forwards()
    assert Forward(host_port=8085, guest_port=80) in rules and auto_vm["rule"] not in rules


def test_vm_forward_on_that_port_replaces_the_auto_forward(auto_vm, capsys):
    import socket

    from b2dkit import lifecycle
    from cli import task

    with socket.socket() as s:  # held as the NAT holds it while the VM runs (a stopped VM's rule binds nothing)
        s.bind(("127.0.0.1", 8085))
        s.listen()
        code, out = task(capsys, "vm.forward", "8085:80", "--name=qa")
    assert "replacing the auto forward 127.0.0.1:8085 → 8085/tcp (a forward of your own wins)" in out.out
    assert code == 3 and "127.0.0.1:8085/tcp is already in use by python" in out.err  # then the host's check
    assert auto_vm["rule"] not in lifecycle.provider_for(auto_vm["machine"]).forwards()


def test_vm_forward_replaces_the_auto_forward_of_a_stopped_vm_whose_port_is_free(auto_vm, capsys):
    from b2dkit import lifecycle
    from cli import task

    code, out = task(capsys, "vm.forward", "8085:80", "--name=qa")
    assert code == 0, out.err
    assert out.out == ("replacing the auto forward 127.0.0.1:8085 → 8085/tcp (a forward of your own wins)\n"
                       "forwarding 127.0.0.1:8085 -> guest 80/tcp\n")
    rules = lifecycle.provider_for(auto_vm["machine"]).forwards()
    assert Forward(host_port=8085, guest_port=80) in rules and auto_vm["rule"] not in rules


def test_vm_unforward_of_an_auto_forward_dismisses_it_for_that_container(auto_vm, capsys):
    import json

    from b2dkit import lifecycle, paths
    from cli import task
    from jsonschemas import validate

    provider = lifecycle.provider_for(auto_vm["machine"])
    code, out = task(capsys, "vm.unforward", "8085", "--name=qa")
    assert code == 0, out.err
    assert out.out == ("removed auto forward 127.0.0.1:8085 → 8085/tcp of container web; not forwarded again while "
                       "that container publishes it (`b2dkit vm.forward 8085` brings it back)\n")
    assert auto_vm["rule"] not in provider.forwards()
    record = autoports.state("qa")
    assert record["dismissed"] == {"auto-tcp-8085": {"container": "web", "id": "0123456789ab"}}
    assert record["owners"] == {} and record["daemon"] == "followed"  # the rest of the record is kept
    # vm.forwards shows it among the refused ports at once, before the watcher looks again.
    code, out = task(capsys, "vm.forwards", "--name=qa", "--json")
    doc = json.loads(out.out)
    validate("vm.forwards", doc)
    refused = {row["port"]: row for row in doc["auto_ports"]["refused"]}
    assert refused[8085]["reason"] == "dismissed" and refused[8085]["container"] == "web"
    assert refused[9090]["reason"] == "not allowed"
    assert not [r for r in doc["forwards"] if "auto" in r]
    code, out = task(capsys, "vm.forwards", "--name=qa")
    assert ("8085/tcp of container web not forwarded: dismissed with `b2dkit vm.unforward 8085`: not forwarded "
            "again while this container publishes it; `b2dkit vm.forward 8085` brings it back") in out.out
    code, out = task(capsys, "vm.status", "--name=qa", "--json")
    validate("vm.status", json.loads(out.out))
    # Neither an auto nor a plain rule there now: the provider's one line, as for any unknown port.
    code, out = task(capsys, "vm.unforward", "8085", "--name=qa")
    assert code == 2 and "has no forward named 'tcp-8085'" in out.err and out.err.count("\n") == 1
    # A plain rule is removed as before (nothing recorded), and vm.stop ends the dismissal with the record.
    assert task(capsys, "vm.forward", "8090", "--name=qa")[0] == 0
    code, out = task(capsys, "vm.unforward", "8090", "--name=qa")
    assert (code, out.out) == (0, "removed forward tcp-8090\n")
    assert autoports.state("qa")["dismissed"] == record["dismissed"]
    assert task(capsys, "vm.stop", "--name=qa")[0] == 0
    assert not (paths.vm_dir("qa") / autoports.STATE).exists()


def test_vm_stop_removes_the_auto_forwards_and_their_record(auto_vm, capsys):
    from b2dkit import lifecycle, paths
    from cli import task

    code, out = task(capsys, "vm.stop", "--name=qa")
    assert code == 0, out.err
    assert "removed auto forward 127.0.0.1:8085 → 8085/tcp (container web)" in out.out
    rules = lifecycle.provider_for(auto_vm["machine"]).forwards()
    assert not [r for r in rules if r.name.startswith("auto-")] and any(r.guest_port == 22 for r in rules)
    assert not (paths.vm_dir("qa") / autoports.STATE).exists()
