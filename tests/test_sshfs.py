"""sshfs.py: real sshfs mounts against dropbear + OpenSSH's sftp-server on 127.0.0.1."""
# ruff: noqa: F811  (pytest fixtures imported from sshserver are re-bound as test parameters)

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
import sshfsrule
from sshserver import ssh_keys, ssh_user, sshd, vm  # noqa: F401

from b2dkit import guest, sshfs
from b2dkit.errors import MountError, ToolMissing

PROC_MOUNTS = (
    "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
    "docker@127.0.0.1:/mnt/sda1/dev /home/me/workspace/dev fuse.sshfs rw,nosuid,nodev,user_id=0 0 0\n"
    "docker@127.0.0.1:/mnt/sda1/my\\040code /home/me/My\\040Code fuse.sshfs rw,user_id=0 0 0\n"
    "/dev/fuse /run/other fuse.gvfsd-fuse rw 0 0\n"
)
MACOS_MOUNT = (
    "/dev/disk3s1s1 on / (apfs, sealed, local, read-only, journaled)\n"
    "docker@127.0.0.1:/mnt/sda1/dev on /Users/me/workspace/dev "
    "(macfuse, nodev, nosuid, synchronous, mounted by me)\n"
    "map auto_home on /System/Volumes/Data/home (autofs, automounted, nobrowse)\n"
)


def test_parse_proc_mounts_keeps_only_sshfs_and_unescapes():
    assert sshfs.parse_proc_mounts(PROC_MOUNTS) == [
        ("docker@127.0.0.1:/mnt/sda1/dev", Path("/home/me/workspace/dev")),
        ("docker@127.0.0.1:/mnt/sda1/my code", Path("/home/me/My Code")),
    ]


def test_parse_macos_mount_output():
    assert sshfs.parse_macos_mount(MACOS_MOUNT) == [
        ("docker@127.0.0.1:/mnt/sda1/dev", Path("/Users/me/workspace/dev"))
    ]


def test_argv_has_no_password_and_quotes_paths_for_fuse_and_ssh():
    key = "/Users/me/Library/Application Support/b2dkit/vms/a,b/id_ed25519"
    argv = sshfs.sshfs_argv("127.0.0.1", 2022, key, "/k/known_hosts", "/mnt/sda1/dev", "/w/dev")
    assert argv[:3] == ["sshfs", "docker@127.0.0.1:/mnt/sda1/dev", "/w/dev"]
    options = argv[argv.index("-o") + 1]
    assert 'IdentityFile="/Users/me/Library/Application Support/b2dkit/vms/a\\,b/id_ed25519"' in options
    for must in ("StrictHostKeyChecking=yes", "BatchMode=yes", "IdentitiesOnly=yes", "reconnect",
                 "ServerAliveInterval=15", "UserKnownHostsFile=/k/known_hosts"):  # fmt: skip
        assert must in options.split(",")
    assert not any("password" in a.lower() for a in argv)


def _cache_options(cache):
    argv = sshfs.sshfs_argv("127.0.0.1", 2022, "/k/id", "/k/known_hosts", "/mnt/sda1/dev", "/w/dev", cache=cache)
    return [o for o in argv[argv.index("-o") + 1].split(",") if o.split("=")[0].endswith(("_timeout", "_cache"))]


def test_each_profile_cache_mode_has_its_options_and_the_default_is_fresh():
    from b2dkit.profile import MOUNT_CACHES

    assert set(sshfs._CACHE_OPTIONS) == set(MOUNT_CACHES)
    assert sshfs.sshfs_argv("h", 1, "k", "kh", "/r", "/l") == sshfs.sshfs_argv("h", 1, "k", "kh", "/r", "/l",
                                                                               cache="fresh")
    assert _cache_options("fresh") == ["dcache_timeout=0", "entry_timeout=1", "attr_timeout=0"]
    # relaxed: sshfs 9 s (to the end of the second, + 9) and the kernel 10 s on top: the 20 s bound
    assert _cache_options("relaxed") == ["dcache_timeout=9", "entry_timeout=10", "attr_timeout=10",
                                         "negative_timeout=10"]
    assert sshfs.RELAXED_BOUND == 20
    for cache in MOUNT_CACHES:  # contents are never kept across opens (see check_bound's same-size reopen)
        assert not {"kernel_cache", "auto_cache"} & set(_cache_options(cache))


