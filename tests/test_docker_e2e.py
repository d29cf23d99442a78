"""Docker from the host, end to end: the tasks a user types, on QEMU, with the guest-docker flavour,
and Debian's /usr/bin/docker talking to the VM's daemon with the settings ``vm.env`` prints.

One VM is shared by the tests of this module (they run in order, each building on the last):
create sets Docker up (certs, forward, readiness) → vm.env → docker over TLS → a re-start changes
nothing → stop/start keeps DOCKER_HOST → a daemon that cannot start is one line.
"""

import json
import os
import subprocess

import pytest

import qemuclean
from b2dkit import paths
from b2dkit.main import make_program
from cli import run, run_failing, task

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

VM = "e2e-docker"
DOCKER = "/usr/bin/docker"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if not os.path.exists(DOCKER):
        pytest.skip("Debian's docker CLI is not installed (apt-get install docker.io)")
    root = tmp_path_factory.mktemp("docker-e2e")
    home = root / "home"
    home.mkdir()
    profile = root / "docker.yaml"
    profile.write_text(
        f"""extends: cst
name: {VM}
provider: qemu
memory: 1024
cpus: 2
disk: 4096
iso: {{build: guest-docker}}
forwards:
  - {{host: 2022, remove: true}}
  - {{host: 8000, remove: true}}
  - {{host: {_free_port()}, guest: 22}}
"""
    )
    mp = pytest.MonkeyPatch()
    b2dkit_home = root / "b2dkit-home"
    mp.setenv("B2DKIT_HOME", str(b2dkit_home))
    mp.setenv("HOME", str(home))
    mp.setenv("B2DKIT_QEMU_ACCEL", os.environ.get("B2DKIT_QEMU_ACCEL", "tcg"))
    yield {"root": root, "home": home, "profile": profile, "b2dkit_home": b2dkit_home}
    mp.setenv("B2DKIT_HOME", str(b2dkit_home))
    try:
        make_program().run(["b2dkit", "vm.destroy", f"--name={VM}", "--yes", "--purge"], exit=False)
    except BaseException:  # noqa: B036 - teardown must go on to kill QEMU whatever happened
        pass
    qemuclean.kill_all(root)
    mp.undo()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    return next(r for r in json.loads(out.out) if r["guest_port"] == 2376)


def test_create_sets_up_docker_with_tls_on_a_loopback_forward(world, capfd):
    run("vm.create", f"--profile={world['profile']}")
    out = capfd.readouterr().out
    certs = paths.vm_dir(VM) / "certs"
    forward = rule(capfd)
    assert forward["host_ip"] == "127.0.0.1"
    assert "docker: issue ca.pem: missing" in out
    assert "docker: install ca.pem, server.pem, server-key.pem into the guest's /var/lib/boot2docker" in out
    assert f"docker: forward 127.0.0.1:{forward['host_port']} → 2376/tcp (the Docker daemon, TLS)" in out
    assert f"answers on tcp://127.0.0.1:{forward['host_port']} with TLS" in out
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


def test_a_second_start_installs_nothing_and_keeps_the_port(world, capfd):
    before = rule(capfd)
    restarts = guest(capfd, "grep -c 'starting dockerd' /var/log/boot.log")
    run("vm.start")
    out = capfd.readouterr().out
    assert "docker: " not in out  # nothing decided: no certs, no install, no forward
    assert "ready: " in out and ", docker " in out
    assert rule(capfd) == before
    assert guest(capfd, "grep -c 'starting dockerd' /var/log/boot.log") == restarts  # no restart


def test_stop_and_start_keep_docker_host_and_certs(world, capfd):
    env = docker_env(capfd)
    certs = {p.name: p.read_bytes() for p in (paths.vm_dir(VM) / "certs").iterdir()}
    run("vm.stop")
    run("vm.start")
    out = capfd.readouterr().out
    assert "docker: " not in out  # the guest kept the server files on its disk
    assert docker_env(capfd) == env
    assert {p.name: p.read_bytes() for p in (paths.vm_dir(VM) / "certs").iterdir()} == certs
    proc = docker(env, "info", "--format", "{{.ServerVersion}}")
    assert proc.returncode == 0, proc.stderr


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
    run("vm.start")  # fixed: the missing server.pem goes back, the daemon restarts
    out = capfd.readouterr().out
    assert "docker: install server.pem into the guest's /var/lib/boot2docker" in out
    assert docker(docker_env(capfd), "version").returncode == 0
