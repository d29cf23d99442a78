"""repair.py on a real SSH server (dropbear on 127.0.0.1) and real sshfs mounts."""
# ruff: noqa: F811  (fixtures imported from other test modules are re-bound as parameters)

import json
import shutil
import time
from pathlib import Path

from sshserver import ssh_keys, ssh_user, sshd, vm  # noqa: F401
from test_sshfs import _kill_sshfs_for, _mount, _wait_state, live  # noqa: F401

from b2dkit import guest, machines, paths, repair, sshfs, sshkeys
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
