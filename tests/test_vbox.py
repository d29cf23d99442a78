"""vboxmanage: the runner's failure rules and retries, the finder, and the parsers on every sample."""

import os
import sys
from pathlib import Path

import pytest

import fakevbox
from conftest import FIXTURES, fixture_text

from b2dkit.hypervisors.virtualbox import vboxmanage as vbox
from b2dkit.errors import HypervisorError, InputError, PortInUse, ToolMissing, VMNotFound
from b2dkit.forwards import Forward
from b2dkit.hypervisors.base import VMState

SAMPLES = "vbox"
DBG_PREFIX = "(default) DBG | "


def sample(name) -> str:
    return fixture_text(SAMPLES, name)


def showvminfo_samples():
    # "(missing)" makes the parametrised test fail by name rather than vanish when the folder is empty
    return sorted(p.name for p in (FIXTURES / SAMPLES).glob("showvminfo_machinereadable.*")) or ["(missing)"]


def undebug(text: str) -> str:
    """docker-machine -D prefixes each line; the parser gets what VBoxManage printed."""
    return "\n".join(
        line[len(DBG_PREFIX) :] if line.startswith(DBG_PREFIX) else line for line in text.splitlines()
    )


@pytest.fixture
def fake(tmp_path, monkeypatch):
    return fakevbox.install(tmp_path / "fakevbox", monkeypatch)


@pytest.fixture
def naps():
    return []


@pytest.fixture
def vbm(fake, naps):
    return vbox.VBoxManage(sleep=naps.append)


# -- parser: every sample ------------------------------------------------------------------------


@pytest.mark.parametrize("name", showvminfo_samples())
def test_every_showvminfo_sample_parses_line_for_line(name):
    text = undebug(sample(name))
    pairs = vbox.parse_pairs(text)
    # one pair per key=value line: none of the samples has a multi-line value, and a stray
    # line without "=" (7.0.x's "Encryption:     disabled") is skipped, not misread
    assert len(pairs) == len([line for line in text.splitlines() if "=" in line])
    assert all(key and not key.startswith('"') for key, _ in pairs)
    assert all(not value.startswith('"') for _, value in pairs)
    info = vbox.VMInfo.from_text(text)
    assert set(info.raw) >= {key for key, _ in pairs if not key.startswith("Forwarding(")}  # nothing dropped


def test_saved_state_sample_typed():
    info = vbox.VMInfo.from_text(sample("showvminfo_machinereadable.saved_state.go-virtualbox.out"))
    assert (info.name, info.uuid) == ("Ubuntu", "37f5d336-bf07-48dd-947c-37e6a56420a7")
    assert (info.vbox_state, info.state) == ("saved", VMState.SAVED)
    assert (info.memory, info.cpus) == (1024, 1)
    assert info.cfg_file == "/Users/fix/VirtualBox VMs/go-virtualbox/go-virtualbox.vbox"
    assert info.controllers == ["IDE Controller", "SATA Controller"]
    assert info.storage[("IDE Controller", 1, 1)] == "none"
    assert info.medium("SATA Controller", 0) == (
        "/Users/fix/VirtualBox VMs/go-virtualbox/ubuntu-16.04-amd64-disk001.vmdk"
    )
    assert ("SATA Controller-ImageUUID", 0, 0) not in info.storage
    assert info.nics == {
        1: "nat",
        2: "none",
        3: "none",
        4: "none",
        5: "none",
        6: "none",
        7: "none",
        8: "none",
    }
    assert info.forwards == {1: [Forward(2222, 22, "tcp", "127.0.0.1", "", "ssh")]}
    assert info.uart == {1: "off", 2: "off", 3: "off", 4: "off"}
    assert info.raw["vrdeproperty[Client/DisableDisplay]"] == "<not set>"
    assert info.raw["vrdeport"] == "-1"


