"""Onboarding: the plan, failures and Ctrl-C (fast, fake VBoxManage), then the real thing on QEMU.

The fast half runs the real steps against the strict fake VBoxManage and a local HTTP
mirror; only the boot (step 5) is replaced where a test stops before it.  The e2e half
runs ``b2dkit onboard`` on the real guest under QEMU: a fresh run, a re-run that changes
nothing, and runs killed with SIGKILL at each step that writes something, each finished
by the next run.  Guest boots are few (three): tests in a class share one VM and run in
order, each building on the last.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from b2dkit import download, isocache, lifecycle, machines, paths
from b2dkit import onboard as flow
from b2dkit import profile as profiles
from b2dkit.main import make_program
import cli
import qemuclean
from fakevbox import install
from httpmirror import Mirror, Route
from isofixtures import build_iso, tools_available
from ports import free_port

REPO = Path(__file__).resolve().parents[1]
CLOCK = "set the guest clock from the host"


# -- helpers shared by both halves --------------------------------------------------------------


class IsoMirror(Mirror):
    """One ISO at ``/b2d.iso``; ``hold_at`` pauses its body there until ``release`` is set."""

    def __init__(self, payload: bytes):
        super().__init__()
        self.route = self.routes["/b2d.iso"] = Route(payload=payload)

    @property
    def payload(self):
        return self.route.payload

    @property
    def hold_at(self):
        return self.route.hold_at

    @hold_at.setter
    def hold_at(self, offset):
        self.route.hold_at = offset

    @property
    def iso_url(self):
        return self.url("/b2d.iso")



def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onboard_task(capfd, *argv):
    """``b2dkit onboard …`` in this process: (exit code, stdout, stderr)."""
    code, out = cli.task(capfd, "onboard", *argv)
    return code, out.out, out.err


def tree(root: Path) -> dict:
    """Every file under root with its size and mtime: 'changed nothing' made checkable."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


