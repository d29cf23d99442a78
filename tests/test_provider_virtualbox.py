"""VirtualBoxProvider against the fake VBoxManage: lifecycle, converge, data safety, ports, budgets."""

import dataclasses
import os
import socket

import pytest

import fakevbox
from conftest import triple

from b2dkit import disk, paths
from b2dkit.errors import HypervisorError, InputError, PortInUse, VMNotFound
from b2dkit.forwards import Forward, parse_spec
from b2dkit.hypervisors import get_provider
from b2dkit.hypervisors.base import MachineSpec, VMState
from b2dkit.hypervisors.virtualbox.provider import VirtualBoxProvider
from b2dkit.hypervisors.virtualbox.vboxmanage import RuleExists, VBoxLocked, VBoxManage, natpf_rule
from ports import free_port

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOriginalKeyForTests b2dkit-test"


@pytest.fixture
def fake(tmp_path, monkeypatch, vbox_version):
    return fakevbox.install(tmp_path / "fakevbox", monkeypatch)


@pytest.fixture
def iso(tmp_path):
    path = tmp_path / "b2d-cst.iso"
    path.write_bytes(b"not really an iso")
    return path



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


def test_port_taken_between_check_and_start_is_port_in_use_on_both_engines(vb, fake, spec, monkeypatch,
                                                                          vbox_version):
    """Old NAT: the VM starts and VBox.log says; libslirp (7.1+): startvm fails (#12 item 3)."""
    vb.create(spec)
    import b2dkit.forwards

    monkeypatch.setattr(b2dkit.forwards, "probe", lambda *a: "free")  # the race window
    port = spec.forwards[1].host_port
    libslirp = triple(vbox_version) >= (7, 1, 0)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        match = f"host port {port} is already in use" if libslirp else f"could not forward host port 127.0.0.1:{port}"
        with pytest.raises(PortInUse, match=match):
            vb.start()
    assert vb.state() is (VMState.STOPPED if libslirp else VMState.RUNNING)


def test_modifyvm_never_called_on_a_running_vm(vb, fake, spec):
    vb.create(spec)
    vb.start()
    mark = len(fake.calls())
    web = parse_spec(f"{free_port()}:80")
    vb.add_forward(web)
    with pytest.raises(PortInUse, match=web.name):  # the same host port again is a clash, never a replace
        vb.add_forward(dataclasses.replace(web, guest_port=81))
    vb.remove_forward(web.name)
    vb.create(spec)
    vb.stop(timeout=1)
    running_calls = calls_since(fake, mark)
    assert [c for c in running_calls if c[0] in ("modifyvm", "storageattach", "storagectl")] == []
    assert ["controlvm", "dev", "natpf1", "delete", web.name] in running_calls


def test_a_wanted_rule_on_an_auto_forwards_port_replaces_it_off_and_live(vb, fake, spec):
    """A profile forward wins over a container's auto forward (forwards.with_ssh drops the auto
    one); VirtualBox keeps rules the profile does not name, so the provider deletes it itself."""
    from b2dkit.forwards import auto_name

    vb.create(spec)
    port = free_port()
    auto = Forward(port, port, name=auto_name("tcp", port))
    vb.add_forward(auto)
    mine = parse_spec(f"{port}:80")
    wanted = dataclasses.replace(spec, forwards=spec.forwards + [mine])
    mark = len(fake.calls())
    report = vb.create(wanted)
    assert report.changes == [f"forward auto-tcp-{port}: 127.0.0.1:{port} → {port}/tcp removed",
                              f"forward tcp-{port}: 127.0.0.1:{port} → 80/tcp added"]
    assert [c[0] for c in calls_since(fake, mark)] == ["showvminfo", "modifyvm"]  # one modifyvm, as ever
    assert mine in vb.forwards() and auto not in vb.forwards()
    vb.start()
    port = free_port()
    auto = Forward(port, port, name=auto_name("tcp", port))
    vb.add_forward(auto)
    mine = parse_spec(f"{port}:81")
    mark = len(fake.calls())
    vb.create(dataclasses.replace(wanted, forwards=wanted.forwards + [mine]))
    assert [c for c in calls_since(fake, mark) if c[0] == "controlvm"] == [
        ["controlvm", "dev", "natpf1", "delete", auto.name], ["controlvm", "dev", "natpf1", natpf_rule(mine)]]
    assert mine in vb.forwards() and auto not in vb.forwards()


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


# -- issue #12: VirtualBox as it really is, item by item, on every fake version ---------------------


def vbox_xml_nat(fake, vm="dev"):
    import xml.etree.ElementTree as ET

    root = ET.parse(fake.machine(vm)["cfg_file"]).getroot()
    ns = {"v": "http://www.virtualbox.org/"}
    return root.find("v:Machine/v:Hardware/v:Network/v:Adapter[@slot='0']/v:NAT", ns), ns


