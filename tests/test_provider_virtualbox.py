"""VirtualBoxProvider against the fake VBoxManage: lifecycle, converge, data safety, ports, budgets."""

import dataclasses
import socket

import pytest

import fakevbox

from b2dkit import disk, paths
from b2dkit.errors import HypervisorError, InputError, PortInUse, VMNotFound
from b2dkit.forwards import Forward, parse_spec
from b2dkit.hypervisors import get_provider
from b2dkit.hypervisors.base import MachineSpec, VMState
from b2dkit.hypervisors.virtualbox.provider import VirtualBoxProvider
from b2dkit.hypervisors.virtualbox.vboxmanage import VBoxManage

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOriginalKeyForTests b2dkit-test"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    return fakevbox.install(tmp_path / "fakevbox", monkeypatch)


@pytest.fixture
def iso(tmp_path):
    path = tmp_path / "b2d-cst.iso"
    path.write_bytes(b"not really an iso")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def spec(iso):
    return MachineSpec(
        name="dev",
        memory_mb=1024,
        cpus=2,
        disk_mb=8,
        iso=iso,
        forwards=[Forward(free_port(), 22, name="ssh"), parse_spec(f"{free_port()}:8000")],
        public_key=KEY,
    )


@pytest.fixture
def vb(fake):
    return VirtualBoxProvider("dev", vbox=VBoxManage(sleep=lambda s: None), sleep=lambda s: None)


def calls_since(fake, mark):
    return fake.calls()[mark:]


def test_get_provider_builds_it(fake):
    assert isinstance(get_provider("virtualbox", "dev"), VirtualBoxProvider)


