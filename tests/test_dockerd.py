"""dockerd.py on the host side: profile image tarballs checked before the VM is touched, and the
daemon's API over mutual TLS against a real TLS server holding tlscerts' server cert.

(The guest side — certs installed, the daemon restarted, readiness — is test_docker_e2e.py under QEMU.)
"""

import gzip
import http.server
import io
import json
import ssl
import tarfile
import threading

import pytest

from b2dkit import dockerd, paths, tlscerts
from b2dkit.errors import GuestError, InputError
from b2dkit.forwards import Forward


def image_tar(files) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


GOOD = image_tar({"manifest.json": b"[]", "layer.tar": b"x" * 20000})


def test_good_tarballs_plain_or_compressed_pass(tmp_path):
    (tmp_path / "a.tar").write_bytes(GOOD)
    (tmp_path / "b.tar.gz").write_bytes(gzip.compress(GOOD))
    assert dockerd.check_images([tmp_path / "a.tar", str(tmp_path / "b.tar.gz")]) == [
        tmp_path / "a.tar", tmp_path / "b.tar.gz"]


@pytest.mark.parametrize("name, data, words", [
    ("cut.tar", GOOD[: len(GOOD) // 2], "is not a readable tar archive"),
    ("cut.tar.gz", gzip.compress(GOOD)[:-20], "is not a readable tar archive"),
    ("noise.tar", b"not a tarball at all" * 50, "is not a readable tar archive"),
    ("other.tar", image_tar({"hello.txt": b"hi"}), "has no manifest.json"),
])
def test_a_bad_tarball_is_one_line_naming_it(tmp_path, name, data, words):
    (tmp_path / "ok.tar").write_bytes(GOOD)
    (tmp_path / name).write_bytes(data)
    with pytest.raises(InputError) as err:
        dockerd.check_images([tmp_path / "ok.tar", tmp_path / name])
    text = str(err.value)
    assert f"profile image {tmp_path / name} " in text and words in text and "\n" not in text


def test_a_missing_tarball_and_a_name_clash_are_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        dockerd.check_images([tmp_path / "none.tar"])
    (tmp_path / "x").mkdir()
    for where in (tmp_path, tmp_path / "x"):
        (where / "app.tar").write_bytes(GOOD)
    with pytest.raises(InputError, match="same file name 'app.tar'"):
        dockerd.check_images([tmp_path / "app.tar", tmp_path / "x" / "app.tar"])


def test_plan_lines_say_what_start_will_do():
    plan = dockerd.Plan(has_docker=True, certs=[tlscerts.Change("ca.pem", "missing")], install=["ca.pem"],
                        forward=Forward(2377, 2376), tz="CST-8", localtime=["/etc/localtime"])
    assert plan.lines == [
        "issue ca.pem: missing",
        "install ca.pem into the guest's /var/lib/boot2docker",
        "restart the guest's Docker daemon (it reads them at start)",
        "forward 127.0.0.1:2377 → 2376/tcp (the Docker daemon, TLS)",
        "write /etc/localtime for TZ=CST-8 (containers mount it)",
    ]
    assert dockerd.Plan(has_docker=True, current=Forward(2377, 2376)).lines == []
    failed = dockerd.Plan(has_docker=True, failed=True)
    assert failed.restart and failed.lines == [
        "restart the guest's Docker daemon (its last start failed: see /var/log/docker.log)"]


class _Guest:
    """A session whose probe command prints what a guest would."""

    def __init__(self, stdout, ok=True):
        self.stdout, self.ok = stdout, ok

    def run(self, command, check=True, timeout=None):
        return self


READY_LINE = "b2dkit-guest: docker: ready (server 20.10.24+dfsg1; unix socket and tcp 2376 with TLS) [31.2s]"


@pytest.mark.parametrize("stdout, state, down", [
    (f"{READY_LINE}\nrunning\n", "running", False),
    (f"{READY_LINE}\nnot running\n", "not running", True),  # killed after it came up
    ("b2dkit-guest: docker: dockerd stopped [80.1s]\nnot running\n", "not running", True),
    ("b2dkit-guest: docker: starting dockerd (unix socket only) [14.0s]\nstarting\n", "starting", False),
    ("not running\n", "not running", False),  # the boot has not reached the daemon yet
    ("b2dkit-guest: docker: ERROR: dockerd exited during start-up [20.0s]\nnot running\n", "not running",
     False),  # failed, not down: Plan.failed restarts it
])
def test_the_probe_tells_a_daemon_that_went_down_from_one_not_started_yet(stdout, state, down):
    seen = dockerd.probe(_Guest(stdout), None)
    assert seen.found and seen.state == state and seen.down is down
    assert dockerd.daemon_state(_Guest(stdout)) == state


def test_a_guest_without_docker_is_found_so_and_required_makes_it_an_error():
    assert dockerd.probe(_Guest("", ok=False), None) == dockerd.Probe(found=False)
    assert dockerd.probe(_Guest("running\n"), False).found is False  # docker: false asks nothing
    with pytest.raises(GuestError, match="no /etc/init.d/docker"):
        dockerd.probe(_Guest("", ok=False), True)


def test_a_down_daemon_and_an_asked_restart_are_restarts_with_their_reason():
    down = dockerd.Plan(has_docker=True, down=True)
    assert down.restart and down.lines == [
        "start the guest's Docker daemon (it is not running: see /var/log/docker.log)"]
    asked = dockerd.Plan(has_docker=True, asked=True)
    assert asked.restart and asked.lines == ["restart the guest's Docker daemon (asked)"]
    both = dockerd.Plan(has_docker=True, install=["ca.pem"], asked=True)  # one restart, said once
    assert [line for line in both.lines if "restart" in line] == [
        "restart the guest's Docker daemon (it reads them at start)"]


# -- the API over TLS -------------------------------------------------------------------------------


class _Daemon(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/_ping":
            body, kind = b"OK", "text/plain; charset=utf-8"
        elif self.path == "/info":
            body = json.dumps({"ServerVersion": "20.10.24+dfsg1", "Images": 3, "Containers": 2,
                               "ContainersRunning": 1}).encode()
            kind = "application/json"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def daemon(tmp_path):
    """A TLS server like dockerd --tlsverify: the VM's server cert, client certs of its CA only."""
    certs = dockerd.cert_dir("dev")
    tlscerts.ensure(certs, "dev")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "server.pem", certs / "server-key.pem")
    context.load_verify_locations(certs / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Daemon)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Forward(server.server_address[1], 2376)
    server.shutdown()
    server.server_close()


def test_summary_is_one_info_call_over_mutual_tls(daemon):
    assert dockerd.api("dev", daemon, "/_ping") == "OK"
    assert dockerd.summary("dev", daemon) == {
        "reachable": True, "host": f"tcp://127.0.0.1:{daemon.host_port}", "version": "20.10.24+dfsg1",
        "images": 3, "containers": 2, "running": 1, "log": "/var/log/docker.log"}


def test_another_vms_client_cert_is_refused_and_says_unreachable(daemon):
    other = paths.vm_dir("other") / "certs"
    tlscerts.ensure(other, "other")
    for name in tlscerts.CLIENT_FILES:  # "dev" now holds another CA's client side
        (dockerd.cert_dir("dev") / name).write_bytes((other / name).read_bytes())
    found = dockerd.summary("dev", daemon)
    assert found["reachable"] is False and "SSL" in found["error"]


def test_nothing_listening_is_unreachable_not_an_exception(tmp_path):
    tlscerts.ensure(dockerd.cert_dir("dev"), "dev")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    found = dockerd.summary("dev", Forward(port, 2376))
    assert found["reachable"] is False and found["error"] == "ConnectionError"


def test_changes_is_the_pure_diff_of_the_docker_facts(b2dkit_home):
    """Certs to issue, server files to install, the 2376 forward and localtime, from facts alone."""
    zone = dockerd.localtime("CST-8")
    import hashlib

    fresh = dockerd.Facts(has_docker=True, certs=(tlscerts.Change("ca.pem", "missing"),), taken=frozenset({2376}))
    plan = dockerd.changes(fresh, tz="CST-8")
    assert [c.text for c in plan.changes] == [
        "issue ca.pem: missing",
        f"install {', '.join(tlscerts.SERVER_FILES)} into the guest's /var/lib/boot2docker",
        "restart the guest's Docker daemon (it reads them at start)",
        "forward 127.0.0.1:2377 → 2376/tcp (the Docker daemon, TLS)",
        f"write {', '.join(dockerd.LOCALTIME_FILES)} for TZ=CST-8 (containers mount it)",
    ]
    wanted = {n: f"{i:064x}" for i, n in enumerate(tlscerts.SERVER_FILES)}
    there = {f"{dockerd.GUEST_DIR}/{n}": d for n, d in wanted.items()}
    there.update({p: hashlib.sha256(zone).hexdigest() for p in dockerd.LOCALTIME_FILES})
    done = dockerd.Facts(has_docker=True, wanted=wanted, there=there, current=Forward(2380, 2376))
    assert dockerd.changes(done, tz="CST-8").lines == []
    assert dockerd.changes(done, tz="CST-8").rule == Forward(2380, 2376)
    assert dockerd.changes(dockerd.Facts(has_docker=False)).has_docker is False