def test_item1_a_new_disk_at_a_kept_disks_path_can_be_attached(vb, fake, spec):
    vb.create(spec)
    vb.destroy()  # keeps the disk: detached, so still in VirtualBox's media registry
    vb.disk_path().unlink()  # the user deletes it by hand
    vb.create(spec)  # a new disk.vmdk at the same path: a new UUID
    assert vb.info()["disk"] == str(paths.vm_dir("dev") / "disk.vmdk")


def test_item1_the_media_registry_trap_is_real_in_the_fake(vb, fake, spec):
    """What item 1's fix gets past: a detached disk that stays registered blocks a new one."""
    vb.create(spec)
    vb.vbox.run(["storageattach", "dev", "--storagectl", "SATA", "--port", "1", "--device", "0",
                 "--medium", "none"])  # detached but not closed, as destroy did before the fix
    vb.vbox.run(["unregistervm", "dev", "--delete"])
    vb.disk_path().unlink()
    with pytest.raises(HypervisorError, match=r"Cannot register the hard disk .* already exists"):
        vb.create(spec)


def test_item1_a_kept_disk_is_reattached_after_destroy(vb, fake, spec):
    vb.create(spec)
    vb.destroy()
    report = vb.create(spec)
    assert any("re-attached" in c for c in report.changes)
    assert fake.calls()[-1][0] == "storageattach"


def test_item2_forwards_of_a_7_0_0_vm_are_read_from_its_vbox_file(vb, fake, spec, vbox_version):
    vb.create(spec)
    out = vb.vbox.run(["showvminfo", "dev", "--machinereadable"])
    assert ("Forwarding(" in out) == (vbox_version != "7.0.0")  # two rules: 7.0.0 prints none
    assert vb.forwards() == spec.forwards
    mark = len(fake.calls())
    assert vb.create(spec).changes == []  # no "A NAT rule of this name already exists"
    vb.add_forward(spec.forwards[1])  # the same rule again: a no-op
    assert len(calls_since(fake, mark)) == 2
    web = parse_spec(f"{free_port()}:80")
    vb.add_forward(web)
    assert set(vb.forwards()) == set(spec.forwards) | {web}


def test_item3_live_add_on_a_busy_port_is_port_in_use_on_both_engines(vb, fake, spec, monkeypatch):
    vb.create(spec)
    vb.start()
    import b2dkit.forwards

    monkeypatch.setattr(b2dkit.forwards, "probe", lambda *a: "free")  # taken after the check
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        mark = len(fake.calls())
        with pytest.raises(PortInUse, match=f"could not forward host port 127.0.0.1:{port}"):
            vb.add_forward(parse_spec(f"{port}:80"))
    assert [c[0] for c in calls_since(fake, mark)] == ["showvminfo", "controlvm"]  # exit 0 all the same


@pytest.mark.parametrize("who", ["user", "service"])
def test_item4_a_russian_locale_still_finds_not_found_and_locks(vb, fake, spec, monkeypatch, who):
    """A LANG=ru_RU.UTF-8 user (who=user), or a VBoxSVC a Russian GUI started (who=service)."""
    monkeypatch.setenv("LANG", "ru_RU.UTF-8")
    monkeypatch.setenv("LC_ALL", "ru_RU.UTF-8")
    if who == "service":
        monkeypatch.setenv("FAKEVBOX_SVC_LANG", "ru")
    assert vb.state() is VMState.ABSENT  # "VM not found", in whatever language
    vb.create(spec)
    vb.start()
    assert vb.state() is VMState.RUNNING
    with pytest.raises(VBoxLocked):
        vb.vbox.run(["modifyvm", "dev", "--memory", "2048"], retry=False)
    with pytest.raises(RuleExists):
        vb.vbox.run(["controlvm", "dev", "natpf1", natpf_rule(spec.forwards[0])], retry=False)


def test_item5_a_windows_code_page_path_still_matches(vb, fake, spec, monkeypatch, tmp_path):
    """CfgFile and "SATA-1-0" in the ANSI code page of a non-ASCII home folder (#12 item 5)."""
    home = tmp_path / "Jürgen" / "b2dkit"
    monkeypatch.setenv("B2DKIT_HOME", str(home))
    monkeypatch.setenv("FAKEVBOX_CODESET", "cp1252")
    import locale

    monkeypatch.setattr(locale, "getpreferredencoding", lambda do_setlocale=True: "cp1252")
    vb = VirtualBoxProvider("dev", vbox=VBoxManage(sleep=lambda s: None), sleep=lambda s: None)
    vb.create(spec)
    assert "Jürgen" in vb.info()["disk"]  # decoded in the process code set, not mangled
    assert vb.create(spec).changes == []  # not "SATA port 1 holds …, not b2dkit's disk"


