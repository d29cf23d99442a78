"""Docker from the host, end to end: the tasks a user types, on QEMU, with the guest-docker flavour,
and Debian's /usr/bin/docker talking to the VM's daemon with the settings ``vm.env`` prints.

One VM is shared by the tests of this module (they run in order, each building on the last):
create sets Docker up (certs, forward, localtime, profile images, readiness) → vm.env → docker over
TLS → status → the seed's folder chain and port chain → docker build → the team's time zone → a
re-start changes nothing → images and a named volume survive stop/start and destroy/create → a
corrupt profile image and a daemon that cannot start are one line each → the faults: a daemon
killed in the guest (vm.status says so, vm.start starts it), vm.docker --restart, certs deleted on
the host (re-issued), and a taken Docker port (the forward moves, vm.env follows).
"""

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import qemuclean
from b2dkit import paths
from b2dkit.main import make_program
from cli import run, run_failing, task
from jsonschemas import validate
from waiting import wait_for
from ports import free_port as _free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

VM = "e2e-docker"
AUTO_ALLOW = "8100-8999"  # ports: auto in this module's profile (the watcher follows it only where a test turns it on)
DOCKER = "/usr/bin/docker"
REPO = Path(__file__).resolve().parents[1]


def team_image(path: Path, tag: str) -> Path:
    """A `docker save` tarball made offline by guest/build.py's base_image (no registry here)."""
    sys.path.insert(0, str(REPO / "guest"))
    try:
        import build
    finally:
        sys.path.pop(0)
    tarball, _ = build.base_image(Path("/bin/busybox").read_bytes(), ["/bin/sh", "/bin/cat"], "test", tag=tag)
    path.write_bytes(tarball)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if not os.path.exists(DOCKER):
        pytest.skip("Debian's docker CLI is not installed (apt-get install docker.io)")
    root = tmp_path_factory.mktemp("docker-e2e")
    home = root / "home"
    home.mkdir()
    profile = root / "docker.yaml"
    images = team_image(root / "team-base.tar", "team/base:1")
    app_port = _free_port()
    profile.write_text(
        f"""extends: cst
name: {VM}
provider: qemu
memory: 1024
cpus: 2
disk: 4096
iso: {{build: guest-docker}}
boot_codes: {{loglevel: 4}}  # boot2docker's 3 hides hung tasks, RCU stalls and the OOM killer from the serial log
forwards:
  - {{host: 2022, remove: true}}
  - {{host: 8000, remove: true}}
  - {{host: {_free_port()}, guest: 22}}
  - {{host: {app_port}, guest: 8000}}
images: [{images}]
ports: {{auto: {{allow: [{AUTO_ALLOW}]}}}}
"""
    )
    mp = pytest.MonkeyPatch()
    b2dkit_home = root / "b2dkit-home"
    mp.setenv("B2DKIT_HOME", str(b2dkit_home))
    mp.setenv("HOME", str(home))
    mp.setenv("B2DKIT_QEMU_ACCEL", os.environ.get("B2DKIT_QEMU_ACCEL", "tcg"))
    yield {"root": root, "home": home, "profile": profile, "b2dkit_home": b2dkit_home, "app_port": app_port,
           "mount": home / "workspace" / "dev", "images": images}
    mp.setenv("B2DKIT_HOME", str(b2dkit_home))
    try:
        make_program().run(["b2dkit", "vm.destroy", f"--name={VM}", "--yes", "--purge"], exit=False)
    except BaseException:  # noqa: B036 - teardown must go on to kill QEMU whatever happened
        pass
    qemuclean.kill_all(root)
    mp.undo()



@pytest.fixture(autouse=True)
def _same_home(world, monkeypatch):
    monkeypatch.setenv("B2DKIT_HOME", str(world["b2dkit_home"]))


def guest(capfd, command):
    capfd.readouterr()
    run("vm.ssh", "-c", command)
    return capfd.readouterr().out.strip()


def docker_env(capfd, *args) -> dict:
    """What ``eval "$(b2dkit vm.env)"`` leaves in a POSIX shell's environment."""
    code, out = task(capfd, "vm.env", *args)
    assert code == 0, out.err
    shell = subprocess.run(["sh", "-c", out.out + "\nenv -0"], capture_output=True, text=True, check=True,
                           env={"PATH": "/usr/bin:/bin"})
    pairs = dict(item.split("=", 1) for item in shell.stdout.split("\0") if "=" in item)
    return {k: v for k, v in pairs.items() if k.startswith("DOCKER_")}


