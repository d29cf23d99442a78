"""repair.py on a real SSH server (dropbear on 127.0.0.1) and real sshfs mounts."""
# ruff: noqa: F811  (fixtures imported from other test modules are re-bound as parameters)

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from sshserver import ssh_keys, ssh_user, sshd, vm  # noqa: F401
from test_sshfs import _kill_sshfs_for, _mount, _wait_state, live  # noqa: F401

from b2dkit import guest, machines, mountfeed, paths, repair, sshfs, sshkeys
from b2dkit.profile import Mount


def _machine_for(live, b2dkit_home):
    """A b2dkit VM record whose one mount is ``live``'s, with the VM key where lifecycle looks."""
    machine = machines.Machine(name="testvm", provider="qemu",
                               mounts=[Mount(guest=live["remote_dir"], host=Path(live["local_dir"]))])
    vm_dir = paths.vm_dir("testvm")
    shutil.copy(live["key_path"], vm_dir / sshkeys.KEY_NAME)
    (vm_dir / sshkeys.KEY_NAME).chmod(0o600)
    return machine


def _session(live):
    return guest.connect(live["host"], live["port"], live["key_path"], live["known_hosts_path"], user=live["user"])


def test_a_dead_sshfs_is_remounted_and_the_repair_written_down(live, b2dkit_home):
    machine = _machine_for(live, b2dkit_home)
    _mount(live)
    _kill_sshfs_for(live["local_dir"])
    _wait_state(live["local_dir"], "stale")
    with _session(live) as session:
        result = repair.repair(machine, session, (live["host"], live["port"]), by="test", reason="sshfs died")
    assert [s.what for s in result.steps] == [f"remounted {live['local_dir']} (not connected)"]
    assert result.steps[0].ok and result.steps[0].seconds > 0
    assert abs(result.drift_before) < 1.0  # same host: the clock was right and was left alone
    assert sshfs.find_mount(live["local_dir"]).alive
    (live["local_dir"] / "after.txt").write_text("back\n")
    assert (Path(live["remote_dir"]) / "after.txt").read_text() == "back\n"
    vm_dir = paths.vm_dir("testvm")
    written = json.loads((vm_dir / repair.LAST).read_text())
    assert written["by"] == "test" and written["reason"] == "sshfs died"
    assert "sshfs died: remounted" in (vm_dir / repair.LOG).read_text()


def test_nothing_to_repair_writes_nothing(live, b2dkit_home):
    machine = _machine_for(live, b2dkit_home)
    _mount(live)
    with _session(live) as session:
        t0 = time.monotonic()
        result = repair.repair(machine, session, (live["host"], live["port"]), by="test", reason="a look")
        took = time.monotonic() - t0
    assert not result.changed and result.summary() == "nothing to repair"
    assert not (paths.vm_dir("testvm") / repair.LAST).exists()
    assert took < 2.0  # one `date` and one statvfs: cheap enough for every command


def test_an_unmounted_folder_is_left_alone(live, b2dkit_home):
    """The user may have run vm.unmount: a repair never mounts what is not mounted."""
    machine = _machine_for(live, b2dkit_home)
    with _session(live) as session:
        result = repair.repair(machine, session, (live["host"], live["port"]), by="test", reason="a look",
                               check_clock=False)  # fmt: skip
    assert not result.changed and sshfs.find_mount(live["local_dir"]) is None


def _watched_machine(live, b2dkit_home):
    if shutil.which("inotifywait") is None:
        pytest.skip("watched mounts need inotifywait where the guest dir is")
    machine = _machine_for(live, b2dkit_home)
    machine.mounts = [Mount(guest=live["remote_dir"], host=Path(live["local_dir"]), cache="watched")]
    machines.record_mount(machines.MadeMount("testvm", f"{live['user']}@127.0.0.1:{live['remote_dir']}", live["port"],
                                             str(live["local_dir"]), live["remote_dir"], "watched"))
    _mount(live, cache="watched")
    return machine


def _wait(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_watched_mount_whose_change_feed_died_is_remounted_with_a_new_one(live, b2dkit_home):
    machine = _watched_machine(live, b2dkit_home)
    vm_dir, local = paths.vm_dir("testvm"), live["local_dir"]
    pidfile, log = mountfeed.files(vm_dir, local)
    old = int(pidfile.read_text())
    os.kill(old, signal.SIGKILL)  # sshfs, its child, goes on serving: alive, but nobody drops stale names
    _wait(lambda: not mountfeed.running(vm_dir, local))
    assert sshfs.find_mount(local).alive
    with _session(live) as session:
        result = repair.repair(machine, session, (live["host"], live["port"]), by="test", reason="a look")
    assert [s.what for s in result.steps] == [f"remounted {local} (its change feed stopped)"]
    assert mountfeed.running(vm_dir, local) and int(pidfile.read_text()) != old
    (Path(live["remote_dir"]) / "seen.txt").write_text("from the guest\n")
    _wait(lambda: (local / "seen.txt").exists(), 2.0)
    assert "mounted " in log.read_text()


def test_a_watched_mount_whose_sshfs_died_ends_its_feed_and_is_remounted(live, b2dkit_home):
    machine = _watched_machine(live, b2dkit_home)
    vm_dir, local = paths.vm_dir("testvm"), live["local_dir"]
    _kill_sshfs_for(Path("/dev/fd"))  # a watched mount's sshfs serves /dev/fd/N
    _wait(lambda: not mountfeed.running(vm_dir, local))  # the supervisor ends with its sshfs
    _wait_state(local, "stale")  # not a hang: the supervisor's descriptor went with it
    with _session(live) as session:
        result = repair.repair(machine, session, (live["host"], live["port"]), by="test", reason="sshfs died")
    assert [s.what for s in result.steps] == [f"remounted {local} (not connected)"]
    assert sshfs.find_mount(local).alive and mountfeed.running(vm_dir, local)
