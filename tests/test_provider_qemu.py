"""QemuProvider: the definition on disk, and a real qemu lifecycle (TCG) with live forwards.

The ISO built here is isolinux booting Debian's kernel with no initrd: it panics at "unable
to mount root" and idles, which is all the lifecycle needs (a process, QMP, hostfwd), and it
ignores the ACPI power button, which is what the stop fallback needs.
"""

import glob
import json
import os
import random
import shutil
import socket
import subprocess

import pytest

from b2dkit import disk
from b2dkit.hypervisors.qemu import qemusystem as qemu
from b2dkit.errors import HypervisorError, InputError, PortInUse, VMNotFound
from b2dkit.forwards import Forward, host_port_free, parse_spec, pick_free_port
from b2dkit.hypervisors import get_provider
from b2dkit.hypervisors.base import MachineSpec, VMState
from b2dkit.hypervisors.qemu import provider as qemu_provider
from b2dkit.hypervisors.qemu.provider import QemuProvider
from b2dkit.sshkeys import KEY_NAME, ensure_keypair
import qemuclean

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyForTestsOnly b2dkit-test"
ISOLINUX = "/usr/lib/ISOLINUX/isolinux.bin"
LDLINUX = "/usr/lib/syslinux/modules/bios/ldlinux.c32"


def _free_port():
    start = random.randrange(22000, 29000)  # helpers run in parallel: don't all start at 2200
    return pick_free_port(start=start, end=start + 500)


@pytest.fixture(scope="module")
def tiny_iso(tmp_path_factory):
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    if not (shutil.which("xorriso") and os.path.exists(ISOLINUX) and os.path.exists(LDLINUX) and kernels):
        pytest.skip("needs xorriso, isolinux, syslinux-common and a kernel in /boot")
    root = tmp_path_factory.mktemp("iso")
    tree = root / "tree"
    (tree / "isolinux").mkdir(parents=True)
    (tree / "boot").mkdir()
    shutil.copy(ISOLINUX, tree / "isolinux")
    shutil.copy(LDLINUX, tree / "isolinux")
    shutil.copy(kernels[-1], tree / "boot" / "vmlinuz")
    (tree / "isolinux" / "isolinux.cfg").write_text(
        "SERIAL 0 115200\nDEFAULT linux\nTIMEOUT 1\n"
        "LABEL linux\n  KERNEL /boot/vmlinuz\n  APPEND console=ttyS0\n"
    )
    iso = root / "tiny.iso"
    subprocess.run(
        [
            "xorriso",
            "-as",
            "mkisofs",
            "-quiet",
            "-o",
            str(iso),
            "-b",
            "isolinux/isolinux.bin",
            "-c",
            "isolinux/boot.cat",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
            str(tree),
        ],
        check=True,
        capture_output=True,
    )
    return iso


def _spec(iso, name="dev", **kw):
    args = dict(name=name, memory_mb=256, cpus=1, disk_mb=64, iso=iso, forwards=[], public_key=KEY)
    args.update(kw)
    return MachineSpec(**args)


# -- the definition (no qemu process) ---------------------------------------------------------
def test_get_provider_and_absent_vm(tmp_path):
    vm = get_provider("qemu", "dev")
    assert isinstance(vm, QemuProvider) and vm.state() == VMState.ABSENT
    with pytest.raises(VMNotFound, match="dev"):
        vm.start()
    with pytest.raises(VMNotFound):
        vm.forwards()
    with pytest.raises(VMNotFound):
        vm.destroy()


def test_create_writes_definition_and_sparse_magic_disk(tiny_iso):
    vm = QemuProvider("dev")
    report = vm.create(_spec(tiny_iso, memory_mb=384, cpus=2, forwards=[parse_spec("2022:22")]))
    assert report.created and report.changes == []
    assert vm.state() == VMState.STOPPED
    data = json.loads((vm.dir / "machine.json").read_text())
    assert (data["memory_mb"], data["cpus"], data["disk_mb"], data["iso"]) == (384, 2, 64, str(tiny_iso))
    assert [Forward(**f) for f in data["forwards"]] == [Forward(2022, 22)]
    img = vm.disk_path()
    assert img == vm.dir / "disk.img" and img.stat().st_size == 64 << 20
    assert img.stat().st_blocks * 512 < 1 << 20  # sparse: holes after the header
    header = disk.read_header(img)
    assert disk.has_magic(header) and KEY.encode() in header
    assert vm.forwards() == [Forward(2022, 22)]
    assert vm.ssh_endpoint() == ("127.0.0.1", 2022)
    assert vm.log_path() == vm.dir / "serial.log"
    # Idempotent: the same spec again changes nothing and says so.
    mtime = (vm.dir / "machine.json").stat().st_mtime_ns
    assert vm.create(_spec(tiny_iso, memory_mb=384, cpus=2, forwards=[parse_spec("2022:22")])).changes == []
    assert (vm.dir / "machine.json").stat().st_mtime_ns == mtime