def docker(env: dict, *argv, timeout=180):
    clean = {"PATH": "/usr/bin:/bin", "HOME": os.environ["HOME"], **env}
    return subprocess.run([DOCKER, *argv], capture_output=True, text=True, timeout=timeout, env=clean)


def rule(capfd):
    code, out = task(capfd, "vm.forwards", "--json")
    assert code == 0
    return next(r for r in json.loads(out.out)["forwards"] if r["guest_port"] == 2376)


def test_create_sets_up_docker_with_tls_on_a_loopback_forward(world, capfd):
    run("vm.create", f"--profile={world['profile']}")
    out = capfd.readouterr().out
    certs = paths.vm_dir(VM) / "certs"
    forward = rule(capfd)
    assert forward["host_ip"] == "127.0.0.1"
    assert "docker: issue ca.pem: missing" in out
    assert "docker: install ca.pem, server.pem, server-key.pem into the guest's /var/lib/boot2docker" in out
    assert f"docker: forward 127.0.0.1:{forward['host_port']} → 2376/tcp (the Docker daemon, TLS)" in out
    assert f"is ready on tcp://127.0.0.1:{forward['host_port']} (TLS)" in out
    assert "docker: write /var/lib/boot2docker/etc/localtime, /etc/localtime for TZ=CST-8" in out
    assert "docker: copied team-base.tar into the guest's /var/lib/boot2docker/images and loaded it" in out
    timing = next(line for line in out.splitlines() if line.startswith("ready: "))
    assert [part.split()[0] for part in timing[len("ready: "):].split(", ")] == ["SSH", "set-up", "docker"]
    for name, mode in (("ca-key.pem", 0o600), ("key.pem", 0o600), ("server-key.pem", 0o600), ("cert.pem", 0o644)):
        assert (certs / name).stat().st_mode & 0o777 == mode
    assert guest(capfd, "sudo stat -c '%a %U' /var/lib/boot2docker/server-key.pem") == "600 root"
    assert guest(capfd, "cat /var/run/docker.ready").startswith("20.")