def test_nic_fragment_forward_tied_to_nic1_and_hostonly_name_with_spaces():
    text = undebug(sample("showvminfo_machinereadable.docker-machine_b2d_nic_fragment.issue2430.dbg.txt"))
    info = vbox.VMInfo.from_text(text)
    assert info.state is VMState.RUNNING
    assert info.nat_forwards() == [Forward(64045, 22, "tcp", "127.0.0.1", "", "ssh")]
    assert info.nat_forwards(2) == []
    assert info.nics == {1: "nat", 2: "hostonly", 3: "none"}
    assert info.raw["hostonlyadapter2"] == "VirtualBox Host-Only Ethernet Adapter #11"
    assert vbox.VMInfo.from_text(text).raw["nic1.Forwarding(0)"] == "ssh,tcp,127.0.0.1,64045,,22"


def test_storage_fragment_keeps_unescaped_windows_backslashes():
    info = vbox.VMInfo.from_text(
        undebug(sample("showvminfo_machinereadable.docker-machine_b2d_storage_fragment.issue3286.dbg.txt"))
    )
    assert info.medium("SATA", 0) == r"C:\Users\johndoe\.docker\machine\machines\default\boot2docker.iso"
    assert info.medium("SATA", 1) == r"C:\Users\johndoe\.docker\machine\machines\default\disk.vmdk"
    assert info.storage[("SATA", 21, 0)] == "none"
    assert info.medium("SATA", 2) is None
    assert info.raw["SATA-IsEjected"] == "off"


@pytest.mark.parametrize(
    "name",
    [
        "showvminfo_machinereadable.partial_vminfo.docker-machine.txt",
        "showvminfo_machinereadable.partial_diskinfo.docker-machine.txt",
    ],
)
def test_partial_samples(name):
    info = vbox.VMInfo.from_text(sample(name))
    assert info.medium("SATA", 1) == "/home/ehazlett/vm/test/disk.vmdk"
    assert info.raw["SATA-ImageUUID-1-0"] == "12345-abcdefg"
    assert info.nics == {1: "nat"}  # last line has no newline
    assert info.state is VMState.BUSY  # no VMState line: never mistaken for stopped


# -- parser: each format rule by hand ------------------------------------------------------------


def test_escapes_in_values_and_keys():
    text = (
        'CfgFile="C:\\\\Users\\\\me\\\\VirtualBox VMs\\\\d\\\\d.vbox"\n'
        'description="say \\"hi\\""\n'
        '"odd \\"key\\""="v"\n'
    )
    data = vbox.VMInfo.from_text(text).raw
    assert data["CfgFile"] == r"C:\Users\me\VirtualBox VMs\d\d.vbox"
    assert data["description"] == 'say "hi"'
    assert data['odd "key"'] == "v"


def test_value_spanning_lines_swallows_lookalike_lines():
    text = 'name="vm"\ndescription="first line\nmemory=99\n  third \\"q\\" line"\nmemory=1024\n'
    data = vbox.VMInfo.from_text(text).raw
    assert data["description"] == 'first line\nmemory=99\n  third "q" line'
    assert data["memory"] == "1024"


def test_irregular_lines_kept_raw():
    text = (
        'VideoMode="720,400,0"@0,0 1\n'
        "GuestAdditionsFacility_VirtualBox Base Driver=50,1550641065785\n"
        "vrdeproperty[TCP/Ports]=<not set>\n"
        "videocapopts=\n"
        "memory=512\n"
    )
    data = vbox.VMInfo.from_text(text).raw
    assert data["VideoMode"] == '"720,400,0"@0,0 1'
    assert data["GuestAdditionsFacility_VirtualBox Base Driver"] == "50,1550641065785"
    assert data["vrdeproperty[TCP/Ports]"] == "<not set>"
    assert data["videocapopts"] == ""
    assert data["memory"] == "512"


def test_unterminated_quote_does_not_eat_the_rest():
    data = vbox.VMInfo.from_text('broken="no end\nmemory=64\ncpus=2').raw
    assert data["broken"] == '"no end'
    assert (data["memory"], data["cpus"]) == ("64", "2")


