"""guest.py against a real SSH server (dropbear, as in the guest) on 127.0.0.1."""
# ruff: noqa: F811  (pytest fixtures imported from sshserver are re-bound as test parameters)

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from sshserver import SSHServer, free_port, ssh_keys, ssh_user, sshd, vm  # noqa: F401

from b2dkit import guest, sshkeys
from b2dkit.errors import GuestError, InputError, ToolMissing


def public_host_key(hostkey: Path) -> str:
    """``<type> <base64>`` of a dropbear host key, read by dropbearkey itself (the oracle)."""
    argv = ["dropbearkey", "-y", "-f", str(hostkey)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith(("ssh-", "ecdsa-")))
    return " ".join(line.split()[:2])


def session(vm):
    return guest.connect(vm["host"], vm["port"], vm["key_path"], vm["known_hosts_path"], user=vm["user"])


# -- waiting and pinning ---------------------------------------------------------------------


def test_wait_for_ssh_pins_the_host_key_on_first_contact(vm, ssh_keys):
    guest.wait_for_session(vm["host"], vm["port"], vm["key_path"], vm["known_hosts_path"], 10,
                           user=vm["user"]).close()
    known = vm["known_hosts_path"]
    expected = public_host_key(ssh_keys["hostkeys"]["a"])
    assert known.read_text() == f"[127.0.0.1]:{vm['port']} {expected}\n"
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    # OpenSSH agrees with the format: ssh-keygen finds the entry under the bracketed name
    found = subprocess.run(["ssh-keygen", "-F", f"[127.0.0.1]:{vm['port']}", "-f", str(known)],
                           capture_output=True, text=True)  # fmt: skip
    assert found.returncode == 0 and expected in found.stdout
    with session(vm):  # a second contact checks the pin and records nothing new
        pass
    assert known.read_text().count("\n") == 1


def test_wait_for_ssh_times_out_on_a_closed_port_and_points_at_the_log(tmp_path, ssh_keys):
    log = tmp_path / "serial.log"
    port = free_port()
    started = time.monotonic()
    with pytest.raises(GuestError) as err:
        guest.wait_for_session("127.0.0.1", port, ssh_keys["private"], tmp_path / "known_hosts", timeout=1.0,
                               log_path=log)  # fmt: skip
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 2.0
    message = str(err.value)
    assert str(log) in message and "connection refused" in message and f"127.0.0.1:{port}" in message
    assert "\n" not in message
    assert not (tmp_path / "known_hosts").exists()


