"""lifecycle.py: the order of things for a VM (here: what a stop does before it may power off)."""

import pytest

from jsonschemas import validate

from b2dkit import guest, jsonout, lifecycle, machines
from b2dkit.errors import GuestError
from b2dkit.hypervisors.base import VMState


class _Provider:
    """Records what lifecycle asks of the hypervisor; the guest never shuts down by itself."""

    def __init__(self, events, clean):
        self.events, self.clean = events, clean

    def state(self):
        return VMState.RUNNING

    def ssh_endpoint(self):
        return "127.0.0.1", 2022

    def stop(self, timeout):
        self.events.append(("stop", timeout))
        return self.clean


class _Session:
    def __init__(self, events):
        self.events = events

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def run(self, cmd, timeout=60.0, check=True):
        self.events.append(("guest", cmd))


@pytest.fixture
def stopping(monkeypatch):
    events = []

    def world(clean=False, reachable=True):
        monkeypatch.setattr(lifecycle, "provider_for", lambda m: _Provider(events, clean))
        monkeypatch.setattr(lifecycle, "unmount_all", lambda m, log=None: lifecycle.Outcome())

        def connect(*a, **kw):
            if not reachable:
                raise GuestError("cannot reach SSH at 127.0.0.1:2022")
            return _Session(events)

        monkeypatch.setattr(guest, "connect", connect)
        return events

    return world


def test_stop_syncs_the_guest_before_the_hypervisor_may_power_it_off(stopping):
    events = stopping(clean=False)
    out = lifecycle.stop(machines.Machine(name="dev", provider="qemu"), timeout=0.05)
    assert events == [("guest", ["sync"]), ("stop", 0.05)]
    assert out.done == ["stopped VM dev (powered off)"]
    assert "synced first" in out.warnings[0] and "may be lost" not in out.warnings[0]


def test_a_clean_shutdown_is_no_warning(stopping):
    events = stopping(clean=True)
    out = lifecycle.stop(machines.Machine(name="dev", provider="qemu"))
    assert events == [("guest", ["sync"]), ("stop", lifecycle.STOP_TIMEOUT)]
    assert out.done == ["stopped VM dev"] and out.warnings == []


def test_an_unreachable_guest_is_still_stopped_and_the_risk_is_said(stopping):
    events = stopping(clean=False, reachable=False)
    said = []
    out = lifecycle.stop(machines.Machine(name="dev", provider="qemu"), log=said.append, timeout=1)
    assert events == [("stop", 1.0)]
    assert any("could not flush" in line for line in said) and "may be lost" in out.warnings[0]


@pytest.mark.parametrize("bad", [0, -1, "0", "abc", "nan", float("inf"), ""])
def test_a_timeout_that_skips_the_shutdown_is_refused_before_anything_happens(stopping, bad):
    events = stopping()
    with pytest.raises(lifecycle.InputError, match="--timeout must be"):
        lifecycle.stop(machines.Machine(name="dev", provider="qemu"), timeout=bad)
    assert events == []


def test_a_missing_build_tool_for_the_demo_guest_is_tool_missing_not_a_traceback(tmp_path, monkeypatch):
    """The demo profile builds its guest: without dpkg-query/sudo that is this machine's to fix."""
    from b2dkit import profile
    from b2dkit.errors import ToolMissing

    demo = profile.load("demo")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    # Deciding says what the step will do (a dry run lists it); doing it says what is missing.
    found, step = lifecycle.source_iso_change(demo)
    assert found is None and step.startswith("build the boot2docker-compatible guest ISO from Debian packages")
    with pytest.raises(ToolMissing, match="guest ISO") as excinfo:
        lifecycle.source_iso(demo)
    assert "install dpkg-query" not in str(excinfo.value)  # no such package: dpkg ships dpkg-query


# -- the pure diffs of the create and mounts steps ---------------------------------------------


def test_present_or_made_keeps_what_is_there_and_makes_what_is_not(tmp_path):
    from pathlib import Path

    assert lifecycle.present_or_made(Path("/iso"), "ISO x is in the cache", "iso").kept == ["ISO x is in the cache"]
    made = lifecycle.present_or_made(None, "download u", "iso")
    assert [c.text for c in made.changes] == ["download u"] and made.kept == []