def test_an_unknown_cache_mode_is_a_bug_not_a_silent_default():
    from b2dkit.errors import InternalError

    with pytest.raises(InternalError, match="'lazy'"):
        sshfs.sshfs_argv("h", 1, "k", "kh", "/r", "/l", cache="lazy")


def test_missing_sshfs_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing, match="apt-get install sshfs"):
        sshfs.mount("127.0.0.1", 22, "k", "kh", "/mnt/sda1/dev", tmp_path / "m")


# -- live mounts -----------------------------------------------------------------------------


@pytest.fixture
def live(vm, ssh_user, b2dkit_home):
    """A pinned VM, a guest dir owned by the login user, and cleanup of every mount we make."""
    if not os.path.exists("/dev/fuse") or shutil.which("sshfs") is None:
        pytest.skip("sshfs tests need /dev/fuse and sshfs (apt-get install sshfs fuse3)")
    guest.connect(vm["host"], vm["port"], vm["key_path"], vm["known_hosts_path"], user=vm["user"]).close()
    remote = Path(tempfile.mkdtemp(prefix="b2dkit-guest-dev-", dir="/tmp"))
    remote.chmod(0o755)
    os.chown(remote, ssh_user["uid"], ssh_user["gid"])
    workspace = b2dkit_home / "My Workspace"  # a space in the path, as on macOS
    workspace.mkdir()
    args = dict(vm, remote_dir=str(remote), local_dir=workspace / "dev")
    yield args
    for info in sshfs.list_mounts(check=False):
        if str(info.local_dir).startswith(str(workspace)):
            sshfs.unmount(info.local_dir, lazy=True)
    _kill_sshfs_for(workspace)
    shutil.rmtree(remote)


def _sshfs_pids(under: Path):
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"sshfs") and any(a.startswith(str(under).encode()) for a in argv):
                pids.append(int(entry.name))
    return pids


def _kill_sshfs_for(under: Path):
    for pid in _sshfs_pids(under):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _where(live):
    keys = ("host", "port", "key_path", "known_hosts_path", "remote_dir", "local_dir")
    return [live[k] for k in keys]


def _mount(live, cache="fresh"):
    return sshfs.mount(*_where(live), user=live["user"], cache=cache)


def _remount(live):
    return sshfs.remount(*_where(live), user=live["user"])