def test_full_lifecycle(vb, fake, spec):
    assert vb.state() is VMState.ABSENT
    report = vb.create(spec)
    assert report.created and vb.vbox.calls <= 10
    assert vb.state() is VMState.STOPPED
    assert vb.forwards() == spec.forwards
    assert vb.ssh_endpoint() == ("127.0.0.1", spec.forwards[0].host_port)
    assert vb.disk_path() == paths.vm_dir("dev") / "disk.vmdk"
    meta, header = fakevbox.read_disk(vb.disk_path())
    assert meta["size"] == 8 << 20 and disk.has_magic(header) and b"OriginalKeyForTests" in header
    # the disk sits outside VirtualBox's machine folder
    cfg = fake.machine("dev")["cfg_file"]
    assert not str(vb.disk_path()).startswith(str(paths.vm_dir("dev") / "dev"))
    assert cfg == str(paths.vm_dir("dev") / "dev" / "dev.vbox")

    vb.start()
    assert vb.state() is VMState.RUNNING and vb.log_path().exists()
    web = parse_spec(f"{free_port()}:80")
    vb.add_forward(web)
    assert web in vb.forwards()
    mark = len(fake.calls())
    vb.add_forward(web)  # deterministic name: a re-add is one read and nothing else
    assert calls_since(fake, mark) == [["showvminfo", "dev", "--machinereadable"]]
    vb.remove_forward(web.name)
    assert web not in vb.forwards()
    vb.stop(timeout=2)
    assert vb.state() is VMState.STOPPED

    kept = vb.disk_path()
    vb.destroy()
    assert vb.state() is VMState.ABSENT and kept.exists()
    assert fake.state()["machines"] == {}

    other = dataclasses.replace(spec, public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINewKey other")
    report = vb.create(other)
    assert any("re-attached" in c for c in report.changes)
    assert b"OriginalKeyForTests" in fakevbox.read_disk(vb.disk_path())[1]  # not a blank new disk
    assert vb.info()["disk"] == str(kept)

    vb.destroy(purge=True)
    assert vb.state() is VMState.ABSENT and not kept.exists()


def test_converge_is_a_one_call_no_op(vb, fake, spec):
    vb.create(spec)
    mark = len(fake.calls())
    report = vb.create(spec)
    assert report.created is False and report.changes == []
    assert calls_since(fake, mark) == [["showvminfo", "dev", "--machinereadable"]]
    assert len(fake.state()["machines"]) == 1
    assert len(vb.forwards()) == len(spec.forwards)


def test_changed_settings_are_applied_in_one_modifyvm_and_reported(vb, fake, spec, tmp_path):
    vb.create(spec)
    new_iso = tmp_path / "newer.iso"
    new_iso.write_bytes(b"v2")
    extra = parse_spec(f"{free_port()}:9000")
    moved = dataclasses.replace(spec.forwards[1], guest_port=8001)
    changed = dataclasses.replace(
        spec, memory_mb=2048, cpus=1, iso=new_iso, forwards=[spec.forwards[0], moved, extra]
    )
    mark = len(fake.calls())
    report = vb.create(changed)
    subcommands = [argv[0] for argv in calls_since(fake, mark)]
    assert subcommands == ["showvminfo", "modifyvm", "storageattach"]
    text = " | ".join(report.changes)
    assert "memory 1024 → 2048 MB" in text and "cpus 2 → 1" in text and "newer.iso" in text
    assert f"{moved.name}" in text and "replaced" in text and extra.name in text
    machine = fake.machine("dev")
    assert (machine["memory"], machine["cpus"]) == (2048, 1)
    assert set(vb.forwards()) == {spec.forwards[0], moved, extra}
    assert vb.info()["iso"] == str(new_iso)


def test_changes_refused_while_running_but_forwards_go_live(vb, fake, spec):
    vb.create(spec)
    vb.start()
    mark = len(fake.calls())
    with pytest.raises(HypervisorError, match="powered off: memory 1024 → 4096 MB"):
        vb.create(dataclasses.replace(spec, memory_mb=4096))
    extra = parse_spec(f"{free_port()}:7000")
    report = vb.create(dataclasses.replace(spec, forwards=spec.forwards + [extra]))
    assert extra in vb.forwards() and report.changes == [
        f"forward {extra.name}: 127.0.0.1:{extra.host_port} → 7000/tcp added"
    ]
    assert [c[0] for c in calls_since(fake, mark)] == ["showvminfo", "showvminfo", "controlvm", "showvminfo"]
    assert fake.machine("dev")["memory"] == 1024


@pytest.mark.parametrize("stopped_after", ["createvm", "modifyvm", "storagectl", "storageattach"])
def test_half_failed_create_is_finished_by_the_next_run(vb, fake, spec, monkeypatch, stopped_after):
    real_run = vb.vbox.run
    seen = []

    def dying_run(args, *a, **kw):
        if seen and seen[-1] == stopped_after:
            raise KeyboardInterrupt  # the user pressed Ctrl-C between two steps
        seen.append(args[0])
        return real_run(args, *a, **kw)

    monkeypatch.setattr(vb.vbox, "run", dying_run)
    with pytest.raises(KeyboardInterrupt):
        vb.create(spec)
    monkeypatch.setattr(vb.vbox, "run", real_run)
    report = vb.create(spec)
    assert report.changes
    info = vb.info()
    assert info["state"] == "stopped" and info["memory_mb"] == 1024 and info["iso"] == str(spec.iso)
    assert info["disk"] == str(paths.vm_dir("dev") / "disk.vmdk")
    assert len(info["forwards"]) == 2
    assert vb.create(spec).changes == []


def test_interrupted_disk_conversion_leaves_no_disk(vb, fake, spec, monkeypatch):
    def broken_stream(out, header, total):
        out.write(header)
        raise KeyboardInterrupt

    monkeypatch.setattr(disk, "write_stream", broken_stream)
    with pytest.raises(KeyboardInterrupt):
        vb.create(spec)
    assert vb.disk_path() is None and list(paths.vm_dir("dev").glob("*.vmdk")) == []
    monkeypatch.undo()
    fakevbox.install(fake.root, monkeypatch)
    vb.create(spec)
    assert disk.has_magic(fakevbox.read_disk(vb.disk_path())[1])


def test_leftover_unregistered_vm_is_taken_back(vb, fake, spec):
    vb.create(spec)
    vb.vbox.run(["unregistervm", "dev"])  # no --delete: the .vbox stays, createvm would fail
    report = vb.create(spec)
    assert not report.created and any("re-registered" in c for c in report.changes)
    assert vb.state() is VMState.STOPPED


def test_busy_host_port_refused_before_startvm(vb, fake, spec):
    vb.create(spec)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", spec.forwards[1].host_port))
        busy.listen()
        mark = len(fake.calls())
        with pytest.raises(PortInUse, match=f"127.0.0.1:{spec.forwards[1].host_port}/tcp is already in use"):
            vb.start()
    assert "startvm" not in [c[0] for c in calls_since(fake, mark)]
    assert vb.state() is VMState.STOPPED


def test_port_held_by_another_running_vm_names_it(vb, fake, spec, iso):
    vb.create(spec)
    other = VirtualBoxProvider("other", vbox=VBoxManage(sleep=lambda s: None))
    port = spec.forwards[1].host_port
    other.create(MachineSpec("other", 512, 1, 4, iso, [Forward(port, 80)], KEY))
    other.start()
    with socket.socket() as held:  # what VirtualBox's NAT of "other" does on a real host
        held.bind(("127.0.0.1", port))
        held.listen()
        with pytest.raises(PortInUse, match=r"in use by VirtualBox VM 'other' \(NAT rule 'tcp-\d+'\)"):
            vb.start()


def test_port_taken_between_check_and_start_is_read_from_vbox_log(vb, fake, spec, monkeypatch):
    vb.create(spec)
    import b2dkit.forwards

    monkeypatch.setattr(b2dkit.forwards, "probe", lambda *a: "free")  # the race window
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", spec.forwards[1].host_port))
        busy.listen()
        with pytest.raises(
            PortInUse, match=f"could not forward host port 127.0.0.1:{spec.forwards[1].host_port}"
        ):
            vb.start()
    assert vb.state() is VMState.RUNNING


def test_modifyvm_never_called_on_a_running_vm(vb, fake, spec):
    vb.create(spec)
    vb.start()
    mark = len(fake.calls())
    web = parse_spec(f"{free_port()}:80")
    vb.add_forward(web)
    vb.add_forward(dataclasses.replace(web, guest_port=81))  # replace live
    vb.remove_forward(web.name)
    vb.create(spec)
    vb.stop(timeout=1)
    running_calls = calls_since(fake, mark)
    assert [c for c in running_calls if c[0] in ("modifyvm", "storageattach", "storagectl")] == []
    assert ["controlvm", "dev", "natpf1", "delete", web.name] in running_calls


def test_forward_budget_when_stopped(vb, fake, spec):
    vb.create(spec)
    mark = len(fake.calls())
    vb.add_forward(parse_spec(f"{free_port()}:3000"))
    assert [c[0] for c in calls_since(fake, mark)] == ["showvminfo", "modifyvm"]
    mark = len(fake.calls())
    assert vb.state() is VMState.STOPPED and len(calls_since(fake, mark)) == 1


def test_remove_missing_forward_names_it(vb, fake, spec):
    vb.create(spec)
    with pytest.raises(InputError, match="no forward named 'tcp-1'"):
        vb.remove_forward("tcp-1")


def test_stop_powers_off_after_timeout_when_guest_ignores_acpi(vb, fake, spec, monkeypatch):
    vb.create(spec)
    vb.start()
    monkeypatch.setenv("FAKEVBOX_ACPI_IGNORE", "1")
    vb.stop(timeout=1.0)
    subcommands = [c[:3] for c in fake.calls() if c[0] == "controlvm"]
    assert subcommands == [["controlvm", "dev", "acpipowerbutton"], ["controlvm", "dev", "poweroff"]]
    assert vb.state() is VMState.STOPPED


def test_stop_waits_for_a_slow_guest(fake, spec, monkeypatch):
    vb = VirtualBoxProvider("dev", vbox=VBoxManage(sleep=lambda s: None), poll_interval=0.05)
    vb.create(spec)
    vb.start()
    monkeypatch.setenv("FAKEVBOX_ACPI_DELAY", "0.3")
    vb.stop(timeout=5)
    assert vb.state() is VMState.STOPPED
    assert "poweroff" not in [c[2] for c in fake.calls() if c[0] == "controlvm"]


def test_destroy_running_vm_keeps_disk(vb, fake, spec):
    vb.create(spec)
    vb.start()
    vb.destroy()
    assert vb.state() is VMState.ABSENT and vb.disk_path().exists()


def test_missing_vm_errors(vb, fake):
    for call in (vb.start, vb.stop, vb.forwards, vb.ssh_endpoint):
        with pytest.raises(VMNotFound):
            call()
    vb.destroy()  # nothing to do is fine
    assert vb.info()["state"] == "absent"


@pytest.mark.parametrize(
    "change",
    [
        {"memory_mb": 0},
        {"cpus": 0},
        {"disk_mb": 0},
        {"name": "other"},
        {"public_key": ""},
        {"public_key": "ssh-rsa " + "A" * 3000},
        {"iso": "/no/such.iso"},
        {"forwards": [Forward(70000, 22)]},
        {"forwards": [Forward(0, 22)]},
        {"forwards": [Forward(8000, 80, proto="sctp")]},
        {"forwards": [Forward(8000, 80, name="a,b")]},
        {"forwards": [Forward(8000, 80), Forward(8000, 81, name="again")]},
        {"forwards": [Forward(8000, 80, host_ip="999.1.1.1")]},
    ],
)
def test_bad_input_makes_no_vboxmanage_call(vb, fake, spec, change):
    with pytest.raises(InputError):
        vb.create(dataclasses.replace(spec, **change))
    assert fake.calls() == []


@pytest.mark.parametrize("bad", [Forward(70000, 80), Forward(8000, 0), Forward(8000, 80, proto="icmp")])
def test_bad_forward_makes_no_vboxmanage_call(vb, fake, bad):
    with pytest.raises(InputError):
        vb.add_forward(bad)
    assert fake.calls() == []


def test_status_is_one_call(vb, fake, spec):
    vb.create(spec)
    mark = len(fake.calls())
    info = vb.info()
    assert len(calls_since(fake, mark)) == 1
    assert info["state"] == "stopped" and info["forwards"][0]["name"] == "ssh"
    assert info["memory_mb"] == 1024 and info["cpus"] == 2


def test_ssh_rule_added_when_the_spec_has_none(vb, fake, spec):
    bare = dataclasses.replace(spec, forwards=[spec.forwards[1]])
    vb.create(bare)
    host, port = vb.ssh_endpoint()
    assert host == "127.0.0.1" and 2200 <= port <= 2250
    assert vb.create(bare).changes == []  # the picked port is kept on re-runs
    assert vb.ssh_endpoint() == (host, port)