def test_create_converges_while_stopped_and_reports_changes(tiny_iso):
    vm = QemuProvider("dev")
    vm.create(_spec(tiny_iso, forwards=[parse_spec("2022:22"), parse_spec("8000")]))
    report = vm.create(
        _spec(tiny_iso, memory_mb=512, cpus=2, forwards=[parse_spec("2022:22"), parse_spec("9000")])
    )
    assert not report.created
    assert report.changes == [
        "memory 256 → 512 MB",
        "cpus 1 → 2",
        "forward tcp-8000: 127.0.0.1:8000 → 8000/tcp removed",
        "forward tcp-9000: 127.0.0.1:9000 → 9000/tcp added",
    ]
    data = json.loads((vm.dir / "machine.json").read_text())
    assert (data["memory_mb"], data["cpus"]) == (512, 2)
    assert [f.host_port for f in vm.forwards()] == [2022, 9000]


def test_create_refuses_bad_input(tiny_iso, tmp_path):
    vm = QemuProvider("dev")
    with pytest.raises(InputError, match="missing.iso"):
        vm.create(_spec(tmp_path / "missing.iso"))
    with pytest.raises(InputError, match="memory"):
        vm.create(_spec(tiny_iso, memory_mb=0))
    with pytest.raises(InputError, match="other"):
        vm.create(_spec(tiny_iso, name="other"))
    assert vm.state() == VMState.ABSENT and not vm.dir.joinpath("disk.img").exists()


def test_forwards_while_stopped_live_in_the_definition(tiny_iso):
    vm = QemuProvider("dev")
    vm.create(_spec(tiny_iso, forwards=[parse_spec("2022:22")]))
    vm.add_forward(parse_spec("8000"))
    vm.add_forward(parse_spec("8000"))  # identical: no-op
    assert vm.forwards() == [Forward(2022, 22), Forward(8000, 8000)]
    with pytest.raises(PortInUse, match="tcp-8000"):  # same host port, other guest port: a clash, not a replace
        vm.add_forward(Forward(8000, 8080))
    with pytest.raises(PortInUse, match="SSH route"):
        vm.add_forward(Forward(2022, 8000))
    assert vm.forwards() == [Forward(2022, 22), Forward(8000, 8000)]
    vm.remove_forward("tcp-8000")
    assert vm.forwards() == [Forward(2022, 22)]
    with pytest.raises(InputError, match="'tcp-9999'"):
        vm.remove_forward("tcp-9999")
    # The definition on disk is what a fresh provider (another process) sees.
    assert QemuProvider("dev").forwards() == [Forward(2022, 22)]


def test_stale_pidfile_is_stopped_and_cleaned(tiny_iso):
    vm = QemuProvider("dev")
    vm.create(_spec(tiny_iso))
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    vm.pidfile.write_text(f"{proc.pid}\n")  # a dead pid
    assert vm.state() == VMState.STOPPED and not vm.pidfile.exists()
    vm.pidfile.write_text(f"{os.getpid()}\n")  # alive, but not our qemu (pid reuse)
    assert vm.state() == VMState.STOPPED and not vm.pidfile.exists()


def test_destroy_keeps_disk_and_keys_create_reuses_purge_deletes(tiny_iso):
    vm = QemuProvider("dev")
    ensure_keypair(vm.dir)
    vm.create(_spec(tiny_iso))
    img = vm.disk_path()
    with open(img, "r+b") as fh:  # stand-in for data the guest wrote to its disk
        fh.seek(10 << 20)
        fh.write(b"guest data")
    before = img.read_bytes()
    vm.destroy()
    assert vm.state() == VMState.ABSENT
    assert img.exists() and (vm.dir / KEY_NAME).exists() and not (vm.dir / "machine.json").exists()
    assert vm.disk_path() == img  # a kept disk is still reported
    report = vm.create(_spec(tiny_iso, disk_mb=128, public_key="ssh-ed25519 AAAAother other"))
    assert report.created and img.read_bytes() == before  # re-used as is, never rewritten
    assert json.loads((vm.dir / "machine.json").read_text())["disk_mb"] == 64
    vm.destroy(purge=True)
    assert not img.exists() and not (vm.dir / KEY_NAME).exists() and not vm.dir.exists()
    assert vm.disk_path() is None