def test_wait_for_ssh_survives_a_port_that_accepts_but_never_answers(tmp_path, ssh_keys, ssh_user):
    """QEMU's NAT before the guest has an IP: TCP connects, no banner ever comes."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    port = hole.getsockname()[1]
    server = SSHServer(tmp_path, ssh_keys["hostkeys"]["a"], port=port)

    def guest_gets_its_ip():
        time.sleep(2.0)
        hole.close()
        server.start()

    thread = threading.Thread(target=guest_gets_its_ip)
    started = time.monotonic()
    thread.start()
    try:
        guest.wait_for_session("127.0.0.1", port, ssh_keys["private"], tmp_path / "known_hosts", timeout=20,
                               user=ssh_user["name"]).close()  # fmt: skip
        elapsed = time.monotonic() - started
    finally:
        thread.join()
        server.stop()
    assert 2.0 <= elapsed < 6.0  # short per-try banner timeouts: ready soon after the server is


class SlowGuest:
    """A TCP relay to the real sshd that holds each new connection ``delay`` s before relaying.

    What a booting TCG guest looks like from the host: connections are accepted at once (by
    QEMU's NAT), the banner and the key exchange come late.
    """

    def __init__(self, target_port: int, delay: float):
        self.target_port, self.delay = target_port, delay
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(32)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.sockets = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self.sockets.append(client)
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client):
        time.sleep(self.delay)
        try:
            server = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            return client.close()
        self.sockets.append(server)

        def pump(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pump, args=(server, client), daemon=True).start()
        pump(client, server)

    def close(self):
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


def test_a_slow_banner_and_key_exchange_are_waited_for_not_cut_off(vm):
    """A delay longer than one probe interval: the try that asked still gets its banner."""
    slow = SlowGuest(vm["port"], delay=1.2)
    try:
        started = time.monotonic()
        with guest.wait_for_session("127.0.0.1", slow.port, vm["key_path"], vm["known_hosts_path"],
                                    timeout=15, user=vm["user"]) as s:  # fmt: skip
            elapsed = time.monotonic() - started
            assert s.run(["echo", "over the same connection"]).stdout == "over the same connection\n"
    finally:
        slow.close()
    assert 1.2 <= elapsed < 4.0
    # probes every 0.5 s until the first banner: a handful of connections, not one per 0.1 s
    assert 1 <= slow.accepted <= 5


def test_a_changed_host_key_is_refused_and_the_pin_kept(vm, sshd, ssh_keys):
    session(vm).close()
    pinned = vm["known_hosts_path"].read_text()
    for other in ("b", "c"):  # same key type, and a different type (ecdsa)
        sshd.restart(ssh_keys["hostkeys"][other])
        with pytest.raises(GuestError, match="host key of VM 'testvm' .* changed") as err:
            session(vm)
        assert str(vm["known_hosts_path"]) in str(err.value)
        assert vm["known_hosts_path"].read_text() == pinned
    started = time.monotonic()
    with pytest.raises(GuestError, match="changed"):  # no point waiting: fail at once
        guest.wait_for_session(vm["host"], vm["port"], vm["key_path"], vm["known_hosts_path"], timeout=30,
                               user=vm["user"])  # fmt: skip
    assert time.monotonic() - started < 5


def test_forget_host_key_lets_a_recreated_vm_be_pinned_again(vm, sshd, ssh_keys):
    session(vm).close()
    sshd.restart(ssh_keys["hostkeys"]["b"])
    other_entry = "[127.0.0.1]:1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDp0c3QtdW5yZWxhdGVkLWtleS0wMDAwMDAwMDA="
    with open(vm["known_hosts_path"], "a") as f:
        f.write(other_entry + "\n")
    assert guest.forget_host_key(vm["known_hosts_path"], vm["host"], vm["port"]) is True
    assert guest.forget_host_key(vm["known_hosts_path"], vm["host"], vm["port"]) is False
    assert vm["known_hosts_path"].read_text() == other_entry + "\n"  # other VMs' pins untouched
    session(vm).close()
    assert guest.pinned_keys(vm["known_hosts_path"], vm["host"], vm["port"]) == [
        public_host_key(ssh_keys["hostkeys"]["b"])
    ]


def test_a_key_the_guest_does_not_know_is_a_clear_error(vm, tmp_path):
    stranger, _ = sshkeys.ensure_keypair(tmp_path / "stranger")
    with pytest.raises(GuestError, match="refused the VM's key"):
        guest.connect(vm["host"], vm["port"], stranger, vm["known_hosts_path"], user=vm["user"])


def test_connect_to_nothing_says_so(tmp_path, ssh_keys):
    with pytest.raises(GuestError, match="cannot reach SSH .*connection refused"):
        guest.connect("127.0.0.1", free_port(), ssh_keys["private"], tmp_path / "known_hosts", timeout=1)


# -- running commands ------------------------------------------------------------------------


def test_run_returns_exit_code_and_both_streams(vm):
    with session(vm) as s:
        result = s.run("echo out; echo err >&2; exit 3", check=False)
        assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
        assert s.run(["id", "-un"]).stdout.strip() == vm["user"]
        with pytest.raises(GuestError, match=r"failed in the guest with exit code 2: .*nonexistent"):
            s.run(["ls", "/nonexistent"])


def test_run_quotes_every_argument(vm, tmp_path):
    tricky = ["a b", "$HOME", "; touch /tmp/pwned-b2dkit", "it's", "*"]
    with session(vm) as s:
        out = s.run(["printf", "%s|", *tricky]).stdout
    assert out == "|".join(tricky) + "|"
    assert not Path("/tmp/pwned-b2dkit").exists()


def test_run_handles_output_larger_than_the_ssh_window(vm):
    with session(vm) as s:
        result = s.run("head -c 3000000 /dev/zero; head -c 3000000 /dev/zero >&2")
    assert len(result.stdout) == len(result.stderr) == 3_000_000


def test_a_dropped_connection_is_one_clear_error(vm, sshd):
    with session(vm) as s:
        s.run(["true"])
        sshd.stop()
        with pytest.raises(GuestError, match="lost the SSH connection .* check the VM is still running"):
            s.run(["true"], timeout=5)


def test_run_timeout(vm):
    with session(vm) as s:
        started = time.monotonic()
        with pytest.raises(GuestError, match="did not finish .* within 0.5 s"):
            s.run(["sleep", "5"], timeout=0.5)
        assert time.monotonic() - started < 2


# -- set-up ----------------------------------------------------------------------------------


@pytest.fixture
def data_root():
    """A stand-in for /mnt/sda1 that the login user may stat (pytest's tmp dirs are 0700 root)."""
    root = Path(tempfile.mkdtemp(prefix="b2dkit-sda1-", dir="/tmp"))
    root.chmod(0o755)
    yield str(root)
    shutil.rmtree(root)


def test_setup_creates_persistent_dirs_owned_by_the_user(vm, ssh_user, data_root):
    if not ssh_user["sudo"]:
        pytest.skip("sudo is not installed on this machine (apt-get install sudo)")
    dirs = [f"{data_root}/dev", "var/lib/app"]  # relative ones are under the root
    with session(vm) as s:
        report = guest.setup(s, dirs, set_clock=False, root=data_root)
        assert report.created == [f"{data_root}/dev", f"{data_root}/var/lib/app"]
        for d in report.created:
            st = os.stat(d)
            assert (st.st_uid, st.st_gid) == (ssh_user["uid"], ssh_user["gid"])
        assert abs(report.drift) < 0.5 and not report.clock_set

        os.chown(f"{data_root}/dev", 0, 0)
        again = guest.setup(s, dirs, set_clock=False, root=data_root)
        assert again.created == [] and again.fixed == [f"{data_root}/dev"]
        assert again.present == [f"{data_root}/var/lib/app"]
        assert os.stat(f"{data_root}/dev").st_uid == ssh_user["uid"]

        Path(data_root, "file").write_text("x")
        with pytest.raises(GuestError, match="not a directory"):
            guest.setup(s, ["file"], set_clock=False, root=data_root)


@pytest.mark.parametrize("bad", ["/home/docker/dev", "../etc", "/mnt/sda1", "/mnt/sda10/x"])
def test_persistent_dirs_must_be_under_the_data_disk(bad):
    with pytest.raises(InputError, match="only place in the guest that survives a reboot"):
        guest.persistent_path(bad)


def test_persistent_path_normalises():
    assert guest.persistent_path("dev") == "/mnt/sda1/dev"
    assert guest.persistent_path("/mnt/sda1/a/../b/") == "/mnt/sda1/b"


@pytest.mark.parametrize("date", [["busybox", "date"], ["date"]])
def test_clock_command_means_the_same_instant_to_busybox_and_gnu_date(date):
    """We cannot set this machine's clock in a test; both ``date`` parsers are the oracle instead."""
    epoch = 1_712_345_678
    argv = guest.clock_command(epoch)
    assert argv[:4] == ["sudo", "date", "-u", "-s"]
    # the same string under a zone far from UTC must still mean the same UTC instant
    out = subprocess.run([*date, "-u", "-d", argv[4], "+%s"], capture_output=True, text=True, check=True,
                         env={**os.environ, "TZ": "CST-8"})  # fmt: skip
    assert int(out.stdout) == epoch


def test_clock_drift_of_a_guest_on_the_same_clock_is_near_zero(vm):
    with session(vm) as s:
        assert abs(guest.clock_drift(s)) < 0.2


# -- interactive ssh -------------------------------------------------------------------------


def test_ssh_argv_uses_only_the_vm_key_and_pin(tmp_path):
    known = tmp_path / "My VMs" / "known_hosts"
    argv = guest.ssh_argv("127.0.0.1", 2022, tmp_path / "id", known, command=["ls", "a b"])
    assert argv[0] == "ssh" and argv[-2:] == ["docker@127.0.0.1", "ls 'a b'"]
    options = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert f'UserKnownHostsFile="{tmp_path}/My VMs/known_hosts"' in options
    assert {"StrictHostKeyChecking=yes", "IdentitiesOnly=yes", "BatchMode=yes"} <= set(options)
    assert argv[argv.index("-i") + 1] == str(tmp_path / "id") and argv[argv.index("-p") + 1] == "2022"


def test_ssh_command_passes_the_exit_code_through(vm, capfd, b2dkit_home):
    known = b2dkit_home / "My VMs" / "known_hosts"  # a space, as in macOS's Application Support
    known.parent.mkdir()
    args = (vm["host"], vm["port"], vm["key_path"], known)
    assert guest.interactive_shell(*args, command="echo hello; exit 7", user=vm["user"]) == 7
    assert "hello" in capfd.readouterr().out
    assert guest.interactive_shell(*args, command=["test", "-d", "/"], user=vm["user"]) == 0
    assert len(guest.pinned_keys(known, vm["host"], vm["port"])) == 1


def test_system_ssh_also_refuses_a_changed_host_key(vm, sshd, ssh_keys, capfd):
    session(vm).close()
    sshd.restart(ssh_keys["hostkeys"]["b"])
    args = (vm["host"], vm["port"], vm["key_path"], vm["known_hosts_path"])
    assert guest.interactive_shell(*args, command="true", user=vm["user"]) == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in capfd.readouterr().err


def test_without_an_ssh_client_commands_still_run_but_a_shell_cannot(vm, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `ssh` anywhere on PATH
    args = (vm["host"], vm["port"], vm["key_path"], vm["known_hosts_path"])
    assert guest.interactive_shell(*args, command="echo via-paramiko; exit 4", user=vm["user"]) == 4
    assert "via-paramiko" in capfd.readouterr().out
    with pytest.raises(ToolMissing, match="apt-get install openssh-client"):
        guest.interactive_shell(*args, user=vm["user"])


def test_root_files_are_installed_by_rename_and_their_digests_read_back(vm, ssh_user, data_root):
    """How vm.start puts the Docker server key into /var/lib/boot2docker: root-owned, 0600, whole."""
    import hashlib

    if not ssh_user["sudo"]:
        pytest.skip("sudo is not installed on this machine (apt-get install sudo)")
    key, cert = f"{data_root}/b2d/server-key.pem", f"{data_root}/b2d/server.pem"
    with session(vm) as s:
        assert guest.root_file_digests(s, [key, cert]) == {}
        guest.install_root_files(s, {key: (b"secret\n", 0o600), cert: (b"public\n", 0o644)})
        for path, data, mode in ((key, b"secret\n", 0o600), (cert, b"public\n", 0o644)):
            st = os.stat(path)
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, mode)
            assert Path(path).read_bytes() == data
        assert sorted(os.listdir(f"{data_root}/b2d")) == ["server-key.pem", "server.pem"]  # no parts left
        assert guest.root_file_digests(s, [key, cert, f"{data_root}/b2d/none"]) == {
            key: hashlib.sha256(b"secret\n").hexdigest(), cert: hashlib.sha256(b"public\n").hexdigest()}
        guest.install_root_files(s, {key: (b"renewed\n", 0o600)})  # replaces in place
        assert Path(key).read_bytes() == b"renewed\n"
        # only this test's login user's temp dirs: other runs on the machine use other users
        leftovers = s.run("find /tmp -maxdepth 1 -name '.b2dkit-install.*' -user \"$(id -u)\"").stdout.split()
        assert leftovers == []


@pytest.mark.slow
def test_back_to_back_installs_survive_dropbears_close_race(vm, ssh_user, data_root):
    """Debian 12's dropbear closes a new channel (or drops the connection) when the SFTP server's exit is
    still pending as the next command opens; within 60 rounds that happened every time before
    guest._end_sftp waited for the SFTP channel's exit status."""
    if not ssh_user["sudo"]:
        pytest.skip("sudo is not installed on this machine (apt-get install sudo)")
    target = f"{data_root}/b2d/key"
    with session(vm) as s:
        for round_ in range(60):
            guest.install_root_files(s, {target: (b"round %d\n" % round_, 0o600)})
            assert Path(target).read_bytes() == b"round %d\n" % round_


def test_waiting_for_ssh_stops_at_once_when_the_check_says_the_guest_is_halted(tmp_path, ssh_keys):
    from b2dkit.errors import HypervisorError

    calls = []

    def check():
        calls.append(time.monotonic())
        if len(calls) >= 2:  # the hypervisor reports the guest halted (a full host disk)
            raise HypervisorError("VM dev is halted: the host disk is full")

    started = time.monotonic()
    with pytest.raises(HypervisorError, match="halted"):
        guest.wait_for_session("127.0.0.1", free_port(), ssh_keys["private"], tmp_path / "kh", timeout=60,
                               check=check)
    assert time.monotonic() - started < 20  # not the whole 60 s timeout