def test_env_gives_the_debian_docker_cli_the_daemon_over_tls(world, capfd):
    env = docker_env(capfd)
    port = rule(capfd)["host_port"]
    assert env == {"DOCKER_TLS_VERIFY": "1", "DOCKER_HOST": f"tcp://127.0.0.1:{port}",
                   "DOCKER_CERT_PATH": str(paths.vm_dir(VM) / "certs"), "DOCKER_MACHINE_NAME": VM}
    proc = docker(env, "version", "--format", "{{.Server.Version}}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == guest(capfd, "cat /var/run/docker.ready")
    # Without the client cert the daemon refuses: TLS is the only way in.
    proc = docker({"DOCKER_HOST": env["DOCKER_HOST"]}, "version", timeout=60)
    assert proc.returncode != 0


def test_status_shows_the_daemon_from_one_call(world, capfd):
    code, out = task(capfd, "vm.status", "--json")
    assert code == 0
    validate("vm.status", json.loads(out.out))
    daemon = json.loads(out.out)["docker"]
    assert daemon["reachable"] and daemon["version"] == guest(capfd, "cat /var/run/docker.ready")
    assert daemon["images"] >= 2  # the offline base image and the profile's team/base:1
    code, out = task(capfd, "vm.status")
    line = next(x for x in out.out.splitlines() if x.startswith("docker:"))
    assert f"{daemon['images']} images" in line and "(TLS)" in line


def test_the_profile_image_is_there_to_run(world, capfd):
    proc = docker(docker_env(capfd), "run", "--rm", "team/base:1", "cat", "/etc/group")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("root:x:0:")


def test_the_folder_chain_host_sshfs_vm_container_and_back(world, capfd):
    """The seed's chain: a file saved on the host is in the VM's /mnt/sda1/dev, which a container mounts."""
    env = docker_env(capfd)
    (world["mount"] / "from-host.txt").write_text("edited on the laptop\n")
    proc = docker(env, "run", "--rm", "-v", "/mnt/sda1/dev:/src", "b2dkit/busybox", "cat", "/src/from-host.txt")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "edited on the laptop\n"
    proc = docker(env, "run", "--rm", "-v", "/mnt/sda1/dev:/src", "b2dkit/busybox",
                  "sh", "-c", "echo built in a container > /src/from-container.txt")
    assert proc.returncode == 0, proc.stderr
    assert (world["mount"] / "from-container.txt").read_text() == "built in a container\n"


def _page(port: int, timeout: float = 60.0) -> str:
    """The page on 127.0.0.1:port once something answers (a container's httpd takes a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _web(env, name: str, port: int, text: str):
    return docker(env, "run", "-d", "--name", name, "-p", f"{port}:{port}", "b2dkit/busybox", "sh", "-c",
                  f"mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p {port} -h /www")


def test_the_port_chain_host_forward_vm_container(world, capfd):
    env = docker_env(capfd)
    # The guest's own stand-in page listens on 8000; the team's container takes that port instead.
    guest(capfd, "for d in /proc/[0-9]*; do [ \"$(cat $d/comm 2>/dev/null)\" = httpd ] && sudo kill ${d#/proc/}; done;"
                 " i=0; while netstat -ltn | grep -q ':8000 ' && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; true")
    proc = _web(env, "web", 8000, "hello-from-a-container")
    assert proc.returncode == 0, proc.stderr
    try:
        assert _page(world["app_port"]) == "hello-from-a-container\n"
        # A new port, live: vm.forward while the VM runs, then a container publishing it.
        host_port = _free_port()
        run("vm.forward", f"{host_port}:8081")
        proc = _web(env, "web2", 8081, "second-service")
        assert proc.returncode == 0, proc.stderr
        assert _page(host_port) == "second-service\n"
    finally:
        docker(env, "rm", "-f", "web", "web2")


# -- ports that follow the containers (ports: auto, the watcher on) ----------------------------------


def _allowed_free_port() -> int:
    from b2dkit import forwards as fw

    low, high = map(int, AUTO_ALLOW.split("-"))
    return next(p for p in random.sample(range(low, high + 1), high - low + 1) if fw.probe(p) == fw.FREE)


def _forwards(capfd) -> dict:
    import jsonschemas

    code, out = task(capfd, "vm.forwards", "--json")
    assert code == 0, out.err
    doc = json.loads(out.out)
    jsonschemas.validate("vm.forwards", doc)
    return doc


def _on(capfd, port: int):
    return next((r for r in _forwards(capfd)["forwards"] if r["host_port"] == port), None)


def _refused(capfd, port: int):
    return next((r for r in _forwards(capfd)["auto_ports"]["refused"] if r["port"] == port), None)


def _until(what: str, condition, timeout: float = 60.0):
    """Wait for ``condition()``; a timeout says what, with the end of the watcher's log."""
    return wait_for(condition, timeout, what, every=0.3,
                    explain=lambda: "watcher.log ends:\n" + (paths.vm_dir(VM) / "watcher.log").read_text()[-3000:])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read() == b"auto-forwarded\n"
    except OSError:
        return False


def _serve(env, name: str, port: int, text: str, *extra):
    return docker(env, "run", "-d", *extra, "--name", name, "-p", f"{port}:80", "b2dkit/busybox", "sh", "-c",
                  f"mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 80 -h /www")


@pytest.fixture
def watching(world, capfd, monkeypatch):
    """This VM's watcher on (the fast tests keep it off), started by vm.start on the running VM."""
    from b2dkit import watcher

    monkeypatch.setenv("B2DKIT_WATCHER", "1")
    run("vm.start")
    capfd.readouterr()
    assert watcher.running_pid(VM)
    yield docker_env(capfd)
    watcher.stop(VM)  # the later tests of this module run without it, as before


def test_auto_ports_forward_a_published_port_and_remove_it_at_stop(world, capfd, watching):
    port = _allowed_free_port()
    proc = _serve(watching, "auto-web", port, "auto-forwarded")
    assert proc.returncode == 0, proc.stderr
    began = time.monotonic()
    try:
        assert _page(port) == "auto-forwarded\n"  # no vm.forward: the watcher saw the container start
        print(f"auto forward answered {time.monotonic() - began:.1f} s after docker run returned")
        _until("the [::1] relay of the auto forward", lambda: _answers(f"http://[::1]:{port}/"))
        row = _on(capfd, port)
        assert row["name"] == f"auto-tcp-{port}" and row["host_ip"] == "127.0.0.1" and row["guest_port"] == port
        assert row["auto"] == {"container": "auto-web", "id": proc.stdout.strip()[:12]}
        code, out = task(capfd, "vm.forwards")
        assert f"auto-tcp-{port}" in out.out and "(auto: container auto-web)" in out.out
    finally:
        stopped = docker(watching, "stop", "-t", "1", "auto-web")
    assert stopped.returncode == 0, stopped.stderr
    _until("the auto forward gone after docker stop", lambda: _on(capfd, port) is None)
    docker(watching, "rm", "-f", "auto-web")
    log = (paths.vm_dir(VM) / "watcher.log").read_text()
    assert f"auto ports: forwarding 127.0.0.1:{port} → {port}/tcp for container auto-web" in log
    assert f"auto ports: removed 127.0.0.1:{port} → {port}/tcp (container auto-web stopped)" in log


def test_auto_ports_leave_a_port_off_the_allow_list_alone(world, capfd, watching):
    from b2dkit import forwards as fw

    low, high = map(int, AUTO_ALLOW.split("-"))
    port = _free_port()  # an ephemeral port: outside the allow-list
    assert not low <= port <= high
    proc = _serve(watching, "auto-outside", port, "not-forwarded")
    assert proc.returncode == 0, proc.stderr
    try:
        row = _until("the port refused as not allowed", lambda: _refused(capfd, port))
        assert row["reason"] == "not allowed" and row["container"] == "auto-outside"
        assert AUTO_ALLOW in row["detail"]
        assert _on(capfd, port) is None and fw.probe(port) == fw.FREE  # nothing listens on the host
    finally:
        docker(watching, "rm", "-f", "auto-outside")


def test_auto_ports_report_a_host_clash_with_its_process_and_container(world, capfd, watching):
    import socket

    port = _allowed_free_port()
    with socket.socket() as holder:  # this test process holds the port on the host
        holder.bind(("127.0.0.1", port))
        holder.listen()
        proc = _serve(watching, "auto-clash", port, "clashing")
        assert proc.returncode == 0, proc.stderr
        try:
            row = _until("the clash reported", lambda: _refused(capfd, port))
            assert row["reason"] == "in use" and row["container"] == "auto-clash"
            assert f"(pid {os.getpid()})" in row["owner"]
            rows = _forwards(capfd)["forwards"]
            assert not [r for r in rows if (r.get("auto") or {}).get("container") == "auto-clash"]  # not shifted
            assert not [r for r in rows if r["host_port"] == port]
            log = (paths.vm_dir(VM) / "watcher.log").read_text()
            assert (f"auto ports: {port}/tcp of container auto-clash not forwarded: host port "
                    f"127.0.0.1:{port}/tcp is in use by {row['owner']}; it is not moved to another port") in log
            code, out = task(capfd, "vm.status")
            assert f"{port}/tcp of container auto-clash not forwarded: host port 127.0.0.1:{port}/tcp is in use" \
                in out.out
        finally:
            docker(watching, "rm", "-f", "auto-clash")


def test_auto_forwards_go_at_vm_stop_and_follow_a_restarted_container(world, capfd, watching, monkeypatch):
    port = _allowed_free_port()
    proc = _serve(watching, "auto-keep", port, "restarted", "--restart=always")
    assert proc.returncode == 0, proc.stderr
    try:
        _until("the auto forward", lambda: _on(capfd, port))
        run("vm.stop")
        out = capfd.readouterr().out
        assert f"removed auto forward 127.0.0.1:{port} → {port}/tcp (container auto-keep)" in out
        assert not [r for r in _forwards(capfd)["forwards"] if r["name"].startswith("auto-")]  # the stored rules
        assert not (paths.vm_dir(VM) / "autoports.json").exists()
        run("vm.start")  # a new watcher: it lists the containers the daemon restarted
        row = _until("the restarted container's auto forward", lambda: _on(capfd, port), timeout=120)
        assert row["auto"]["container"] == "auto-keep"
        assert _page(port) == "restarted\n"
    finally:
        docker(watching, "rm", "-f", "auto-keep")
    _until("the auto forward gone after docker rm", lambda: _on(capfd, port) is None)


def test_docker_build_from_the_offline_base_image(world, capfd, tmp_path):
    env = docker_env(capfd)
    (tmp_path / "Dockerfile").write_text("FROM b2dkit/busybox\nRUN echo built-offline > /built.txt\n")
    proc = docker(env, "build", "-q", "-t", "team/app:1", str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc = docker(env, "run", "--rm", "team/app:1", "cat", "/built.txt")
    assert proc.stdout == "built-offline\n", proc.stderr


def test_containers_get_the_teams_time_zone_with_the_localtime_mount(world, capfd):
    env = docker_env(capfd)
    proc = docker(env, "run", "--rm", "-v", "/etc/localtime:/etc/localtime:ro", "b2dkit/busybox",
                  "date", "+%Z %z")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "CST +0800"
    plain = docker(env, "run", "--rm", "b2dkit/busybox", "date", "+%Z")  # without it: UTC, as boot2docker
    assert plain.stdout.strip() == "UTC"


def test_a_second_start_installs_nothing_and_keeps_the_port(world, capfd):
    before = rule(capfd)
    restarts = guest(capfd, "grep -c 'starting dockerd' /var/log/boot.log")
    run("vm.start")
    out = capfd.readouterr().out
    assert "docker: " not in out  # nothing decided: no certs, no install, no forward
    assert "ready: " in out and ", docker " in out
    assert rule(capfd) == before
    assert guest(capfd, "grep -c 'starting dockerd' /var/log/boot.log") == restarts  # no restart


def _volume_and_images(env):
    proc = docker(env, "run", "--rm", "-v", "team-data:/data", "b2dkit/busybox", "cat", "/data/kept.txt")
    images = docker(env, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}")
    return proc.stdout, set(images.stdout.split())


def test_images_and_a_named_volume_survive_stop_and_start(world, capfd):
    env = docker_env(capfd)
    proc = docker(env, "run", "--rm", "-v", "team-data:/data", "b2dkit/busybox",
                  "sh", "-c", "echo kept > /data/kept.txt")
    assert proc.returncode == 0, proc.stderr
    before = _volume_and_images(env)
    assert before[0] == "kept\n" and {"team/app:1", "team/base:1", "b2dkit/busybox:latest"} <= before[1]
    certs = {p.name: p.read_bytes() for p in (paths.vm_dir(VM) / "certs").iterdir()}
    run("vm.stop")
    run("vm.start")
    out = capfd.readouterr().out
    assert "docker: install" not in out and "docker: copied" not in out  # all of it was on the disk
    assert docker_env(capfd) == env
    assert {p.name: p.read_bytes() for p in (paths.vm_dir(VM) / "certs").iterdir()} == certs
    assert _volume_and_images(env) == before


def test_images_and_the_volume_survive_destroy_and_create(world, capfd):
    env = docker_env(capfd)
    before = _volume_and_images(env)
    run("vm.destroy", "--yes")
    run("vm.create", f"--profile={world['profile']}")
    out = capfd.readouterr().out
    assert "docker: install" not in out  # the kept disk has the server files; the certs are the VM's own
    after = docker_env(capfd)
    assert after["DOCKER_CERT_PATH"] == env["DOCKER_CERT_PATH"]
    assert _volume_and_images(after) == before


def test_a_corrupt_profile_image_is_one_line_naming_it(world, capfd):
    good = world["images"].read_bytes()
    world["images"].write_bytes(good[: len(good) // 2])
    try:
        code, out = run_failing(capfd, "vm.start")
        err = out.err.strip()
        assert code == 2 and "\n" not in err
        assert f"profile image {world['images']} is not a readable tar archive" in err
    finally:
        world["images"].write_bytes(good)


def test_a_daemon_that_cannot_start_is_one_line_pointing_at_its_log(world, capfd):
    guest(capfd, "echo 'EXTRA_ARGS=\"--no-such-flag\"' | sudo tee /var/lib/boot2docker/profile >/dev/null"
                 " && sudo rm /var/lib/boot2docker/server.pem")
    try:
        code, out = run_failing(capfd, "vm.start")
        assert code == 3
        err = out.err.strip()
        assert "\n" not in err and "Traceback" not in err
        assert "/var/log/docker.log" in err and f"VM {VM!r}" in err
    finally:
        guest(capfd, "sudo rm -f /var/lib/boot2docker/profile")
    run("vm.start")  # fixed: the daemon whose last start failed is started again
    out = capfd.readouterr().out
    assert "docker: restart the guest's Docker daemon (its last start failed: see /var/log/docker.log)" in out
    assert docker(docker_env(capfd), "version").returncode == 0


# -- faults: a killed daemon, deleted certs, a taken port ------------------------------------------

_KILL = ("sudo kill -9 $(pidof dockerd); i=0; while pidof dockerd >/dev/null && [ $i -lt 300 ]; do sleep 0.1;"
         " i=$((i+1)); done; pidof dockerd || echo gone")


def test_a_killed_daemon_shows_in_status_and_vm_start_starts_it_again(world, capfd):
    before = guest(capfd, "pidof dockerd")
    assert guest(capfd, _KILL) == "gone"
    code, out = task(capfd, "vm.status", "--json")
    assert code == 0
    validate("vm.status", json.loads(out.out))
    daemon = json.loads(out.out)["docker"]
    assert daemon["reachable"] is False and daemon["daemon"] == "not running"
    assert daemon["log"] == "/var/log/docker.log"
    code, out = task(capfd, "vm.status")
    line = next(x for x in out.out.splitlines() if x.startswith("docker:"))
    assert "the daemon is not running in the guest (its log: /var/log/docker.log)" in line
    assert f"`b2dkit vm.docker --restart --name {VM}`" in line
    run("vm.start")  # on the running VM
    out = capfd.readouterr().out
    assert "docker: start the guest's Docker daemon (it is not running: see /var/log/docker.log)" in out
    assert guest(capfd, "pidof dockerd") not in ("", before)
    assert docker(docker_env(capfd), "version").returncode == 0


def test_vm_docker_shows_the_daemon_and_restart_restarts_it_until_it_answers(world, capfd):
    code, out = task(capfd, "vm.docker")
    assert code == 0 and out.out.count("\n") == 1 and "(TLS):" in out.out and " images, " in out.out
    before = guest(capfd, "pidof dockerd")
    run("vm.docker", "--restart")
    out = capfd.readouterr().out
    assert "docker: restart the guest's Docker daemon (asked)" in out and " is ready on tcp://127.0.0.1:" in out
    assert guest(capfd, "pidof dockerd") not in ("", before)
    assert docker(docker_env(capfd), "version").returncode == 0  # answered when the task returned


def test_certs_deleted_on_the_host_are_issued_again_by_the_next_start(world, capfd):
    certs = paths.vm_dir(VM) / "certs"
    old_env, old_ca = docker_env(capfd), (certs / "ca.pem").read_bytes()
    shutil.rmtree(certs)
    code, out = run_failing(capfd, "vm.env")
    assert code == 2 and f"no client certificates in {certs}" in out.err
    run("vm.start")
    out = capfd.readouterr().out
    assert "docker: issue ca.pem: missing" in out
    assert "docker: install ca.pem, server.pem, server-key.pem into the guest's /var/lib/boot2docker" in out
    assert (certs / "ca.pem").read_bytes() != old_ca
    env = docker_env(capfd)
    assert env == old_env  # same DOCKER_HOST and DOCKER_CERT_PATH: a shell that ran the eval keeps working
    proc = docker(env, "version", "--format", "{{.Server.Version}}")
    assert proc.returncode == 0, proc.stderr


def test_a_taken_docker_port_moves_the_forward_on_the_next_start(world, capfd):
    old = rule(capfd)["host_port"]
    run("vm.stop")
    with socket.socket() as holder:  # another program took the port while the VM was off
        holder.bind(("127.0.0.1", old))
        holder.listen()
        run("vm.start")
        out = capfd.readouterr().out
        new = rule(capfd)["host_port"]
        assert new != old
        said = [line for line in out.splitlines() if "is in use" in line]
        assert len(said) == 1 and f"docker: host port 127.0.0.1:{old} is in use" in said[0]
        assert f"moves to 127.0.0.1:{new} → 2376/tcp" in said[0]
        env = docker_env(capfd)
        assert env["DOCKER_HOST"] == f"tcp://127.0.0.1:{new}"
        proc = docker(env, "version", "--format", "{{.Server.Version}}")
        assert proc.returncode == 0, proc.stderr