def part_files(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.part")) if root.exists() else []


def write_profile(path: Path, *, extends, name, provider, disk, iso_lines, ssh_port, app_port, extra=()):
    """A profile that extends a shipped one, with the inherited host ports swapped for free ones."""
    path.write_text("\n".join([
        f"extends: {extends}",
        f"name: {name}",
        f"provider: {provider}",
        "memory: 512",
        "cpus: 1",
        f"disk: {disk}",
        *iso_lines,
        "forwards:",
        "  - {host: 2022, remove: true}",
        "  - {host: 8000, remove: true}",
        f"  - {{host: {ssh_port}, guest: 22}}",
        f"  - {{host: {app_port}, guest: 8000}}",
        *extra,
    ]) + "\n")
    return path


# == fast: the fake VBoxManage =================================================================


FAST_VM = "ob-fast"


@pytest.fixture
def fast(tmp_path, monkeypatch):
    """Fake VBoxManage, a private HOME, a mirror serving a small boot2docker-like ISO, a cst profile."""
    missing = tools_available()
    if missing:
        pytest.skip(missing)
    fake = install(tmp_path / "fv", monkeypatch)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    iso = build_iso(tmp_path / "boot2docker.iso")
    mirror = IsoMirror(iso.read_bytes())
    digest = sha256(iso)
    prof = write_profile(
        tmp_path / "fast.yaml", extends="cst", name=FAST_VM, provider="virtualbox", disk=1024,
        iso_lines=["iso:", f"  urls: [{mirror.iso_url}]", f"  sha256: {digest}"],
        ssh_port=free_port(), app_port=free_port(),
    )
    yield {"fake": fake, "home": home, "mirror": mirror, "sha256": digest, "profile": f"--profile={prof}",
           "profile_path": prof}
    mirror.close()


@pytest.fixture
def stop_before_boot(monkeypatch):
    """Ctrl-C as the VM would start: steps 1-4 run for real, nothing needs a guest."""
    calls = []

    def interrupted(machine, **kwargs):
        calls.append(machine.name)
        raise KeyboardInterrupt

    monkeypatch.setattr(lifecycle, "start", interrupted)
    return calls


def test_dry_run_prints_the_plan_and_changes_nothing(fast, b2dkit_home, capfd):
    code, out, err = onboard_task(capfd, fast["profile"], "--dry-run")
    assert code == 0, err
    assert [line for line in out.splitlines() if line.startswith("[")][:1] == ["[1/7] doctor"]
    for number, step in enumerate(flow.STEPS, start=1):
        assert f"[{number}/7] {step}" in out
    assert f"would: download {fast['mirror'].iso_url} and verify sha256 {fast['sha256'][:12]}" in out
    assert "would: remaster the ISO with tz=CST-8" in out
    assert f"would: create VM {FAST_VM} on virtualbox (512 MB, 1 CPU, 1024 MB persistent disk)" in out
    assert f"would: start VM {FAST_VM}" in out
    assert f"would: mount /mnt/sda1/dev on {fast['home'] / 'workspace' / 'dev'} with sshfs" in out
    assert out.rstrip().endswith("dry run: nothing was changed")
    assert "done:" not in out
    # Nothing was written, fetched or created.
    assert tree(b2dkit_home) == {}
    assert fast["mirror"].requests == []
    assert fast["fake"].state()["machines"] == {}
    assert set(fast["fake"].subcommands()) <= {"--version", "list", "showvminfo"}  # read-only calls
    assert not (fast["home"] / "workspace").exists()


def test_dry_run_does_not_stop_on_a_failed_check(fast, b2dkit_home, capfd, monkeypatch):
    monkeypatch.setenv("PATH", str(fast["fake"].bin))  # VBoxManage, but no sshfs and no ssh
    monkeypatch.setattr("b2dkit.install.as_root", lambda: False)  # a laptop user: hints say sudo
    code, out, _ = onboard_task(capfd, fast["profile"], "--dry-run")
    assert code == 0
    assert "[MISSING] sshfs" in out and "sudo apt-get install sshfs fuse3" in out
    assert "[7/7] summary" in out and tree(b2dkit_home) == {}


def test_failed_check_stops_before_anything_is_fetched(fast, b2dkit_home, capfd, monkeypatch):
    monkeypatch.setenv("PATH", str(fast["fake"].bin))
    code, out, err = onboard_task(capfd, fast["profile"], "--yes")
    assert code == 3
    assert err.splitlines() == ["b2dkit: error: 2 check(s) failed: ssh client, sshfs "
                                "(install what is listed above, then re-run)"]
    assert "[2/7]" not in out and fast["mirror"].requests == [] and tree(b2dkit_home) == {}


# What the fast profile (cst: sshfs mounts) lacks on a bare machine, in each manager's names.
SSHFS = {"apt": ["sshfs", "fuse3"], "dnf": ["fuse-sshfs", "fuse3"], "brew": ["--cask", "macfuse"]}
SSHFS_PROGRAMS = {"sshfs": ["sshfs"], "fuse-sshfs": ["sshfs"], "gromgit/fuse/sshfs-mac": ["sshfs"],
                  "fuse3": ["fusermount3"], "macfuse": []}
MANAGERS = [("apt", True), ("dnf", True), ("dnf", False), ("brew", False)]


@pytest.mark.parametrize("manager, as_root", MANAGERS, ids=[f"{m}-{'root' if r else 'user'}" for m, r in MANAGERS])
def test_yes_on_a_bare_machine_installs_with_its_manager_and_goes_on_in_the_same_run(
        fast, b2dkit_home, capfd, monkeypatch, stop_before_boot, tmp_path, manager, as_root):
    from fakepkg import bare_machine

    if not os.path.exists("/dev/fuse"):
        pytest.skip("sshfs needs /dev/fuse here")
    pkg = bare_machine(monkeypatch, tmp_path / "pkg", SSHFS_PROGRAMS, manager=manager, as_root=as_root,
                       real=("ssh",), extra_path=[fast["fake"].bin])  # VBoxManage and ssh: only sshfs lacks
    code, out, err = onboard_task(capfd, fast["profile"], "--yes")
    assert code == 130 and stop_before_boot == [FAST_VM], err  # steps 1-4 ran for real, then the boot
    installs = [call for call in pkg.calls() if call[0] != "sudo"]
    if manager == "brew":  # casks first, then formulae, never through sudo
        assert installs == [["brew", "install", *SSHFS["brew"]], ["brew", "install", "gromgit/fuse/sshfs-mac"]]
    else:
        assert installs == [[{"apt": "apt-get"}.get(manager, manager), "install", "-y", *SSHFS[manager]]]
    through_sudo = [call[1:] for call in pkg.calls() if call[0] == "sudo"]
    assert through_sudo == ([] if as_root or manager == "brew" else installs)
    assert "re-checked after installing:" in out and "[ok ] sshfs" in out
    assert "[2/7] iso" in out and f"done: created VM {FAST_VM} on virtualbox" in out


def test_a_failing_package_manager_stops_onboarding_at_step_1_in_one_line(
        fast, b2dkit_home, capfd, monkeypatch, tmp_path):
    from fakepkg import bare_machine

    pkg = bare_machine(monkeypatch, tmp_path / "pkg", SSHFS_PROGRAMS, manager="dnf", as_root=False,
                       real=("ssh",), extra_path=[fast["fake"].bin])
    monkeypatch.setenv("FAKEPKG_FAIL", "1")
    code, out, err = onboard_task(capfd, fast["profile"], "--yes")
    assert code == 3
    said = [line for line in err.splitlines() if line.startswith("b2dkit:")]  # (the rest is dnf's own stderr)
    assert len(said) == 1 and said[0].startswith(
        "b2dkit: error: step 1 (doctor) failed: `sudo dnf install -y fuse-sshfs fuse3` failed (exit status 100) "
        "(read its output above, fix it, and re-run")
    assert "re-checked" not in out and "[2/7]" not in out and pkg.installed() == []
    assert fast["mirror"].requests == [] and tree(b2dkit_home) == {}


def test_failing_download_stops_at_step_2_with_one_line(fast, b2dkit_home, capfd, tmp_path):
    prof = Path(fast["profile_path"])
    prof.write_text(prof.read_text().replace("/b2d.iso", "/gone.iso"))
    code, out, err = onboard_task(capfd, fast["profile"], "--yes")
    assert code == 3  # the mirror failed: the machine's world, not the input
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("b2dkit: error: step 2 (iso) failed: could not fetch ISO ")
    assert "gone.iso: HTTP 404" in lines[0]
    assert lines[0].endswith("fix it and re-run: finished steps are kept)")
    assert "[3/7]" not in out  # stopped there
    assert fast["fake"].state()["machines"] == {}
    assert isocache.sources() == [] and part_files(b2dkit_home) == []


def test_failing_create_stops_at_step_4_and_the_next_run_continues(fast, b2dkit_home, capfd, monkeypatch,
                                                                   stop_before_boot):
    monkeypatch.setenv("FAKEVBOX_FAULTS", "createvm=exit0-error*1")  # VirtualBox fails once
    code, out, err = onboard_task(capfd, fast["profile"], "--yes")
    assert code == 3  # the hypervisor refused
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("b2dkit: error: step 4 (create) failed: ")
    assert "VT-x is not available" in lines[0] and "re-run" in lines[0]
    assert "[5/7]" not in out and stop_before_boot == []
    # Steps 2 and 3 are done and kept.
    cached = isocache.source_path(fast["sha256"])
    assert sha256(cached) == fast["sha256"]
    assert len(fast["mirror"].requests) == 1
    # The next run picks up at step 4: nothing fetched or remastered again, the VM made once.
    code, out, err = onboard_task(capfd, fast["profile"], "--yes")
    assert code == 130 and stop_before_boot == [FAST_VM]
    assert f"already: ISO {cached.name} is in the cache" in out
    assert "already: remastered ISO with tz=CST-8 is cached" in out
    assert f"done: created VM {FAST_VM} on virtualbox" in out
    assert len(fast["mirror"].requests) == 1
    assert list(fast["fake"].state()["machines"]) == [FAST_VM]


def test_ctrl_c_in_a_step_exits_130_and_keeps_what_was_done(fast, b2dkit_home, capfd, stop_before_boot):
    code, out, err = onboard_task(capfd, fast["profile"], "--yes")
    assert code == 130
    assert err.splitlines() == ["b2dkit: error: interrupted during step 5 (start); everything finished "
                                "before it is kept (re-run the same command to continue)"]
    assert "[6/7]" not in out
    assert list(fast["fake"].state()["machines"]) == [FAST_VM]
    assert machines.load(FAST_VM).provider == "virtualbox"
    # A dry run now shows steps 2-4 as already done, and still changes nothing.
    before, requests = tree(b2dkit_home), len(fast["mirror"].requests)
    code, out, err = onboard_task(capfd, fast["profile"], "--dry-run")
    assert code == 0, err
    assert "already: ISO" in out and "already: remastered ISO with tz=CST-8 is cached" in out
    assert f"already: VM {FAST_VM} exists (stopped)" in out
    assert f"would: start VM {FAST_VM}" in out
    assert tree(b2dkit_home) == before and len(fast["mirror"].requests) == requests


def test_ctrl_c_during_the_download_keeps_the_partial_file_and_the_next_run_resumes(
        fast, b2dkit_home, capfd, monkeypatch, stop_before_boot):
    real_body = download._body

    def interrupted_body(response, size):
        chunks = real_body(response, 4096)
        yield next(chunks)
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "_body", interrupted_body)
    code, _, err = onboard_task(capfd, fast["profile"], "--yes")
    assert code == 130
    assert "interrupted during step 2 (iso)" in err
    part = isocache.source_path(fast["sha256"]).with_name(fast["sha256"] + ".iso.part")
    kept = part.stat().st_size
    assert 0 < kept < len(fast["mirror"].payload)
    assert isocache.sources() == []
    monkeypatch.setattr(download, "_body", real_body)
    code, out, _ = onboard_task(capfd, fast["profile"], "--yes")
    assert code == 130 and stop_before_boot == [FAST_VM]  # got to the boot this time
    assert fast["mirror"].requests[-1] == ("/b2d.iso", f"bytes={kept}-")
    assert sha256(isocache.source_path(fast["sha256"])) == fast["sha256"]
    assert part_files(b2dkit_home) == []