def test_item5_an_unknown_code_set_still_recognises_our_disk(vb, fake, spec, monkeypatch, tmp_path):
    home = tmp_path / "Jürgen" / "b2dkit"
    monkeypatch.setenv("B2DKIT_HOME", str(home))
    monkeypatch.setenv("FAKEVBOX_CODESET", "cp1252")  # and b2dkit cannot know it
    vb = VirtualBoxProvider("dev", vbox=VBoxManage(sleep=lambda s: None), sleep=lambda s: None)
    vb.create(spec)
    assert "Jürgen" not in vb.info()["disk"]  # the path really comes back mangled
    mark = len(fake.calls())
    assert vb.create(spec).changes == []  # the disk is known by its medium UUID
    assert [c[0] for c in calls_since(fake, mark)] == ["showvminfo", "showmediuminfo"]


def test_item5_a_foreign_disk_in_our_slot_is_still_refused(vb, fake, spec, monkeypatch, tmp_path):
    home = tmp_path / "Jürgen" / "b2dkit"
    monkeypatch.setenv("B2DKIT_HOME", str(home))
    monkeypatch.setenv("FAKEVBOX_CODESET", "cp1252")
    vb = VirtualBoxProvider("dev", vbox=VBoxManage(sleep=lambda s: None), sleep=lambda s: None)
    vb.create(spec)
    other = tmp_path / "other.vmdk"
    vb.vbox.convertfromraw_stdin(other, 1 << 20, lambda out: out.write(b"\0" * (1 << 20)))
    vb.vbox.run(["storageattach", "dev", "--storagectl", "SATA", "--port", "1", "--device", "0",
                 "--type", "hdd", "--medium", str(other)])
    with pytest.raises(HypervisorError, match="not b2dkit's disk"):
        vb.create(spec)


def test_item6_startvm_that_exits_1_after_starting_is_a_start(vb, fake, spec, monkeypatch):
    vb.create(spec)
    monkeypatch.setenv("FAKEVBOX_FAULTS", "startvm=started-exit1*1")
    mark = len(fake.calls())
    vb.start()
    assert vb.state() is VMState.RUNNING
    assert [c[0] for c in calls_since(fake, mark)].count("startvm") == 1  # no retry into the lock


def test_item7_gurumeditation_says_power_off_not_wait(vb, fake, spec, monkeypatch):
    vb.create(spec)
    monkeypatch.setenv("FAKEVBOX_FAULTS", "startvm=guru*1")
    vb.start()
    for call in (vb.start, lambda: vb.create(spec), lambda: vb.add_forward(parse_spec(f"{free_port()}:80"))):
        with pytest.raises(HypervisorError, match="guru meditation") as excinfo:
            call()
        assert "vm.stop" in str(excinfo.value) and "wait a moment" not in str(excinfo.value)
    vb.stop(timeout=0.1)  # the power-off that clears it
    assert vb.state() is VMState.STOPPED


def test_item7_gurumeditation_is_its_own_state(vb, fake, spec, monkeypatch):
    vb.create(spec)
    monkeypatch.setenv("FAKEVBOX_FAULTS", "startvm=guru*1")
    vb.start()
    assert vb.state() is VMState.CRASHED
    mark = len(fake.calls())
    assert vb.stop(timeout=30) is False  # powered off at once: a crashed guest sees no ACPI button
    assert [c[:3] for c in calls_since(fake, mark)][1:] == [["controlvm", "dev", "poweroff"]]
    assert vb.state() is VMState.STOPPED


def test_item7_a_vm_whose_vbox_file_is_gone_is_reported_not_duplicated(vb, fake, spec):
    vb.create(spec)
    cfg = fake.machine("dev")["cfg_file"]
    os.unlink(cfg)
    with pytest.raises(HypervisorError, match="cannot read the settings file") as excinfo:
        vb.create(spec)
    assert "vm.destroy" in str(excinfo.value)
    assert [name for name, _ in vb.vbox.list_vms()] == ["<inaccessible>"]  # no second VM made


def test_item7_an_inaccessible_vm_is_its_own_state_and_destroy_clears_it(vb, fake, spec):
    vb.create(spec)
    os.unlink(fake.machine("dev")["cfg_file"])
    assert vb.vbox.list_vms()[0][0] == "<inaccessible>"  # VirtualBox knows it by UUID only
    assert vb.state() is VMState.INACCESSIBLE
    disk = vb.disk_path()
    vb.destroy()
    assert vb.vbox.list_vms() == [] and vb.state() is VMState.ABSENT
    assert disk is not None and disk.exists()  # kept: the user did not purge
    assert vb.create(spec).created  # and usable again