def test_forwarding_index_restarts_per_nic():
    text = (
        'nic1="nat"\nForwarding(0)="b,tcp,,80,,80"\nForwarding(1)="a,udp,127.0.0.1,53,10.0.2.15,53"\n'
        'nic2="nat"\nForwarding(0)="c,tcp,127.0.0.1,9,,9"\nnic3="none"\n'
    )
    info = vbox.VMInfo.from_text(text)
    assert [f.name for f in info.nat_forwards()] == ["b", "a"]
    assert info.nat_forwards()[1] == Forward(53, 53, "udp", "127.0.0.1", "10.0.2.15", "a")
    assert info.nat_forwards()[0].host_ip == ""
    assert info.nat_forwards(2) == [Forward(9, 9, "tcp", "127.0.0.1", "", "c")]
    data = vbox.VMInfo.from_text(text).raw
    assert {"nic1.Forwarding(0)", "nic1.Forwarding(1)", "nic2.Forwarding(0)"} <= set(data)


def test_crlf_output():
    info = vbox.VMInfo.from_text('VMState="running"\r\nmemory=2048\r\n')
    assert (info.state, info.memory) == (VMState.RUNNING, 2048)


@pytest.mark.parametrize(
    "raw, state",
    [
        ("running", VMState.RUNNING),
        ("paused", VMState.PAUSED),
        ("saved", VMState.SAVED),
        ("poweroff", VMState.STOPPED),
        ("aborted", VMState.STOPPED),
        ("starting", VMState.BUSY),
        ("stopping", VMState.BUSY),
        ("saving", VMState.BUSY),
        ("restoring", VMState.BUSY),
        ("gurumeditation", VMState.CRASHED),
        ("inaccessible", VMState.INACCESSIBLE),
        ("aborted-saved", VMState.SAVED),
    ],
)
def test_state_map(raw, state):
    assert vbox.map_state(raw) is state


def test_list_vms_samples():
    assert vbox.parse_list_vms(sample("list_vms.go-virtualbox.out")) == [
        ("Ubuntu", "2e16b1fc-675d-4a7a-a9a1-e89a8bde7874"),
        ("go-virtualbox", "def44546-e3da-4902-8d15-b91c99c80cbc"),
    ]
    transcript = sample("vboxmanage_session_transcript.windows.txt")
    assert vbox.parse_list_vms(transcript) == [("AlmaLinux9", "6ebc2119-de35-467b-a695-047eb2e424f5")] * 2
    assert vbox.parse_list_vms("") == []


def test_createvm_and_version_and_log_parsers():
    uuid, cfg = vbox.parse_createvm(sample("createvm_register.stdout.txt"))
    assert uuid == "e55f5484-3260-41c4-a615-5ee6141d084b"
    assert cfg == "/Users/dustin/VirtualBox VMs/boot2docker-vm/boot2docker-vm.vbox"
    assert vbox.parse_version("5.0.8r103449\n") == (5, 0, 8)
    assert vbox.parse_version("6.1.38_Ubuntur153438\n") == (6, 1, 38)
    with pytest.raises(HypervisorError):
        vbox.parse_version("WARNING: The vboxdrv kernel module is not loaded.\n")
    real = [line for line in sample("errors.vboxmanage_stderr.txt").splitlines() if line.startswith("NAT:")]
    assert vbox.nat_failures("\n".join(real)) == [("tcp", "127.0.0.1", 62405, "")]
    line = "00:00:01.1 NAT: Failed to redirect UDP 0.0.0.0:5353 -> 0.0.0.0:53 (Address already in use)"
    assert vbox.nat_failures(line) == [("udp", "0.0.0.0", 5353, "Address already in use")]


# -- argv builders ---------------------------------------------------------------------------------