def test_create_changes_a_new_vm_is_one_change_an_existing_one_the_providers():
    from b2dkit.changes import Change

    new = lifecycle.create_changes(lifecycle.VMFacts("dev", "qemu", VMState.ABSENT), 512, 1, 1024)
    (change,) = new.changes
    assert change.text == "create VM dev on qemu (512 MB, 1 CPU, 1024 MB persistent disk)"
    assert change.done == "created VM dev on qemu (512 MB, 1 CPU, 1024 MB persistent disk)"
    memory = Change("memory 512 → 768 MB (VM dev is running: takes effect at its next start)", "memory")
    running = lifecycle.VMFacts("dev", "qemu", VMState.RUNNING, [memory])
    assert lifecycle.create_changes(running, 768, 1, 1024).changes == [memory]
    assert lifecycle.create_changes(running, 768, 1, 1024).kept == ["VM dev exists (running)"]
    recorded = lifecycle.VMFacts("dev", "qemu", VMState.RUNNING, [], ("memory 768 MB is recorded; …",))
    assert lifecycle.create_changes(recorded, 768, 1, 1024).kept == [
        "VM dev exists (running)", "memory 768 MB is recorded; …", "VM dev already matches the profile"]


def test_mount_changes_mounts_remounts_unmounts_and_never_adopts(tmp_path):
    from b2dkit import sshfs
    from b2dkit.profile import Mount

    dev, gone, other, foreign = (str(tmp_path / n) for n in ("dev", "gone", "other", "foreign"))
    src = "docker@127.0.0.1:"
    made = {dev: machines.MadeMount("a", src + "/mnt/sda1/dev", 2022, dev, "/mnt/sda1/dev"),
            gone: machines.MadeMount("a", src + "/mnt/sda1/gone", 2022, gone, "/mnt/sda1/gone")}
    live = {dev: sshfs.MountInfo(src + "/mnt/sda1/dev", tmp_path / "dev", "alive"),
            gone: sshfs.MountInfo(src + "/mnt/sda1/gone", tmp_path / "gone", "alive"),
            foreign: sshfs.MountInfo(src + "/x", tmp_path / "foreign", "alive")}
    facts = lifecycle.MountFacts(live, made, {foreign: None}, "127.0.0.1", 2022)
    mounts = [Mount(guest="/mnt/sda1/dev", host=tmp_path / "dev"), Mount(guest="/mnt/sda1/o", host=tmp_path / "other"),
              Mount(guest="/mnt/sda1/f", host=tmp_path / "foreign")]
    decided = lifecycle.mount_changes(mounts, facts)
    assert [c.text for c in decided.changes] == [f"unmount {gone} (no longer in the profile)",
                                                 f"mount /mnt/sda1/o on {other} with sshfs"]
    assert decided.kept == [f"/mnt/sda1/dev already mounted on {dev}"]
    assert len(decided.warnings) == 1 and "b2dkit did not make" in decided.warnings[0]
    moved = lifecycle.MountFacts(live, made, {foreign: None}, "127.0.0.1", 2023)  # the SSH port moved
    assert [c.text for c in lifecycle.mount_changes(mounts[:1], moved).changes] == [
        f"unmount {gone} (no longer in the profile)", f"remount /mnt/sda1/dev on {dev}"]