def test_item8_the_nat_dns_proxy_is_on_from_create(vb, fake, spec):
    vb.create(spec)
    nat, ns = vbox_xml_nat(fake)
    assert nat.find("v:DNS", ns).get("use-proxy") == "true"


def test_item9_host_loopback_reaches_the_hosts_127_0_0_1_on_7(vb, fake, spec, vbox_version):
    loop = dataclasses.replace(spec, host_loopback=True)
    vb.create(loop)  # 6.1 would reject the option
    nat, ns = vbox_xml_nat(fake)
    seven = triple(vbox_version) >= (7, 0, 0)
    assert nat.get("localhost-reachable") == ("true" if seven else None)
    mark = len(fake.calls())
    assert vb.create(loop).changes == []
    assert len(calls_since(fake, mark)) == (1 if seven else 2)  # 6.1 asks --version again


def test_item9_host_loopback_added_later_converges_on_7(vb, fake, spec, vbox_version):
    vb.create(spec)
    report = vb.create(dataclasses.replace(spec, host_loopback=True))
    seven = triple(vbox_version) >= (7, 0, 0)
    assert report.changes == (["NIC 1 → guest reaches the host's loopback"] if seven else [])
    nat, ns = vbox_xml_nat(fake)
    assert nat.get("localhost-reachable") == ("true" if seven else None)


def test_item11_the_disk_stream_is_exactly_the_size(vb, fake, spec):
    vb.create(spec)
    meta, _ = fakevbox.read_disk(vb.disk_path())
    assert meta["received"] == meta["size"] == spec.disk_mb << 20 and not meta["extra"]


def test_item11_the_parser_copes_with_every_versions_slot_keys(vb, fake, spec, tmp_path):
    vb.create(spec)
    info = vb.vbox.showvminfo("dev")
    assert info.medium("SATA", 0) == str(spec.iso.resolve()) and info.medium("SATA", 1) == str(vb.disk_file)
    assert sorted(k for k in info.storage) == [("SATA", p, 0) for p in range(4)]


@pytest.mark.parametrize(
    "op",
    ["create", "forward", "status", "purge-and-create"],
)
def test_done_when_every_version_creates_forwards_reports_and_recreates(vb, fake, spec, op):
    """Issue #12 "done when": these pass on every fake version within today's call budgets."""
    mark = len(fake.calls())
    vb.create(spec)
    assert len(calls_since(fake, mark)) <= 10
    if op == "forward":
        mark = len(fake.calls())
        vb.add_forward(parse_spec(f"{free_port()}:80"))
        assert len(calls_since(fake, mark)) <= 2
    elif op == "status":
        mark = len(fake.calls())
        assert vb.info()["state"] == "stopped"
        assert len(calls_since(fake, mark)) == 1
    elif op == "purge-and-create":
        vb.destroy(purge=True)
        mark = len(fake.calls())
        vb.create(spec)
        assert len(calls_since(fake, mark)) <= 10 and vb.forwards() == spec.forwards


def test_a_running_vms_memory_change_is_recorded_for_its_next_start(vb, fake, spec):
    """defer=True (what vm.create and onboard use): forwards go live, memory waits for the next start."""
    vb.create(spec)
    vb.start()
    extra = parse_spec(f"{free_port()}:7000")
    wanted = dataclasses.replace(spec, memory_mb=2048, forwards=spec.forwards + [extra])
    expected = [
        "memory 1024 → 2048 MB (VM dev is running: takes effect at its next start)",
        f"forward {extra.name}: 127.0.0.1:{extra.host_port} → 7000/tcp added",
    ]
    assert [c.text for c in vb.changes(wanted, defer=True)] == expected
    with pytest.raises(HypervisorError, match="powered off: memory 1024 → 2048 MB"):
        vb.create(wanted)  # without defer: refused, as before
    mark = len(fake.calls())
    assert vb.create(wanted, defer=True).changes == expected  # the decided lines, applied
    assert "modifyvm" not in [c[0] for c in calls_since(fake, mark)]  # VirtualBox refuses it while running
    assert fake.machine("dev")["memory"] == 1024 and extra in vb.forwards()
    assert vb.changes(wanted, defer=True) == []  # recorded: nothing left to do
    assert vb.pending() == ["memory 2048 MB is recorded; VM dev runs with 1024 MB until its next start"]
    vb.stop(timeout=1)
    assert vb.pending() == []  # only a running VM has settings pending
    mark = len(fake.calls())
    vb.start()
    assert [c[0] for c in calls_since(fake, mark)][-2:] == ["modifyvm", "startvm"]
    assert fake.machine("dev")["memory"] == 2048 and not (vb.dir / "pending.json").exists()
    assert vb.changes(wanted, defer=True) == []