def test_natpf_argv_depends_on_running():
    fwd = Forward(8080, 80)
    assert vbox.natpf_add_argv("b2d", fwd, running=True) == [
        "controlvm",
        "b2d",
        "natpf1",
        "tcp-8080,tcp,127.0.0.1,8080,,80",
    ]
    assert vbox.natpf_add_argv("b2d", fwd, running=False) == [
        "modifyvm",
        "b2d",
        "--natpf1",
        "tcp-8080,tcp,127.0.0.1,8080,,80",
    ]
    assert vbox.natpf_delete_argv("b2d", "web", running=True) == [
        "controlvm",
        "b2d",
        "natpf1",
        "delete",
        "web",
    ]
    assert vbox.natpf_delete_argv("b2d", "web", running=False) == [
        "modifyvm",
        "b2d",
        "--natpf1",
        "delete",
        "web",
    ]
    for bad in ("a,b", 'q"', "back\\slash"):
        with pytest.raises(InputError):
            vbox.natpf_rule(Forward(1, 1, name=bad))


# -- error catalogue (texts from the reference) -----------------------------------------------------


def _blocks(text):
    """Real stderr blocks of errors.vboxmanage_stderr.txt, annotations dropped."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.startswith("#"):
            if current:
                blocks.append("\n".join(current))
                current = []
            continue
        current.append(line)
    if current:
        blocks.append("\n".join(current))
    return blocks


def test_catalogue_classifies_every_reference_error():
    blocks = _blocks(sample("errors.vboxmanage_stderr.txt"))
    expected = [
        vbox.VMNotRegistered,
        vbox.VMNotRegistered,
        vbox.VBoxLocked,
        vbox.VBoxLocked,
        vbox.ObjectNotReady,
        vbox.SettingsFileExists,
        vbox.VBoxError,
        vbox.RuleExists,
        vbox.RuleNotFound,
        vbox.HostOnlyAdapterError,
    ]
    got = [type(vbox.classify(["VBoxManage", "x"], 1, b)) for b in blocks if not b.startswith("NAT:")]
    assert got == expected
    vmnf = vbox.classify(["VBoxManage", "showvminfo"], 1, blocks[0])
    assert isinstance(vmnf, VMNotFound) and isinstance(vmnf, HypervisorError)
    assert "\n" not in str(vmnf) and "vmaww_shucks" in str(vmnf)
    for phrase in (
        "is already locked by a session (or being locked or unlocked)",
        "already has a lock request pending",
        "while it is locked",
    ):
        assert isinstance(
            vbox.classify(["V", "modifyvm"], 1, f"VBoxManage: error: The machine {phrase}"), vbox.VBoxLocked
        )
    vtx = vbox.classify(
        ["V", "startvm"], 0, "VBoxManage.exe: error: VT-x is not available. (VERR_VMX_NO_VMX)"
    )
    assert isinstance(vtx, vbox.VTxUnavailable) and "BIOS" in str(vtx)
    denied = vbox.classify(["V", "showvminfo"], 1, "VBoxManage: error: Code E_ACCESSDENIED (0x80070005)")
    assert isinstance(denied, vbox.AccessDenied) and vbox.is_transient(denied)
    assert not vbox.is_transient(vbox.classify(["V", "hostonlyif"], 1, "VBoxManage: error: E_ACCESSDENIED"))


def test_failure_rule():
    assert vbox.failed(0, "VBoxManage.exe: error: VT-x is not available. (VERR_VMX_NO_VMX)")
    assert vbox.failed(1, "")
    assert not vbox.failed(0, "0%...10%...100%\nWARNING: something harmless\n")
    assert not vbox.failed(0, "progress: error: not at line start? VBoxManage: error: x")


# -- runner against the fake ----------------------------------------------------------------------


def test_runner_counts_and_strips_cr(vbm, fake):
    assert vbm.version() == (7, 0, 20)
    assert vbm.list_vms() == []
    assert vbm.calls == 2 == len(fake.calls())


def test_runner_retries_transient_with_backoff(vbm, fake, naps, monkeypatch):
    vbm.createvm("b2d", basefolder=fake.root / "vms")
    monkeypatch.setenv("FAKEVBOX_FAULTS", "showvminfo=not-ready*3")
    assert vbm.showvminfo("b2d").name == "b2d"
    assert naps == [0.1, 0.2, 0.4]
    assert vbm.calls == 1 + 4


def test_runner_retry_is_bounded(vbm, fake, naps, monkeypatch):
    vbm.createvm("b2d", basefolder=fake.root / "vms")
    monkeypatch.setenv("FAKEVBOX_FAULTS", "showvminfo=locked*9")
    with pytest.raises(vbox.VBoxLocked):
        vbm.showvminfo("b2d")
    assert vbm.calls == 1 + 5 and naps == [0.1, 0.2, 0.4, 0.8]


def test_runner_does_not_retry_permanent_errors(vbm, naps):
    with pytest.raises(vbox.VMNotRegistered):
        vbm.showvminfo("ghost")
    assert vbm.calls == 1 and naps == []


def test_runner_error_on_exit_zero(vbm, fake, monkeypatch):
    monkeypatch.setenv("FAKEVBOX_FAULTS", "startvm=exit0-error*1")
    with pytest.raises(vbox.VTxUnavailable) as err:
        vbm.run(["startvm", "x", "--type", "headless"])
    assert err.value.returncode == 0


def test_runner_syntax_error_is_exit_2(vbm):
    with pytest.raises(vbox.VBoxSyntaxError) as err:
        vbm.run(["frobnicate"])
    assert err.value.returncode == 2 and "frobnicate" in str(err.value)


def test_runner_streams_stdin_and_reports_child_errors(vbm, fake, tmp_path):
    out = tmp_path / "d.vmdk"
    vbm.convertfromraw_stdin(out, 3 << 20, lambda fh: fh.write(b"\0" * (3 << 20)))
    meta, header = fakevbox.read_disk(out)
    assert meta["size"] == 3 << 20 and header == b"\0" * 4096
    # the child fails early (output exists): BrokenPipe is swallowed, the VBoxManage error wins
    with pytest.raises(vbox.VBoxError, match="VERR_ALREADY_EXISTS"):
        vbm.convertfromraw_stdin(out, 64 << 20, lambda fh: fh.write(b"\0" * (64 << 20)))


def test_darwin_unsets_library_paths(monkeypatch):
    monkeypatch.setenv("DYLD_LIBRARY_PATH", "/x")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/y")
    monkeypatch.setattr(sys, "platform", "darwin")
    env = vbox.VBoxManage(path="/bin/true")._env()
    assert "DYLD_LIBRARY_PATH" not in env and "LD_LIBRARY_PATH" not in env
    monkeypatch.setattr(sys, "platform", "linux")
    assert vbox.VBoxManage(path="/bin/true")._env()["LD_LIBRARY_PATH"] == "/y"


# -- finding VBoxManage ---------------------------------------------------------------------------


def test_find_on_path(fake):
    assert vbox.find_vboxmanage() == str(fake.exe)


def test_find_via_msi_install_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    exe = tmp_path / "Oracle" / "VBoxManage.exe"
    exe.parent.mkdir()
    exe.write_text("")
    exe.chmod(0o755)
    monkeypatch.setenv("VBOX_MSI_INSTALL_PATH", str(exe.parent) + os.sep)
    assert vbox.find_vboxmanage() == str(exe)


def test_missing_is_one_line_with_install_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    for var in ("VBOX_MSI_INSTALL_PATH", "VBOX_INSTALL_PATH"):
        monkeypatch.delenv(var, raising=False)
    if any(Path(p).exists() for p in ("/Applications/VirtualBox.app", "/usr/local/bin/VBoxManage")):
        pytest.skip("VirtualBox is installed here")
    with pytest.raises(ToolMissing) as err:
        vbox.find_vboxmanage()
    assert "\n" not in str(err.value) and "brew install --cask virtualbox" in str(err.value)


# -- issue #12: real VirtualBox 6.1-7.2 ------------------------------------------------------------


def test_item10_finds_the_windows_vboxmanage_from_wsl(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    for var in ("VBOX_MSI_INSTALL_PATH", "VBOX_INSTALL_PATH"):
        monkeypatch.delenv(var, raising=False)
    wsl = "/mnt/c/Program Files/Oracle/VirtualBox/VBoxManage.exe"
    monkeypatch.setattr(vbox.Path, "is_file", lambda self: str(self) == wsl)
    monkeypatch.setattr(vbox.os, "access", lambda path, mode: str(path) == wsl)
    assert vbox.find_vboxmanage() == wsl


def test_item10_finds_vboxmanage_from_the_windows_registry(tmp_path, monkeypatch):
    import types

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    for var in ("VBOX_MSI_INSTALL_PATH", "VBOX_INSTALL_PATH"):
        monkeypatch.delenv(var, raising=False)
    exe = tmp_path / "D" / "VirtualBox" / "VBoxManage.exe"
    exe.parent.mkdir(parents=True)
    exe.write_text("")
    exe.chmod(0o755)

    class Key:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    opened = []
    winreg = types.SimpleNamespace(
        HKEY_LOCAL_MACHINE="HKLM",
        OpenKey=lambda root, path: opened.append((root, path)) or Key(),
        QueryValueEx=lambda key, name: (str(exe.parent), 1) if name == "InstallDir" else None,
    )
    monkeypatch.setitem(sys.modules, "winreg", winreg)
    monkeypatch.setattr(vbox.sys, "platform", "win32")
    assert vbox.find_vboxmanage() == str(exe)
    assert opened == [("HKLM", r"SOFTWARE\Oracle\VirtualBox")]


def test_item10_auto_picks_qemu_on_arm64_macos(fake, monkeypatch):
    import platform

    from b2dkit.hypervisors import default_provider_name

    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    assert default_provider_name() == "qemu"


def test_item4_vboxmanage_runs_in_english_whatever_the_users_locale(fake, monkeypatch):
    monkeypatch.setenv("LANG", "ru_RU.UTF-8")
    monkeypatch.setenv("LC_ALL", "ru_RU.UTF-8")
    monkeypatch.setenv("LANGUAGE", "ru")
    env = vbox.VBoxManage()._env()
    assert (env["LANG"], env["LC_ALL"], "LANGUAGE" in env) == ("C.UTF-8", "C.UTF-8", False)


def test_item4_translated_service_errors_are_classified_by_their_codes(fake, monkeypatch):
    monkeypatch.setenv("FAKEVBOX_VERSION", "7.1.4")
    monkeypatch.setenv("FAKEVBOX_SVC_LANG", "ru")
    runner = vbox.VBoxManage(sleep=lambda s: None)
    with pytest.raises(vbox.VMNotRegistered) as err:
        runner.showvminfo("nosuch")
    assert "Could not find" not in err.value.stderr  # the text really was translated


def test_item7_inaccessible_and_guru_states_have_their_own_advice():
    inaccessible = vbox.VMInfo.from_text('name="<inaccessible>"\nUUID="0b1c0c8e-5ef3-4b89-a4b3-54d1d4a45e88"\n')
    assert inaccessible.vbox_state == "inaccessible"
    error = vbox.state_error("dev", inaccessible)
    assert isinstance(error, vbox.VMInaccessible) and "registervm" in str(error) and "vm.destroy" in str(error)
    guru = vbox.VMInfo.from_text('name="dev"\nVMState="gurumeditation"\n')
    error = vbox.state_error("dev", guru)
    assert isinstance(error, vbox.VMStuck) and "vm.stop" in str(error) and "wait" not in str(error)
    busy = vbox.state_error("dev", vbox.VMInfo.from_text('name="dev"\nVMState="saving"\n'))
    assert "wait a moment" in str(busy)


def test_item2_forwards_from_vagrants_real_7_0_settings_file():
    from conftest import fixture

    rules = vbox.forwards_from_settings(fixture("vbox", "vbox_settings.vagrant_7_0_fixture.xml"))
    assert rules == {
        1: [
            Forward(2222, 22, host_ip="127.0.0.1", name="ssh"),
            Forward(7700, 80, host_ip="", name="tcp7700"),
        ]
    }  # the snapshot's copy of the hardware is not read twice


def test_item3_libslirp_log_lines_are_failed_redirects():
    log = (
        "00:00:01.000000 NAT: Failed to redirect TCP 127.0.0.1:8080 -> 0.0.0.0:80 (Address already in use)\n"
        "00:00:02.000000 drvNATNotifyApplyPortForwardCommand: Port forward modify FAIL! Details: fRemove=0, "
        "fUdp=1, pszHostIp=127.0.0.1, u16HostPort=5353, pszGuestIp=, u16GuestPort=53\n"
        "00:00:03.000000 x: Port forward modify FAIL! Details: fRemove=1, fUdp=0, pszHostIp=, u16HostPort=1, "
        "pszGuestIp=, u16GuestPort=1\n"
    )
    assert vbox.nat_failures(log) == [
        ("tcp", "127.0.0.1", 8080, "Address already in use"),
        ("udp", "127.0.0.1", 5353, "Port forward modify FAIL"),
    ]


def test_item3_verr_nat_redir_setup_is_port_in_use_naming_the_port():
    stderr = (
        "VBoxManage: error: NAT#0: configuration error: failed to set up redirection of 8080 to 80. Probably a "
        "conflict with existing services or other rules (VERR_NAT_REDIR_SETUP).\n"
    )
    error = vbox.classify(["VBoxManage", "startvm", "dev"], 1, stderr)
    assert isinstance(error, PortInUse) and isinstance(error, HypervisorError)
    assert "host port 8080 is already in use" in str(error) and error.exit_code == 3


def test_item6_startvm_success_line_wins_over_exit_1(tmp_path):
    script = tmp_path / "VBoxManage"
    script.write_text("#!/bin/sh\necho 'Waiting for VM \"dev\" to power on...'\n"
                      "echo 'VM \"dev\" has been successfully started.'\nexit 1\n")
    script.chmod(0o755)
    runner = vbox.VBoxManage(path=str(script), sleep=lambda s: None)
    assert "successfully started" in runner.run(["startvm", "dev", "--type", "headless"])
    with pytest.raises(vbox.VBoxError):
        runner.run(["controlvm", "dev", "poweroff"])  # only startvm is read that way
    assert runner.calls == 2  # and nothing was retried


def test_item11_7_0_slot_attribute_keys_are_not_attachments():
    # the 7.0+ key format of VBoxManageInfo.cpp showMediumAttachments ("%ls-tempeject-%d-%d" ...)
    text = (
        '"SATA-0-0"="/vms/boot2docker.iso"\n"SATA-ImageUUID-0-0"="a"\n"SATA-tempeject-0-0"="off"\n'
        '"SATA-IsEjected-0-0"="off"\n"SATA-hot-pluggable-0-0"="off"\n"SATA-nonrotational-0-0"="off"\n'
        '"SATA-discard-0-0"="off"\n"SATA-1-0"="/vms/disk.vmdk"\n"SATA-ImageUUID-1-0"="b"\n'
        '"SATA-hot-pluggable-1-0"="off"\n"SATA-nonrotational-1-0"="off"\n"SATA-discard-1-0"="off"\n'
        '"SATA-2-0"="none"\n'
    )
    info = vbox.VMInfo.from_text(text)
    assert info.storage == {
        ("SATA", 0, 0): "/vms/boot2docker.iso",
        ("SATA", 1, 0): "/vms/disk.vmdk",
        ("SATA", 2, 0): "none",
    }


def test_item11_vagrants_7_0_0_output_parses():
    info = vbox.VMInfo.from_text(sample("showvminfo_machinereadable.vagrant_7_0_0_head.txt"))
    assert (info.name, info.uuid, info.cfg_file, info.memory) == (
        "vagrant-test_default_1665781960041_56631", "MACHINE-UUID", "MACHINE_CONFIG_PATH", 1024
    )
    assert "Encryption:     disabled" not in info.raw and "Encryption" not in " ".join(info.raw)
    nics = vbox.VMInfo.from_text(sample("showvminfo_machinereadable.vagrant_7_x_hostonlynet_nic_fragment.txt"))
    assert nics.nics[2] == "hostonlynetwork" and [f.name for f in nics.nat_forwards()] == ["ssh"]