def test_purge_after_plain_destroy_deletes_the_kept_disk(tiny_iso):
    vm = QemuProvider("dev")
    vm.create(_spec(tiny_iso))
    vm.destroy()
    vm.destroy(purge=True)
    assert vm.disk_path() is None
    with pytest.raises(VMNotFound):
        vm.destroy(purge=True)


# -- a real qemu (TCG) --------------------------------------------------------------------------
@pytest.fixture
def tcg(monkeypatch):
    if not shutil.which(qemu.QEMU):
        pytest.skip("qemu-system-x86_64 not installed")
    monkeypatch.setenv(qemu.ACCEL_ENV, "tcg")  # kvm_pvm here cannot boot (qemu-guest.md)


@pytest.fixture
def running(tiny_iso, tcg, b2dkit_home, monkeypatch):
    """A started VM whose home has a comma in it (QEMU option escaping, for real); always killed."""
    home = b2dkit_home.parent / "home,with,commas"
    home.mkdir()
    monkeypatch.setenv("B2DKIT_HOME", str(home))
    vm = QemuProvider("dev")
    ssh = _free_port()
    vm.create(_spec(tiny_iso, forwards=[Forward(ssh, 22), Forward(ssh, 53, proto="udp")]))
    vm.start()
    yield vm, ssh
    qemuclean.stop_qemu(vm.pidfile)


@pytest.mark.slow
def test_start_runs_qemu_with_pid_qmp_and_bound_forwards(running):
    vm, ssh = running
    assert vm.state() == VMState.RUNNING
    pid = qemu.read_pid(vm.pidfile)
    assert qemu.process_alive(pid, str(vm.pidfile))
    assert "," in str(vm.dir) and (vm.dir / "serial.log").exists()
    info = vm.info()
    assert (info["pid"], info["accel"], info["qemu_status"]) == (pid, "tcg", "running")
    assert not host_port_free(ssh, proto="tcp") and not host_port_free(ssh, proto="udp")
    with socket.create_connection(("127.0.0.1", ssh), timeout=2):
        pass  # QEMU's slirp accepts on the host side
    assert vm.forwards() == [Forward(ssh, 22), Forward(ssh, 53, proto="udp")]
    assert vm.ssh_endpoint() == ("127.0.0.1", ssh)
    vm.start()  # already running: nothing to do
    assert qemu.read_pid(vm.pidfile) == pid


@pytest.mark.slow
def test_live_forward_add_and_remove_bind_and_free_host_ports(running):
    vm, ssh = running
    port = _free_port()
    vm.add_forward(Forward(port, 8000))
    assert not host_port_free(port)
    assert Forward(port, 8000) in vm.forwards()
    vm.add_forward(Forward(port, 8000))  # identical: no-op
    with pytest.raises(PortInUse):  # same host port, another guest port: a clash, never a replace
        vm.add_forward(Forward(port, 8080))
    assert [f for f in vm.forwards() if f.host_port == port] == [Forward(port, 8000)]
    vm.remove_forward(f"tcp-{port}")
    assert host_port_free(port)
    assert all(f.host_port != port for f in vm.forwards())
    assert all(f.host_port != port for f in QemuProvider("dev").forwards())
    with pytest.raises(InputError, match="'tcp-1'"):
        vm.remove_forward("tcp-1")


@pytest.mark.slow
def test_forwards_are_read_from_qemu_not_the_definition(running):
    vm, ssh = running
    port = _free_port()
    with qemu.QMP(vm.qmp_socket) as mon:  # behind the provider's back
        mon.hostfwd_add(Forward(port, 9000))
    assert Forward(port, 9000) in vm.forwards()
    defined = [Forward(**f) for f in json.loads((vm.dir / "machine.json").read_text())["forwards"]]
    assert Forward(port, 9000) not in defined
    vm.remove_forward(f"tcp-{port}")  # a rule only QEMU knows can still be removed by name
    assert host_port_free(port) and Forward(port, 9000) not in vm.forwards()


