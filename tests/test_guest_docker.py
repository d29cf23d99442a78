"""The guest-docker flavour under QEMU, driven with the host's real Debian `docker` CLI over TLS.

One boot per module: the guest comes up with no certs (unix socket only), then — as b2dkit will
do on create — the server side of tlscerts is installed into /var/lib/boot2docker over SSH,
two image tarballs (one good, one truncated) go into /var/lib/boot2docker/images, and
`/etc/init.d/docker restart` re-reads both. Oracles: the docker CLI (client and server
versions, run, build), the guest's own files and log, and a TLS handshake with wrong certs.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import time
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from b2dkit import tlscerts
from guestvm import GuestVM, make_format_me_disk

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DOCKER = "/usr/bin/docker"  # Debian's docker.io CLI (/usr/local/bin/docker is another one)
DOCKER_PORT = 2376
READY = "b2dkit-guest: docker: ready"
READY_TIMEOUT = 300  # TCG on two busy cores: dockerd alone takes 20-40 s to answer
IMAGES_DIR = "/var/lib/boot2docker/images"


def load_builder():
    spec = importlib.util.spec_from_file_location("guest_build_docker_tests", REPO / "guest" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_for_serial(vm: GuestVM, text: str, timeout: float, after: int = 0) -> float:
    """Seconds since qemu started when ``text`` shows on the console (after offset ``after``)."""
    deadline = time.monotonic() + timeout
    while text not in vm.serial_text()[after:]:
        if vm.proc.poll() is not None:
            pytest.fail("qemu exited")
        if time.monotonic() > deadline:
            pytest.fail(f"no {text!r} in {timeout} s; console tail:\n{vm.serial_text()[-3000:]}")
        time.sleep(0.2)
    return time.monotonic() - vm.started


def ssh(vm: GuestVM, command: str, timeout: float = 300) -> tuple[int, str, str]:
    _, stdout, stderr = vm.client.exec_command(command, timeout=timeout)
    out, err = stdout.read().decode(), stderr.read().decode()
    return stdout.channel.recv_exit_status(), out, err


def put(vm: GuestVM, data: bytes, guest_path: str, mode: int):
    """Copy over SFTP to a private temp file, then move it into place as root (no secret on a command line)."""
    tmp = f"/tmp/.b2dkit-upload-{os.path.basename(guest_path)}"
    with vm.client.open_sftp() as sftp:
        with sftp.open(tmp, "wb") as remote:
            remote.set_pipelined(True)
            remote.chmod(0o600)
            remote.write(data)
    code, _, err = ssh(vm, f"sudo mkdir -p {shlex.quote(os.path.dirname(guest_path))} && "
                           f"sudo chown root:root {tmp} && sudo chmod {mode:o} {tmp} && "
                           f"sudo mv {tmp} {shlex.quote(guest_path)}")
    assert code == 0, err


def docker(env: dict, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def docker_guest(tmp_path_factory):
    if not os.path.exists(DOCKER):
        pytest.skip("Debian's docker CLI is not installed (apt-get install docker.io)")
    builder = load_builder()
    iso = builder.build(flavour="guest-docker", quiet=True)
    work = tmp_path_factory.mktemp("docker-vm")
    private = ed25519.Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    key_path = work / "id_ed25519"
    key_path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()))
    key_path.chmod(0o600)
    disk = work / "disk.img"
    make_format_me_disk(disk, public + b" b2dkit-test\n", size=4 << 30)
    vm = GuestVM(iso, disk, work, paramiko.Ed25519Key.from_private_key_file(str(key_path)), memory=1024, cpus=2,
                 guest_ports=(DOCKER_PORT,))
    try:
        vm.start()
        vm.ssh_ready = time.monotonic() - vm.started
        vm.docker_ready = wait_for_serial(vm, READY, READY_TIMEOUT)
        vm.first_log = ssh(vm, "cat /var/log/docker.log")[1]

        vm.certs = work / "certs"
        tlscerts.ensure(vm.certs, "docker-test")
        for name, data in tlscerts.server_files(vm.certs).items():
            put(vm, data, f"/var/lib/boot2docker/{name}", 0o600 if "key" in name else 0o644)
        tarball, _ = builder.base_image(Path("/bin/busybox").read_bytes(), ["/bin/sh", "/bin/cat"],
                                        "test", tag="team/base:1")
        broken, _ = builder.base_image(Path("/bin/busybox").read_bytes(), ["/bin/sh"], "test", tag="team/broken:1")
        put(vm, tarball, f"{IMAGES_DIR}/base.tar", 0o644)
        put(vm, broken[: len(broken) // 2], f"{IMAGES_DIR}/broken.tar", 0o644)
        code, out, err = ssh(vm, "sudo /etc/init.d/docker restart")
        assert code == 0, out + err
        vm.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work),
                  "DOCKER_HOST": f"tcp://127.0.0.1:{vm.ports[DOCKER_PORT]}", "DOCKER_TLS_VERIFY": "1",
                  "DOCKER_CERT_PATH": str(vm.certs), "DOCKER_BUILDKIT": "0"}
        yield vm
    finally:
        vm.kill()


def test_boot_timing_is_recorded(docker_guest):
    print(f"\nguest-docker: SSH ready {docker_guest.ssh_ready:.1f} s, docker ready {docker_guest.docker_ready:.1f} s "
          f"(first boot, base image loaded) from qemu start")
    assert docker_guest.ssh_ready < docker_guest.docker_ready


def test_without_certs_the_daemon_stays_on_the_unix_socket(docker_guest):
    assert "unix socket only: no /var/lib/boot2docker/ca.pem" in docker_guest.first_log
    assert "tcp 2376" not in docker_guest.first_log


def test_docker_version_over_tls_shows_the_server(docker_guest):
    proc = docker(docker_guest.env, "version", "--format", "{{.Client.Version}} {{.Server.Version}} {{.Server.Os}}")
    assert proc.returncode == 0, proc.stderr
    client, server, system = proc.stdout.split()
    debian = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "docker.io"], capture_output=True,
                            text=True).stdout
    assert server == debian.split("-")[0].split(":")[-1]  # the guest runs Debian's docker.io too
    assert client and system == "linux"


def test_wrong_or_missing_certs_fail(docker_guest, tmp_path):
    other = tmp_path / "other"
    tlscerts.ensure(other, "another-vm")
    wrong = dict(docker_guest.env, DOCKER_CERT_PATH=str(other))
    proc = docker(wrong, "version", "--format", "{{.Server.Version}}", timeout=60)
    assert proc.returncode != 0
    assert "certificate" in proc.stderr.lower(), proc.stderr
    plain = {k: v for k, v in docker_guest.env.items() if k not in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")}
    proc = docker(plain, "version", "--format", "{{.Server.Version}}", timeout=60)
    assert proc.returncode != 0
    assert "HTTPS" in proc.stderr or "TLS" in proc.stderr, proc.stderr


def test_the_ssh_form_reaches_the_unix_socket(docker_guest, tmp_path):
    """DOCKER_HOST=ssh://… (vm.env --ssh) runs `docker system dial-stdio` in the guest over OpenSSH.

    OpenSSH reads the config of the passwd home, not $HOME, so an `ssh` first on PATH adds -F.
    """
    config, bin_dir = tmp_path / "ssh_config", tmp_path / "bin"
    config.write_text(
        f"Host b2dkit-test-vm\n  HostName 127.0.0.1\n  Port {docker_guest.ssh_port}\n  User docker\n"
        f"  IdentityFile {docker_guest.workdir / 'id_ed25519'}\n  IdentitiesOnly yes\n  BatchMode yes\n"
        f"  UserKnownHostsFile {tmp_path / 'known_hosts'}\n  StrictHostKeyChecking accept-new\n")
    config.chmod(0o600)
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f"#!/bin/sh\nexec /usr/bin/ssh -F {config} \"$@\"\n")
    (bin_dir / "ssh").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{docker_guest.env['PATH']}", "HOME": str(tmp_path),
           "DOCKER_HOST": "ssh://b2dkit-test-vm"}
    proc = docker(env, "version", "--format", "{{.Server.Version}}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == docker(docker_guest.env, "version", "--format", "{{.Server.Version}}").stdout.strip()


def test_only_tls_tcp_and_the_group_docker_socket(docker_guest):
    code, out, _ = ssh(docker_guest, "netstat -ltn")
    assert code == 0
    assert ":2376 " in out and ":2375 " not in out
    code, out, _ = ssh(docker_guest, "stat -c '%G %a' /var/run/docker.sock; docker ps -q | wc -l; "
                                     "readlink /var/lib/docker; id -un")
    assert out.split() == ["docker", "660", "0", "/mnt/sda1/var/lib/docker", "docker"]  # user docker, no sudo


def test_run_the_offline_base_image(docker_guest):
    proc = docker(docker_guest.env, "run", "--rm", "b2dkit/busybox:latest", "echo", "hi")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hi\n"


def test_build_from_the_base_image(docker_guest, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM b2dkit/busybox:latest\nRUN echo built offline > /built\n"
                                         "CMD [\"cat\", \"/built\"]\n")
    proc = docker(docker_guest.env, "build", "--rm", "-t", "dev:base", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = docker(docker_guest.env, "run", "--rm", "dev:base")
    assert (proc.returncode, proc.stdout) == (0, "built offline\n"), proc.stderr


def test_image_tarballs_load_and_a_corrupt_one_is_named(docker_guest):
    proc = docker(docker_guest.env, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}")
    assert proc.returncode == 0, proc.stderr
    tags = set(proc.stdout.split())
    assert {"b2dkit/busybox:latest", "team/base:1"} <= tags
    assert "team/broken:1" not in tags
    log = ssh(docker_guest, "cat /var/log/docker.log")[1]
    errors = [line for line in log.splitlines() if "images: ERROR" in line]
    assert len(errors) == 1 and f"{IMAGES_DIR}/broken.tar" in errors[0], errors
    code, out, _ = ssh(docker_guest, f"ls {IMAGES_DIR}/.loaded")
    assert out.split() == ["base.tar"]  # the broken one is tried again next boot, the good one is not


def test_new_tarballs_load_without_a_restart(docker_guest):
    builder = load_builder()
    tarball, image_id = builder.base_image(Path("/bin/busybox").read_bytes(), ["/bin/sh"], "test", tag="team/late:2")
    put(docker_guest, tarball, f"{IMAGES_DIR}/late.tar.gz", 0o644)  # not compressed: the name does not matter
    pid = ssh(docker_guest, "cat /var/run/docker.pid")[1]
    code, out, err = ssh(docker_guest, "sudo /etc/init.d/docker images")
    assert code == 0, out + err
    assert f"{IMAGES_DIR}/late.tar.gz" in out
    proc = docker(docker_guest.env, "image", "inspect", "-f", "{{.Id}}", "team/late:2")
    assert (proc.returncode, proc.stdout.strip()) == (0, image_id), proc.stderr
    assert ssh(docker_guest, "cat /var/run/docker.pid")[1] == pid


def test_daemon_restart_is_quiet_about_loaded_images(docker_guest):
    before = ssh(docker_guest, "cat /var/log/docker.log")[1]
    code, out, err = ssh(docker_guest, "sudo /etc/init.d/docker restart && /etc/init.d/docker status")
    assert code == 0, out + err
    new = ssh(docker_guest, "cat /var/log/docker.log")[1][len(before):]
    loads = [line for line in new.splitlines() if "images:" in line]
    assert loads == [line for line in loads if "broken.tar" in line], loads  # base.tar and the base image: once
    assert "running (pid" in out
    proc = docker(docker_guest.env, "version", "--format", "{{.Server.Version}}")
    assert proc.returncode == 0, proc.stderr


def test_shutdown_stops_dockerd_before_the_disk(docker_guest):
    before = len(docker_guest.serial_text())
    docker_guest.powerdown(timeout=120)
    tail = docker_guest.serial_text()[before:]
    assert "docker: dockerd stopped" in tail
    assert "data disk unmounted" in tail


def test_images_and_certs_survive_a_reboot(docker_guest):
    """The data root and /var/lib/boot2docker are on the disk: after a reboot TLS is up at boot, the
    built image is still there, and neither the base image nor base.tar is loaded again."""
    docker_guest.start()  # a new console file and new host ports
    wait_for_serial(docker_guest, READY, READY_TIMEOUT)
    console = docker_guest.serial_text()
    assert "unix socket and tcp 2376 with TLS" in console
    loads = [line for line in console.splitlines() if "docker: images:" in line]
    assert all("broken.tar" in line for line in loads), loads
    env = dict(docker_guest.env, DOCKER_HOST=f"tcp://127.0.0.1:{docker_guest.ports[DOCKER_PORT]}")
    proc = docker(env, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}")
    assert proc.returncode == 0, proc.stderr
    assert {"b2dkit/busybox:latest", "team/base:1", "team/late:2", "dev:base"} <= set(proc.stdout.split())
    docker_guest.powerdown(timeout=120)