def test_a_changed_cache_mode_is_a_remount_a_dry_run_names(tmp_path):
    from b2dkit import sshfs
    from b2dkit.profile import Mount

    dev = str(tmp_path / "dev")
    src = "docker@127.0.0.1:/mnt/sda1/dev"
    made = machines.MadeMount("a", src, 2022, dev, "/mnt/sda1/dev")  # mounted fresh (the default)
    facts = lifecycle.MountFacts({dev: sshfs.MountInfo(src, tmp_path / "dev", "alive")}, {dev: made}, {},
                                 "127.0.0.1", 2022)
    relaxed = Mount(guest="/mnt/sda1/dev", host=tmp_path / "dev", cache="relaxed")
    (change,) = lifecycle.mount_changes([relaxed], facts).changes
    assert (change.kind, change.value) == ("remount", relaxed)
    assert change.text == f"remount /mnt/sda1/dev on {dev} (cache fresh → relaxed)"
    assert change.done == f"remounted /mnt/sda1/dev on {dev} (cache fresh → relaxed)"
    as_made = dict(facts.mine, **{dev: machines.MadeMount("a", src, 2022, dev, "/mnt/sda1/dev", "relaxed")})
    kept = lifecycle.mount_changes([relaxed], lifecycle.MountFacts(facts.live, as_made, {}, "127.0.0.1", 2022))
    assert kept.changes == [] and kept.kept == [
        f"/mnt/sda1/dev already mounted on {dev} (cache relaxed: changes in the VM seen within 20 s)"]
    new = lifecycle.mount_changes([relaxed], lifecycle.MountFacts({}, {}, {}, "127.0.0.1", 2022))
    assert [c.text for c in new.changes] == [
        f"mount /mnt/sda1/dev on {dev} with sshfs (cache relaxed: changes in the VM seen within 20 s)"]


# -- mounts: real sshfs against the test SSH server, two VMs sharing one host dir ---------------

from sshserver import ssh_keys, ssh_user, sshd  # noqa: E402,F401,F811  # ruff: F811 below is the fixture use


