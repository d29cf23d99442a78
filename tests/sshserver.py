"""A real SSH server on 127.0.0.1 for guest/sshfs tests: Debian's dropbear, as in the guest.

The login user is a throwaway local account (``b2dt<checkout hash>``) with the VM key in its
``authorized_keys`` and passwordless sudo, like ``docker`` on boot2docker. Creating it
needs root; without root (or dropbear) the tests that use it are skipped with a reason.
Import the fixtures into a test module with ``from sshserver import ssh_user, sshd, ...``.
"""

import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from b2dkit import sshkeys
from ports import free_port

# One user per checkout: test runs of two clones on one machine must not overwrite each
# other's authorized_keys (that made either run's SSH tests fail at random).
_CHECKOUT = hashlib.sha256(str(Path(__file__).resolve().parents[1]).encode()).hexdigest()[:8]
USER = f"b2dt{_CHECKOUT}"
DROPBEAR = "/usr/sbin/dropbear"
SUDOERS = Path(f"/etc/sudoers.d/b2dkit-test-{_CHECKOUT}")


def _need(condition, reason):
    if not condition:
        pytest.skip(reason)



def _descendants(root: int):
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class SSHServer:
    """One dropbear listening on 127.0.0.1:<port>; stop() kills it and every session it forked."""

    def __init__(self, workdir: Path, hostkey: Path, port: int = 0):
        self.workdir, self.hostkey = workdir, hostkey
        self.port = port or free_port()
        self.log = workdir / f"dropbear-{self.port}.log"
        self.proc = None

    def start(self, hostkey: Path = None):
        if hostkey is not None:
            self.hostkey = hostkey
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [DROPBEAR, "-F", "-E", "-s", "-P", str(self.workdir / "dropbear.pid"),
                 "-p", f"127.0.0.1:{self.port}", "-r", str(self.hostkey)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,  # keep our Ctrl-C and terminal away from it
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.settimeout(2)
                    if s.recv(64).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"dropbear did not start; see {self.log}: {self.log.read_text()[-500:]}")

    def stop(self):
        """Kill the listener and every session it forked (they setsid(), so no killpg)."""
        if self.proc is None:
            return
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, hostkey: Path = None):
        self.stop()
        return self.start(hostkey)


@pytest.fixture(scope="session")
def ssh_user():
    """The local login user and its home; removed again at the end of the session."""
    _need(os.geteuid() == 0, "needs root to create the throwaway login user for the test SSH server")
    _need(os.path.exists(DROPBEAR), f"{DROPBEAR} is missing (apt-get install dropbear-bin)")
    created = False
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True)
        created = True
    # dropbear refuses locked accounts ("!" in shadow) even for key logins; "*" = no password
    subprocess.run(["usermod", "-p", "*", USER], check=True)
    have_sudo = shutil.which("sudo") is not None
    if have_sudo:
        SUDOERS.write_text(f"{USER} ALL=(ALL) NOPASSWD: ALL\n")
        SUDOERS.chmod(0o440)
    entry = pwd.getpwnam(USER)
    home = Path(entry.pw_dir)
    yield {"name": USER, "home": home, "uid": entry.pw_uid, "gid": entry.pw_gid, "sudo": have_sudo}
    SUDOERS.unlink(missing_ok=True)
    if created:
        subprocess.run(["userdel", "-r", "-f", USER], check=False, capture_output=True)


@pytest.fixture(scope="session")
def ssh_keys(ssh_user, tmp_path_factory):
    """The client (VM) key authorised for the user, and three host keys to swap between."""
    folder = tmp_path_factory.mktemp("sshkeys")
    private, public = sshkeys.ensure_keypair(folder / "vm")
    ssh_dir = ssh_user["home"] / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    # Append, never overwrite: test runs of other checkouts on this machine share the user.
    keys = ssh_dir / "authorized_keys"
    known = keys.read_text().splitlines() if keys.exists() else []
    if public not in known:
        with open(keys, "a") as out:
            out.write(public + "\n")
    for p in (ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(p, ssh_user["uid"], ssh_user["gid"])
    (ssh_dir / "authorized_keys").chmod(0o600)
    hostkeys = {}
    for name, kind in (("a", "ed25519"), ("b", "ed25519"), ("c", "ecdsa")):
        path = folder / f"host_{name}"
        subprocess.run(["dropbearkey", "-t", kind, "-f", str(path)], check=True, capture_output=True)
        hostkeys[name] = path
    return {"private": private, "public": public, "hostkeys": hostkeys}


@pytest.fixture
def sshd(ssh_keys, tmp_path):
    server = SSHServer(tmp_path, ssh_keys["hostkeys"]["a"]).start()
    yield server
    server.stop()


@pytest.fixture
def vm(sshd, ssh_keys, ssh_user, b2dkit_home):
    """Everything a b2dkit caller passes for one VM: address, key, its own known_hosts."""
    folder = b2dkit_home / "data" / "vms" / "testvm"
    folder.mkdir(parents=True)
    return {
        "host": "127.0.0.1",
        "port": sshd.port,
        "key_path": ssh_keys["private"],
        "known_hosts_path": folder / "known_hosts",
        "user": ssh_user["name"],
    }