def test_plan_lists_what_was_done_and_what_was_kept(fast, monkeypatch, stop_before_boot):
    prof = profiles.load(str(fast["profile_path"]))
    lines = []
    plan = flow.onboard(prof, dry_run=True, log=lines.append)
    assert plan.kept == [] and len(plan.done) == 5  # download, remaster, create, start, mount
    assert all(line.startswith(("[", "  ", "would: ", "dry run")) for line in lines)


# == e2e: the real guest under QEMU ============================================================


@pytest.fixture(scope="session")
def guest_iso():
    proc = subprocess.run([sys.executable, str(REPO / "guest" / "build.py")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


class World:
    """One user's laptop: HOME, B2DKIT_HOME, a mirror with the guest ISO, a demo-based profile."""

    def __init__(self, root: Path, guest_iso: Path, name: str):
        self.root = root
        self.name = name
        self.home = root / "home"
        self.home.mkdir()
        self.b2dkit_home = root / "b2dkit-home"
        self.mount = self.home / "workspace" / "dev"
        self.mirror = IsoMirror(guest_iso.read_bytes())
        self.sha256 = hashlib.sha256(self.mirror.payload).hexdigest()
        self.ssh_port = free_port()
        self.profile = write_profile(
            root / f"{name}.yaml", extends="demo", name=name, provider="qemu", disk=2048,
            iso_lines=["iso:", f"  urls: [{self.mirror.iso_url}]", "  sha256: UNVERIFIED"],
            ssh_port=self.ssh_port, app_port=free_port(),
        )
        # The team lead pins it with iso.pin on their own machine (its own cache): the new hire's
        # runs below onboard from the pinned profile and download and check the ISO themselves.
        lead = dict(os.environ, PYTHONPATH=str(REPO), B2DKIT_HOME=str(root / "lead-home"), HOME=str(root))
        pinned = subprocess.run([sys.executable, "-m", "b2dkit", "iso.pin", f"--profile={self.profile}"],
                                env=lead, capture_output=True, text=True, timeout=300)
        assert pinned.returncode == 0, pinned.stdout + pinned.stderr
        assert f"  sha256: {self.sha256}\n" in self.profile.read_text()
        self.mirror.requests.clear()
        self.mp = pytest.MonkeyPatch()
        self.mp.setenv("B2DKIT_HOME", str(self.b2dkit_home))
        self.mp.setenv("HOME", str(self.home))
        self.mp.setenv("B2DKIT_QEMU_ACCEL", os.environ.get("B2DKIT_QEMU_ACCEL", "tcg"))
        self.procs = []

    @property
    def args(self):
        """What the user types after ``b2dkit onboard``."""
        return [f"--profile={self.profile}", "--yes"]

    @property
    def vm_dir(self) -> Path:
        return paths.vm_dir(self.name)

    def env(self) -> dict:
        return dict(os.environ, PYTHONPATH=str(REPO), B2DKIT_HOME=str(self.b2dkit_home), HOME=str(self.home))

    def spawn(self, pause_before=None):
        """``b2dkit onboard`` as a separate process, as a user's terminal runs it.

        ``pause_before``: a glob; the process stops just before it renames a finished file
        onto a path matching it (writing a ``paused`` marker), so the test can SIGKILL it
        at exactly that point.  Everything else runs unchanged.
        """
        env = self.env()
        self.log = self.root / f"run-{len(self.procs)}.log"
        log = open(self.log, "wb")
        if pause_before:
            env["OB_PAUSE_BEFORE"] = pause_before
            env["OB_PAUSE_MARKER"] = str(self.root / "paused")
            argv = [sys.executable, "-c", PAUSING_B2DKIT, "onboard", *self.args]
        else:
            argv = [sys.executable, "-m", "b2dkit", "onboard", *self.args]
        with log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        self.procs.append(proc)
        return proc

    def output(self) -> str:
        """What the last spawned run printed."""
        return self.log.read_text()

    def kill_when(self, proc, condition, what, timeout=180.0):
        deadline = time.monotonic() + timeout
        while not condition():
            if proc.poll() is not None:
                raise AssertionError(f"onboard exited ({proc.returncode}) before {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"timed out waiting for {what}:\n{self.output()}")
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL

    def vm_list(self):
        out = subprocess.run([sys.executable, "-m", "b2dkit", "vm.list", "--json"], env=self.env(),
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out)["vms"]

    def ssh(self, command) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "b2dkit", "vm.ssh", f"--name={self.name}", "-c", command],
                              env=self.env(), capture_output=True, text=True, timeout=60)

    def teardown(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.mp.setenv("B2DKIT_HOME", str(self.b2dkit_home))
        try:
            make_program().run(["b2dkit", "vm.destroy", f"--name={self.name}", "--yes", "--purge"], exit=False)
        except BaseException:  # noqa: B036 - teardown must go on to kill QEMU whatever happened
            pass
        qemuclean.kill_all(self.root)
        if os.path.ismount(self.mount):
            subprocess.run(["fusermount3", "-uz", str(self.mount)], check=False)
        self.mirror.close()
        self.mp.undo()


# The pause hook for ``World.spawn``: os.replace is how every b2dkit file is published.
PAUSING_B2DKIT = """
import fnmatch, os, sys, time
from pathlib import Path
pattern, marker = os.environ["OB_PAUSE_BEFORE"], os.environ["OB_PAUSE_MARKER"]
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if fnmatch.fnmatch(str(dst), pattern):
        Path(marker).write_text(str(src))
        time.sleep(3600)
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
from b2dkit.main import program
sys.argv[0] = "b2dkit"
program.run()
"""


def written_by_b2dkit(world: World) -> dict:
    """tree() of B2DKIT_HOME without what the running guest itself writes (its disk, its console)."""
    vm = world.vm_dir.relative_to(world.b2dkit_home)
    return {k: v for k, v in tree(world.b2dkit_home).items() if k not in (f"{vm}/disk.img", f"{vm}/serial.log")}


@pytest.fixture(scope="class")
def fresh_world(tmp_path_factory, guest_iso):
    world = World(tmp_path_factory.mktemp("ob-fresh"), guest_iso, "ob-fresh")
    yield world
    world.teardown()


@pytest.fixture(scope="class")
def killed_world(tmp_path_factory, guest_iso):
    world = World(tmp_path_factory.mktemp("ob-killed"), guest_iso, "ob-killed")
    yield world
    world.teardown()


@pytest.mark.e2e
@pytest.mark.slow
class TestFreshRunThenReRuns:
    """A fresh run, a re-run that has nothing to do, and a run killed while the VM boots."""

    @pytest.fixture
    def world(self, fresh_world):
        return fresh_world

    @pytest.fixture(autouse=True)
    def _same_home(self, world, monkeypatch):
        monkeypatch.setenv("B2DKIT_HOME", str(world.b2dkit_home))

    def test_fresh_run_completes(self, world, capfd):
        code, out, err = onboard_task(capfd, *world.args)
        assert code == 0, out + err
        assert world.mirror.requests == [("/b2d.iso", None)]
        assert sha256(isocache.source_path(world.sha256)) == world.sha256
        # The summary.
        assert f"Your dev VM {world.name} is ready (qemu)." in out
        changed = int(re.search(r"changed this run: (\d+)", out).group(1))
        assert changed >= 5  # download, remaster, create, start, dirs/clock, mount
        assert f"forward  127.0.0.1:{world.ssh_port} -> VM port 22/tcp" in out
        assert f"folder   {world.mount} <-> VM /mnt/sda1/dev: alive" in out
        # This guest has no Docker daemon (no /etc/init.d/docker), so there is no docker line.
        assert "docker   " not in out and "Docker" not in out
        # The VM as a user would check it.
        assert [(vm["name"], vm["state"]) for vm in world.vm_list()] == [(world.name, "running")]
        assert world.ssh("true").returncode == 0
        assert world.ssh("test -d /mnt/sda1/dev && date +%Z").stdout.strip() == "CST"
        assert os.path.ismount(world.mount)
        (world.mount / "from-host.txt").write_text("hello\n")
        assert world.ssh("cat /mnt/sda1/dev/from-host.txt").stdout == "hello\n"
        assert part_files(world.b2dkit_home) == []

    def test_second_run_changes_nothing_and_fetches_nothing(self, world, capfd):
        before = written_by_b2dkit(world)
        world.mirror.requests.clear()
        code, out, err = onboard_task(capfd, *world.args)
        assert code == 0, out + err
        # The only change allowed: an emulated (TCG) guest's clock can fall more than
        # guest.CLOCK_TOLERANCE behind between two runs, and then it is set again.
        done = [line for line in out.splitlines() if line.startswith("done: ")]
        assert all(line.startswith("done: " + CLOCK) for line in done), done
        assert f"changed this run: {len(done)}" in out and out.count("already: ") >= 6
        assert world.mirror.requests == []
        after = written_by_b2dkit(world)
        assert after == before  # not one file written, not even a rename onto itself
        # The library's own account: nothing in Plan.done.
        plan = flow.onboard(profiles.load(str(world.profile)), log=lambda _line: None)
        assert [line for line in plan.done if not line.startswith(CLOCK)] == [] and plan.kept
        assert world.mirror.requests == []
        assert len(qemuclean.qemu_pids(world.root)) == 1

    def test_run_killed_while_the_vm_boots_loses_no_data(self, world, capfd):
        assert world.ssh("echo precious > /mnt/sda1/dev/precious.txt && sync").returncode == 0
        make_program().run(["b2dkit", "vm.stop", f"--name={world.name}"], exit=False)
        assert qemuclean.qemu_pids(world.root) == [] and not os.path.ismount(world.mount)
        proc = world.spawn()
        pidfile, serial = world.vm_dir / "qemu.pid", world.vm_dir / "serial.log"
        world.kill_when(proc, lambda: pidfile.exists() and serial.exists() and serial.stat().st_size > 0,
                        "QEMU to start booting")
        assert "Your dev VM" not in world.output()
        # The next run finishes the job with the same VM and the same disk.
        code, out, err = onboard_task(capfd, *world.args)
        assert code == 0, out + err
        assert f"Your dev VM {world.name} is ready" in out
        assert [vm["name"] for vm in world.vm_list()] == [world.name]
        assert len(qemuclean.qemu_pids(world.root)) == 1
        assert world.ssh("cat /mnt/sda1/dev/precious.txt").stdout == "precious\n"
        assert (world.mount / "from-host.txt").read_text() == "hello\n"
        assert world.mirror.requests == []


@pytest.mark.e2e
@pytest.mark.slow
class TestKilledRuns:
    """SIGKILL during the download, then the remaster, then VM creation; the fourth run completes."""

    @pytest.fixture
    def world(self, killed_world):
        return killed_world

    @pytest.fixture(autouse=True)
    def _same_home(self, world, monkeypatch):
        monkeypatch.setenv("B2DKIT_HOME", str(world.b2dkit_home))

    def part(self, world) -> Path:
        return isocache.source_path(world.sha256).with_name(world.sha256 + ".iso.part")

    def remastered(self, world):
        return sorted(isocache.remastered_dir().glob("*.iso")) if isocache.remastered_dir().exists() else []

    def test_killed_during_the_download(self, world):
        world.mirror.hold_at = len(world.mirror.payload) // 3
        proc = world.spawn()
        part = self.part(world)
        world.kill_when(proc, lambda: part.exists() and part.stat().st_size > 0, "the .part file")
        world.mirror.release.set()
        assert not isocache.source_path(world.sha256).exists()
        assert 0 < part.stat().st_size <= world.mirror.hold_at
        assert self.remastered(world) == [] and world.vm_list() == [] and qemuclean.qemu_pids(world.root) == []

    def test_killed_during_the_remaster(self, world):
        kept = self.part(world).stat().st_size
        world.mirror.hold_at = None
        world.mirror.requests.clear()
        proc = world.spawn(pause_before=str(isocache.remastered_dir() / "*.iso"))
        marker = world.root / "paused"
        world.kill_when(proc, marker.exists, "the remaster to finish writing")
        temp = Path(marker.read_text())
        marker.unlink()
        assert re.fullmatch(r"\.[0-9a-f]{32}\.iso\..+\.part", temp.name) and temp.exists()
        # This run resumed the download where the killed one stopped, and verified it.
        assert world.mirror.requests == [("/b2d.iso", f"bytes={kept}-")]
        assert sha256(isocache.source_path(world.sha256)) == world.sha256
        assert not self.part(world).exists()
        assert self.remastered(world) == [] and world.vm_list() == []

    def test_killed_during_vm_creation(self, world):
        proc = world.spawn(pause_before=str(world.vm_dir / "machine.json"))
        marker = world.root / "paused"
        world.kill_when(proc, marker.exists, "the VM definition to be written")
        marker.unlink()
        assert (world.vm_dir / "disk.img").exists() and not (world.vm_dir / "machine.json").exists()
        assert len(self.remastered(world)) == 1
        assert qemuclean.qemu_pids(world.root) == []

    def test_next_run_completes_with_one_vm_and_a_clean_cache(self, world, capfd):
        world.mirror.requests.clear()
        code, out, err = onboard_task(capfd, *world.args)
        assert code == 0, out + err
        assert f"Your dev VM {world.name} is ready (qemu)." in out
        assert world.mirror.requests == []
        assert [(vm["name"], vm["state"]) for vm in world.vm_list()] == [(world.name, "running")]
        assert len(qemuclean.qemu_pids(world.root)) == 1
        assert sha256(isocache.source_path(world.sha256)) == world.sha256
        assert [p.name for p in isocache.sources()] == [f"{world.sha256}.iso"]
        (boot,) = self.remastered(world)
        assert boot == isocache.lookup(isocache.source_path(world.sha256), ["tz=CST-8"])
        assert part_files(world.b2dkit_home) == []  # no leftovers of the killed runs
        assert world.ssh("test -d /mnt/sda1/dev && grep -o 'tz=CST-8' /proc/cmdline").stdout == "tz=CST-8\n"
        assert os.path.ismount(world.mount)


def _step_lines(out: str, step: str, prefix: str):
    """The ``prefix`` lines printed under ``[n/7] step``."""
    lines, inside = [], False
    for line in out.splitlines():
        if line.startswith("["):
            inside = line.endswith(f"] {step}")
        elif inside and line.startswith(prefix):
            lines.append(line[len(prefix):])
    return lines


@pytest.mark.parametrize("provider", ["virtualbox", "qemu"])
def test_dry_run_on_an_existing_vm_shows_exactly_the_changes_a_run_then_applies(
        fast, b2dkit_home, capfd, stop_before_boot, tmp_path, provider):
    """Decide, then act: memory changed and a forward added in the profile -> those two lines, twice."""
    prof, ssh_port, app_port, web = fast["profile_path"], free_port(), free_port(), free_port()
    common = dict(extends="cst", name=FAST_VM, provider=provider, disk=1024, ssh_port=ssh_port,
                  app_port=app_port, iso_lines=["iso:", f"  urls: [{fast['mirror'].iso_url}]",
                                                f"  sha256: {fast['sha256']}"])
    write_profile(prof, **common)
    code, out, err = onboard_task(capfd, fast["profile"], "--yes")  # steps 1-4 for real, then Ctrl-C
    assert code == 130 and stop_before_boot == [FAST_VM], err
    write_profile(prof, **common, extra=[f"  - {{host: {web}, guest: 80}}"])  # a forward added...
    prof.write_text(prof.read_text().replace("memory: 512", "memory: 768"))  # ...and more memory
    expected = ["memory 512 → 768 MB", f"forward tcp-{web}: 127.0.0.1:{web} → 80/tcp added"]

    before = tree(b2dkit_home)
    code, out, err = onboard_task(capfd, fast["profile"], "--dry-run")
    assert code == 0, err
    assert _step_lines(out, "create", "would: ") == expected
    assert [line for line in out.splitlines() if line.startswith("would: ")][:1] == [f"would: {expected[0]}"]
    assert tree(b2dkit_home) == before  # a dry run decides only

    code, out, err = onboard_task(capfd, fast["profile"], "--yes")
    assert code == 130, err
    assert _step_lines(out, "create", "done: ") == expected
    if provider == "virtualbox":
        vm = fast["fake"].machine(FAST_VM)
        assert vm["memory"] == 768 and f"tcp-{web}" in vm["nics"]["1"]["rules"]
    else:
        data = json.loads((paths.vm_dir(FAST_VM) / "machine.json").read_text())
        assert data["memory_mb"] == 768 and {"host_port": web, "guest_port": 80} == {
            k: v for f in data["forwards"] if f["host_port"] == web for k, v in f.items()
            if k in ("host_port", "guest_port")}
    # Applied exactly: a third look finds nothing left to change.
    code, out, err = onboard_task(capfd, fast["profile"], "--dry-run")
    assert code == 0 and _step_lines(out, "create", "would: ") == [], err


def _would(out: str):
    """Every ``would:`` line of a dry run but the guest clock (an emulated guest's clock may fall
    more than guest.CLOCK_TOLERANCE behind between two runs, and then it is set again)."""
    return [line[len("would: "):] for line in out.splitlines()
            if line.startswith("would: ") and not line.startswith("would: " + CLOCK)]


def _done(out: str):
    return [line[len("done: "):] for line in out.splitlines()
            if line.startswith("done: ") and not line.startswith("done: " + CLOCK)]


@pytest.mark.e2e
@pytest.mark.slow
def test_a_dry_run_on_a_running_vm_lists_exactly_what_a_run_then_applies(tmp_path, monkeypatch, capfd):
    """Issue #9's Done-when, on a real guest with Docker: the dry run of a running VM reads its
    facts (host certs, the guest's files, forwards, memory) without changing anything; the real run
    applies exactly those lines; a second dry run has nothing left to do."""
    if not os.path.exists("/usr/bin/docker"):
        pytest.skip("Debian's docker CLI is not installed (apt-get install docker.io)")
    name, home, b2dkit_home = "ob-running", tmp_path / "home", tmp_path / "b2dkit-home"
    home.mkdir()
    for key, value in (("HOME", home), ("B2DKIT_HOME", b2dkit_home),
                       ("B2DKIT_QEMU_ACCEL", os.environ.get("B2DKIT_QEMU_ACCEL", "tcg"))):
        monkeypatch.setenv(key, str(value))
    prof = tmp_path / "running.yaml"
    common = dict(extends="demo", name=name, provider="qemu", disk=2048, iso_lines=[], ssh_port=free_port(),
                  app_port=free_port())
    write_profile(prof, **common)
    args = [f"--profile={prof}", "--yes"]
    try:
        code, out, err = onboard_task(capfd, *args)
        assert code == 0 and f"Your dev VM {name} is ready" in out, out + err
        # Docker's set-up undone behind b2dkit's back: the host's certs, the TLS forward, the localtime.
        vm_dir = paths.vm_dir(name)
        shutil.rmtree(vm_dir / "certs")
        (rule,) = [f for f in json.loads((vm_dir / "machine.json").read_text())["forwards"] if f["guest_port"] == 2376]
        assert cli.task(capfd, "vm.unforward", str(rule["host_port"]), f"--name={name}")[0] == 0
        code, _ = cli.task(capfd, "vm.ssh", f"--name={name}", "-c",
                           "sudo rm /var/lib/boot2docker/etc/localtime /etc/localtime")
        assert code == 0
        before = tree(b2dkit_home)
        code, out, err = onboard_task(capfd, *args[:1], "--dry-run")
        assert code == 0, out + err
        docker = _would(out)
        assert docker[0].startswith("issue ") and "restart the guest's Docker daemon (it reads them at start)" in docker
        assert any(line.startswith("install ") for line in docker)
        assert any(line.startswith("forward 127.0.0.1:") and line.endswith("→ 2376/tcp (the Docker daemon, TLS)")
                   for line in docker)
        assert docker[-1] == ("write /var/lib/boot2docker/etc/localtime, /etc/localtime for TZ=CST-8 "
                              "(containers mount it)")
        assert _step_lines(out, "create", "would: ") == [] and _step_lines(out, "mounts", "would: ") == []
        assert {k: v for k, v in tree(b2dkit_home).items() if "serial.log" not in k and "disk.img" not in k} == {
            k: v for k, v in before.items() if "serial.log" not in k and "disk.img" not in k}
        code, out, err = onboard_task(capfd, *args)
        assert code == 0, out + err
        assert [line for line in _done(out) if line in docker] == docker
        code, out, err = onboard_task(capfd, *args[:1], "--dry-run")
        assert code == 0 and _would(out) == [], out + err

        # The profile changes: more memory, one more forward.
        web = free_port()
        write_profile(prof, **common, extra=[f"  - {{host: {web}, guest: 80}}"])
        prof.write_text(prof.read_text().replace("memory: 512", "memory: 768"))
        expected = [f"memory 512 → 768 MB (VM {name} is running: takes effect at its next start)",
                    f"forward tcp-{web}: 127.0.0.1:{web} → 80/tcp added"]
        code, out, err = onboard_task(capfd, *args[:1], "--dry-run")
        assert code == 0 and _would(out) == expected, out + err
        for kept in (f"VM {name} is already running", "Docker is set up (certs, TLS forward, localtime)",
                     "/mnt/sda1/dev already mounted on"):  # what is in place is said, not re-done
            assert f"already: {kept}" in out, out
        code, out, err = onboard_task(capfd, *args)
        assert code == 0 and _step_lines(out, "create", "done: ") == expected, out + err
        assert json.loads((vm_dir / "machine.json").read_text())["memory_mb"] == 768
        code, listed = cli.task(capfd, "vm.forwards", f"--name={name}", "--json")
        assert web in [f["host_port"] for f in json.loads(listed.out)["forwards"]]  # live, from QEMU itself
        code, out, err = onboard_task(capfd, *args[:1], "--dry-run")
        assert code == 0 and _would(out) == [], out + err
        assert f"already: memory 768 MB is recorded; VM {name} runs with 512 MB until its next start" in out
    finally:
        make_program().run(["b2dkit", "vm.destroy", f"--name={name}", "--yes", "--purge"], exit=False)
        qemuclean.kill_all(tmp_path)
        mount = home / "workspace" / "dev"
        if os.path.ismount(mount):
            subprocess.run(["fusermount3", "-uz", str(mount)], check=False)