@pytest.mark.slow
def test_add_forward_to_a_taken_port_is_port_in_use(running):
    vm, ssh = running
    before = (vm.dir / "machine.json").read_bytes()
    with socket.socket() as busy:
        port = _free_port()
        busy.bind(("127.0.0.1", port))
        busy.listen()
        with pytest.raises(PortInUse, match=f"127.0.0.1:{port}"):
            vm.add_forward(Forward(port, 8000))
    assert all(f.host_port != port for f in vm.forwards())
    assert (vm.dir / "machine.json").read_bytes() == before


@pytest.mark.slow
def test_changes_while_running_are_refused(running, tiny_iso):
    vm, ssh = running
    with pytest.raises(HypervisorError, match="stop it first.*memory 256 → 512"):
        vm.create(_spec(tiny_iso, memory_mb=512, forwards=[Forward(ssh, 22), Forward(ssh, 53, proto="udp")]))
    assert json.loads((vm.dir / "machine.json").read_text())["memory_mb"] == 256


@pytest.mark.slow
def test_port_held_by_another_vm_is_refused_before_launch_naming_it(running, tiny_iso):
    first, ssh = running
    second = QemuProvider("second")
    second.create(_spec(tiny_iso, name="second", forwards=[Forward(ssh, 22)]))
    with pytest.raises(PortInUse) as err:
        second.start()
    assert f"127.0.0.1:{ssh}" in str(err.value) and "'dev'" in str(err.value)
    assert not second.pidfile.exists() and second.state() == VMState.STOPPED


@pytest.mark.slow
def test_start_with_a_taken_port_never_launches_qemu(tiny_iso, tcg):
    vm = QemuProvider("dev")
    with socket.socket() as busy:
        port = _free_port()
        busy.bind(("127.0.0.1", port))
        busy.listen()
        vm.create(_spec(tiny_iso, forwards=[Forward(port, 22)]))
        with pytest.raises(PortInUse, match=f"127.0.0.1:{port}"):
            vm.start()
    assert not vm.pidfile.exists() and not (vm.dir / "serial.log").exists()
    assert vm.state() == VMState.STOPPED


@pytest.mark.slow
def test_stop_without_acpi_guest_falls_back_to_quit(running):
    vm, ssh = running
    pid = qemu.read_pid(vm.pidfile)
    vm.stop(timeout=1.0)  # the panicked kernel ignores the power button
    assert vm.state() == VMState.STOPPED
    assert not qemu.process_alive(pid, str(vm.pidfile))
    assert not vm.pidfile.exists() and not vm.qmp_socket.exists()
    assert host_port_free(ssh)
    assert vm.forwards() == [Forward(ssh, 22), Forward(ssh, 53, proto="udp")]  # from the definition again
    vm.stop()  # already stopped: nothing to do


@pytest.mark.slow
def test_restart_rotates_serial_log_and_destroy_stops_first(running):
    vm, ssh = running
    vm.stop(timeout=0.5)
    (vm.dir / "serial.log").write_text("previous boot\n")
    vm.start()
    assert vm.state() == VMState.RUNNING
    assert (vm.dir / "serial.log.1").read_text() == "previous boot\n"
    pid = qemu.read_pid(vm.pidfile)
    vm.destroy_timeout = 0.5
    vm.destroy()
    assert not qemu.process_alive(pid, str(vm.pidfile)) and vm.state() == VMState.ABSENT
    assert vm.disk_path() is not None


@pytest.mark.parametrize("damage, why", [
    (lambda d: [], "a JSON list"),
    (lambda d: {k: v for k, v in d.items() if k != "cpus"}, "missing key 'cpus'"),
    (lambda d: dict(d, colour="blue"), "unknown key 'colour'"),
    (lambda d: dict(d, memory_mb="lots"), "'memory_mb' is str"),
    (lambda d: dict(d, forwards=[{"host_port": 2022}]), "forward"),
    (lambda d: dict(d, forwards=[{"host_port": 2022, "guest_port": 22, "proto": "sctp"}]), "sctp"),
])
def test_a_damaged_definition_is_one_line_and_create_rebuilds_it_keeping_the_disk(tiny_iso, damage, why):
    from b2dkit.errors import DamagedRecord

    vm = QemuProvider("dev")
    vm.create(_spec(tiny_iso, forwards=[parse_spec("2022:22")]))
    img = vm.disk_path()
    with open(img, "r+b") as f:  # the user's data on the persistent disk
        f.seek(1 << 20)
        f.write(b"precious")
    data = json.loads(vm.machine_file.read_text())
    vm.machine_file.write_text(json.dumps(damage(data)))
    with pytest.raises(DamagedRecord, match=why) as err:
        vm.forwards()
    assert str(vm.machine_file) in str(err.value) and "b2dkit vm.create --name=dev" in str(err.value)
    assert vm.create(_spec(tiny_iso, forwards=[parse_spec("2022:22")])).created
    assert vm.forwards() == [Forward(2022, 22)]
    with open(img, "rb") as f:
        f.seek(1 << 20)
        assert f.read(8) == b"precious"