@pytest.fixture
def two_vms(sshd, ssh_keys, ssh_user, b2dkit_home, monkeypatch, tmp_path):  # noqa: F811
    """VMs ``a`` and ``b`` whose profiles mount guest dirs on the same host dir (as cst-based ones do)."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from b2dkit import paths, sshfs
    from b2dkit.profile import Mount

    if not os.path.exists("/dev/fuse") or shutil.which("sshfs") is None:
        pytest.skip("needs /dev/fuse and sshfs")
    monkeypatch.setattr(lifecycle, "GUEST_USER", ssh_user["name"])
    remotes = []
    for _ in range(3):
        remote = Path(tempfile.mkdtemp(prefix="b2dkit-guest-", dir="/tmp"))
        remote.chmod(0o755)
        os.chown(remote, ssh_user["uid"], ssh_user["gid"])
        remotes.append(remote)
    work = b2dkit_home / "workspace"
    vms = {}
    for name in ("a", "b"):
        folder = paths.ensure_dir(paths.vm_dir(name))
        shutil.copy(ssh_keys["private"], folder / "id_ed25519")
        (folder / "id_ed25519").chmod(0o600)
        vms[name] = machines.Machine(name=name, provider="qemu",
                                     mounts=[Mount(guest=str(remotes[0]), host=work / "dev")])
        machines.save(vms[name])
    yield {"vms": vms, "endpoint": ("127.0.0.1", sshd.port), "work": work, "remotes": remotes}
    for info in sshfs.list_mounts(check=False):
        if str(info.local_dir).startswith(str(work)):
            sshfs.unmount(info.local_dir, lazy=True)
    for remote in remotes:
        shutil.rmtree(remote)


def _live(work):
    from b2dkit import sshfs

    return sorted(str(m.local_dir) for m in sshfs.list_mounts(check=False) if str(m.local_dir).startswith(str(work)))


def test_a_vm_never_takes_or_unmounts_another_vms_mount_of_the_same_dir(two_vms):
    from b2dkit import status

    a, b, at = two_vms["vms"]["a"], two_vms["vms"]["b"], two_vms["endpoint"]
    dev = str(two_vms["work"] / "dev")
    assert lifecycle.mount_all(a, endpoint=at).done == [f"mounted {a.mounts[0].guest} on {dev}"]
    out = lifecycle.mount_all(b, endpoint=at)
    assert out.kept == [] and len(out.warnings) == 1 and "VM 'a'" in out.warnings[0]
    (row,) = status.mounts(b)
    source = f"{lifecycle.GUEST_USER}@127.0.0.1:{a.mounts[0].guest}"
    assert (row["status"], row["owner"], row["source"]) == ("another mount", "a", source)
    assert status.render_mount(row) == f"{a.mounts[0].guest} -> {dev}: mounted by VM 'a'"
    validate("vm.mounts", jsonout.vm_mounts("b", [row]))  # what `vm.mounts --json` prints for it
    assert [r["status"] for r in status.mounts(a)] == ["alive"]
    assert lifecycle.unmount_all(b).done == []  # vm.unmount --name=b / destroying b leaves a's mount
    assert _live(two_vms["work"]) == [dev]
    assert lifecycle.unmount_all(a).done == [f"unmounted {dev}"]
    assert _live(two_vms["work"]) == []
    # Now b may have it, and it is b's from then on.
    assert lifecycle.mount_all(b, endpoint=at).done and machines.made_mounts("a") == []
    assert lifecycle.unmount_all(a).done == [] and _live(two_vms["work"]) == [dev]


def test_mounts_say_the_cache_mode_and_a_mode_the_live_mount_does_not_have_yet(two_vms):
    from b2dkit import status
    from b2dkit.profile import Mount

    a, at, dev = two_vms["vms"]["a"], two_vms["endpoint"], str(two_vms["work"] / "dev")
    guest_dir = a.mounts[0].guest
    lifecycle.mount_all(a, endpoint=at)
    (row,) = status.mounts(a)
    assert (row["cache"], "mounted_cache" in row) == ("fresh", False)
    assert status.render_mount(row) == f"{guest_dir} -> {dev}: alive"
    # The profile now asks for relaxed: the live mount still caches as it was made, and says so.
    a.mounts = [Mount(guest=guest_dir, host=two_vms["work"] / "dev", cache="relaxed")]
    machines.save(a)
    (row,) = status.mounts(a)
    assert (row["cache"], row["mounted_cache"]) == ("relaxed", "fresh")
    assert status.render_mount(row) == (f"{guest_dir} -> {dev}: alive with cache fresh; the profile says relaxed: "
                                        "`b2dkit vm.mount` remounts it")
    validate("vm.mounts", jsonout.vm_mounts("a", [row]))
    assert lifecycle.mount_all(a, endpoint=at).done == [f"remounted {guest_dir} on {dev} (cache fresh → relaxed)"]
    (row,) = status.mounts(a)
    assert "mounted_cache" not in row
    relaxed = "alive (cache relaxed: changes in the VM seen within 20 s)"
    assert status.render_mount(row) == f"{guest_dir} -> {dev}: {relaxed}"
    lifecycle.unmount_all(a)


def test_a_mount_dropped_from_the_profile_is_unmounted(two_vms):
    from b2dkit.profile import Mount

    a, at, work, remotes = two_vms["vms"]["a"], two_vms["endpoint"], two_vms["work"], two_vms["remotes"]
    a.mounts.append(Mount(guest=str(remotes[1]), host=work / "other"))
    lifecycle.mount_all(a, endpoint=at)
    assert _live(work) == [str(work / "dev"), str(work / "other")]
    a.mounts.pop()
    out = lifecycle.mount_all(a, endpoint=at)
    assert out.done == [f"unmounted {work / 'other'} (no longer in the profile)"]
    assert _live(work) == [str(work / "dev")]


def test_a_wanted_mount_that_was_not_made_fails_strict_callers_after_trying_the_rest(two_vms):
    from b2dkit.errors import MountError
    from b2dkit.profile import Mount

    a, at, work, remotes = two_vms["vms"]["a"], two_vms["endpoint"], two_vms["work"], two_vms["remotes"]
    (work / "busy").mkdir(parents=True)
    (work / "busy" / "notes.txt").write_text("mine")
    a.mounts.insert(0, Mount(guest=str(remotes[1]), host=work / "busy"))
    with pytest.raises(MountError, match="not empty"):
        lifecycle.mount_all(a, endpoint=at, strict=True)
    assert _live(work) == [str(work / "dev")]  # the other mount was still made
    assert (work / "busy" / "notes.txt").read_text() == "mine"