def _wait_state(local_dir, state, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        info = sshfs.find_mount(local_dir, check=True)
        if info is not None and info.state == state:
            return info
        time.sleep(0.2)
    raise AssertionError(f"mount at {local_dir} did not become {state}: {info}")


def test_mount_carries_files_both_ways_and_lists_alive(live, ssh_user):
    local, remote = live["local_dir"], Path(live["remote_dir"])
    assert _mount(live) == "mounted"
    (local / "from-host.txt").write_text("hello guest\n")
    assert (remote / "from-host.txt").read_text() == "hello guest\n"
    assert (remote / "from-host.txt").stat().st_uid == ssh_user["uid"]  # written as the guest user
    with guest.connect(live["host"], live["port"], live["key_path"], live["known_hosts_path"],
                       user=live["user"]) as s:  # fmt: skip
        s.run(["sh", "-c", 'echo "hello host" > "$1"/from-guest.txt', "-", str(remote)])
    assert (local / "from-guest.txt").read_text() == "hello host\n"

    [info] = [m for m in sshfs.list_mounts() if m.local_dir == local]
    assert info == sshfs.MountInfo(f"{live['user']}@127.0.0.1:{remote}", local, "alive", "")
    assert _mount(live) == "already mounted"

    assert sshfs.unmount(local) is True
    assert sshfs.find_mount(local) is None and list(local.iterdir()) == []
    assert (remote / "from-host.txt").exists()  # unmounting never touches the guest's files
    assert sshfs.unmount(local) is False


def test_a_non_empty_host_dir_is_refused(live):
    live["local_dir"].mkdir()
    (live["local_dir"] / "precious.txt").write_text("mine")
    with pytest.raises(MountError, match=f"{live['local_dir']} is not empty"):
        _mount(live)
    assert sshfs.find_mount(live["local_dir"]) is None
    assert (live["local_dir"] / "precious.txt").read_text() == "mine"


def test_a_different_source_on_the_same_dir_is_refused(live):
    _mount(live)
    with pytest.raises(MountError, match="already mounted from"):
        sshfs.mount(live["host"], live["port"], live["key_path"], live["known_hosts_path"], "/tmp",
                    live["local_dir"], user=live["user"])  # fmt: skip


def test_server_gone_makes_the_mount_stale_and_remount_repairs_it(live, sshd):
    _mount(live)
    sshd.stop()
    info = _wait_state(live["local_dir"], "stale")
    assert info.detail
    sshd.start()
    assert _remount(live) in ("alive", "repaired")  # sshfs's own reconnect may have beaten us to it
    (live["local_dir"] / "after.txt").write_text("back")
    assert (Path(live["remote_dir"]) / "after.txt").read_text() == "back"


def test_a_dead_sshfs_leaves_a_stale_mount_that_remount_repairs(live):
    _mount(live)
    _kill_sshfs_for(live["local_dir"])  # what a laptop sleep can do to the sshfs process
    info = _wait_state(live["local_dir"], "stale")
    assert info.detail == "not connected"
    with pytest.raises(MountError, match="stale mount .*--remount"):
        _mount(live)
    assert _remount(live) == "repaired"
    assert sshfs.find_mount(live["local_dir"]).alive
    (live["local_dir"] / "again.txt").write_text("ok")
    assert (Path(live["remote_dir"]) / "again.txt").read_text() == "ok"
    assert _remount(live) == "alive"


def test_a_changed_host_key_refuses_the_mount(live, sshd, ssh_keys):
    sshd.restart(ssh_keys["hostkeys"]["b"])
    with pytest.raises(MountError, match="cannot mount .*host key of VM 'testvm' .* changed"):
        _mount(live)
    assert sshfs.find_mount(live["local_dir"]) is None


def test_missing_guest_dir_is_explained(live):
    live["remote_dir"] = live["remote_dir"] + "/nope"
    with pytest.raises(MountError, match="guest dir does not exist"):
        _mount(live)


def test_a_change_on_either_side_is_seen_on_the_other_within_a_second(live):
    """The caching options may speed up stat walks only as far as this stays true."""
    local, remote = live["local_dir"], Path(live["remote_dir"])
    _mount(live)

    def write(name, text):
        (remote / name).write_text(text)
        return int((remote / name).stat().st_mtime)

    sshfsrule.check_one_second_rule(local, write, lambda name: (remote / name).unlink(),
                                    lambda name: (remote / name).read_text())


def test_a_relaxed_mount_shows_the_hosts_own_writes_on_the_host_at_once(live):
    """Long caches must never hide what the host itself just wrote (sshfs and the kernel drop
    what a write, create, rename or unlink through the mount touches)."""
    remote = Path(live["remote_dir"])
    _mount(live, cache="relaxed")
    sshfsrule.check_host_writes(live["local_dir"], lambda name: (remote / name).read_text())


@pytest.mark.slow
def test_a_relaxed_mount_shows_a_guest_change_within_its_bound_and_no_sooner_than_a_fresh_one(live):
    """docs/architecture.md's bound for cache: relaxed, at its worst moment (about 90 s)."""
    local, remote = live["local_dir"], Path(live["remote_dir"])
    _mount(live, cache="relaxed")

    def write(name, text):
        (remote / name).write_text(text)
        return int((remote / name).stat().st_mtime)

    took = sshfsrule.check_bound(local, write, lambda name: (remote / name).unlink(),
                                 held=sshfs.RELAXED_SSHFS, bound=sshfs.RELAXED_BOUND)
    print(took)


def test_a_host_dir_on_a_read_only_disk_is_a_mount_error_not_a_traceback(small_fs, tmp_path):
    if shutil.which("sshfs") is None:
        pytest.skip("needs sshfs")
    ro = small_fs(tmp_path / "ro", read_only=True)
    with pytest.raises(MountError, match="(?i)cannot create the mount point .*read-only"):
        sshfs.mount("127.0.0.1", 22, tmp_path / "key", tmp_path / "kh", "/mnt/sda1/dev", ro / "workspace" / "dev")