@pytest.fixture
def orphan(running):
    """The running VM's QEMU, killed at the end even when its pid file is gone."""
    vm, ssh = running
    pid = qemu.read_pid(vm.pidfile)
    yield vm, ssh, pid
    qemu.kill(pid)
    qemu.wait_exit(pid, 10.0)


@pytest.mark.slow
def test_a_qemu_whose_pid_file_is_gone_is_still_found_running_and_stopped(orphan):
    vm, ssh, pid = orphan
    vm.pidfile.unlink()
    assert vm.state() == VMState.RUNNING  # found by its -pidfile marker, not reported as stopped
    assert vm.qmp_socket.exists()  # and its monitor socket was not deleted as a stale leftover
    assert vm.forwards() == [Forward(ssh, 22), Forward(ssh, 53, proto="udp")]
    vm.stop(timeout=1)  # the tiny guest ignores ACPI: the fallback quit must reach the orphan
    assert not qemu.process_alive(pid)
    assert vm.state() == VMState.STOPPED


@pytest.mark.slow
def test_a_qemu_whose_vm_folder_is_gone_is_listed_blocks_ports_by_name_and_is_stopped(orphan, tiny_iso, capsys):
    from b2dkit import status
    from cli import run

    vm, ssh, pid = orphan
    shutil.rmtree(vm.dir)
    rows = {r["name"]: r for r in status.list_all()}
    assert f"QEMU pid {pid}" in rows["dev"]["state"] and "vm.stop --name=dev" in rows["dev"]["state"]
    other = QemuProvider("other")
    other.create(_spec(tiny_iso, name="other", forwards=[Forward(ssh, 22)]))
    with pytest.raises(PortInUse, match=f"QEMU VM 'dev' \\(pid {pid}"):
        other.start()
    run("vm.stop", "--name=dev", "--timeout=1")
    assert not qemu.process_alive(pid)
    assert "dev" not in {r["name"] for r in status.list_all()}


def test_diff_is_pure_and_says_each_change_in_words():
    old = {"memory_mb": 512, "cpus": 1, "iso": "/a.iso", "forwards": [Forward(2022, 22, name="ssh"),
                                                                      parse_spec("8000")]}
    new = dict(old, memory_mb=768, forwards=[Forward(2022, 22, name="ssh"), parse_spec("8080:80")])
    changes = qemu_provider._diff(old, new)
    assert [(c.kind, c.text) for c in changes] == [
        ("memory", "memory 512 → 768 MB"),
        ("forward", "forward tcp-8000: 127.0.0.1:8000 → 8000/tcp removed"),
        ("forward", "forward tcp-8080: 127.0.0.1:8080 → 80/tcp added"),
    ]
    assert qemu_provider._diff(old, dict(old)) == []


def test_a_running_vms_memory_is_recorded_in_machine_json_for_the_next_boot(tiny_iso, monkeypatch):
    """What `defer` means on QEMU without a boot: machine.json is the next boot's definition."""
    vm = QemuProvider("dev")
    vm.create(_spec(tiny_iso, memory_mb=256, forwards=[parse_spec("2022:22")]))
    monkeypatch.setattr(QemuProvider, "state", lambda self: VMState.RUNNING)
    wanted = _spec(tiny_iso, memory_mb=512, forwards=[parse_spec("2022:22")])
    with pytest.raises(HypervisorError, match="stop it first.*memory 256 → 512"):
        vm.create(wanted)
    assert [c.text for c in vm.changes(wanted, defer=True)] == [
        "memory 256 → 512 MB (VM dev is running: takes effect at its next start)"]
    assert vm.create(wanted, defer=True).changes == [
        "memory 256 → 512 MB (VM dev is running: takes effect at its next start)"]
    assert json.loads((vm.dir / "machine.json").read_text())["memory_mb"] == 512
    assert vm.changes(wanted, defer=True) == []
