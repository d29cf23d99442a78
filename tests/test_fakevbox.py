"""The fake VBoxManage checked against the reference texts and samples, so provider tests mean something."""

import re
import socket
import subprocess
import time

import pytest

import fakevbox
from conftest import shared_reference

from b2dkit import disk
from b2dkit.hypervisors.virtualbox import vboxmanage as vbox
from b2dkit.hypervisors.base import VMState


@pytest.fixture
def fake(tmp_path):
    return fakevbox.install(tmp_path / "fakevbox")


@pytest.fixture
def run(fake):
    def run(*args, stdin=b"", env=None):
        proc = subprocess.run(
            [str(fake.exe), *map(str, args)],
            input=stdin,
            capture_output=True,
            env={**fake.env(), **(env or {})},
        )
        return proc.returncode, proc.stdout.decode(), proc.stderr.decode()

    return run


def sample(name):
    return shared_reference("vbox-samples", name).read_text()


def stderr_block(marker):
    """The real stderr lines that follow an annotation containing ``marker``."""
    lines = sample("errors.vboxmanage_stderr.txt").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and marker in line)
    out = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            if out:
                break
            continue
        out.append(line)
    return out


@pytest.fixture
def vm(run, fake, tmp_path):
    """A VM named b2d like b2dkit makes one: SATA, ISO on port 0, disk on port 1, one NAT rule."""
    iso = tmp_path / "boot2docker.iso"
    iso.write_bytes(b"iso")
    assert (
        run(
            "createvm",
            "--name",
            "b2d",
            "--ostype",
            "Linux26_64",
            "--register",
            "--basefolder",
            tmp_path / "vms",
        )[0]
        == 0
    )
    assert (
        run("modifyvm", "b2d", "--memory", "1024", "--cpus", "2", "--natpf1", "ssh,tcp,127.0.0.1,2022,,22")[0]
        == 0
    )
    assert run("storagectl", "b2d", "--name", "SATA", "--add", "sata", "--portcount", "4")[0] == 0
    assert (
        run(
            "storageattach",
            "b2d",
            "--storagectl",
            "SATA",
            "--port",
            "0",
            "--device",
            "0",
            "--type",
            "dvddrive",
            "--medium",
            iso,
        )[0]
        == 0
    )
    vmdk = tmp_path / "disk.vmdk"
    assert run("convertfromraw", "stdin", vmdk, 1 << 20, "--format", "VMDK", stdin=b"\0" * (1 << 20))[0] == 0
    assert (
        run(
            "storageattach",
            "b2d",
            "--storagectl",
            "SATA",
            "--port",
            "1",
            "--device",
            "0",
            "--type",
            "hdd",
            "--medium",
            vmdk,
        )[0]
        == 0
    )
    return {"iso": iso, "vmdk": vmdk, "folder": tmp_path / "vms" / "b2d"}


# -- output formats ---------------------------------------------------------------------------------


def test_createvm_stdout_has_the_sample_shape(run, tmp_path):
    code, out, err = run("createvm", "--name", "boot2docker-vm", "--register", "--basefolder", tmp_path)
    assert code == 0 and err == ""
    shape = re.sub(
        r"UUID: \S+",
        "UUID: <uuid>",
        re.sub(r"'/.*\.vbox'", "'<cfg>'", sample("createvm_register.stdout.txt")),
    )
    assert re.sub(r"UUID: \S+", "UUID: <uuid>", re.sub(r"'/.*\.vbox'", "'<cfg>'", out)) == shape
    assert vbox.parse_createvm(out)[1] == str(tmp_path / "boot2docker-vm" / "boot2docker-vm.vbox")


def test_showvminfo_has_the_samples_key_shapes_and_order(run, vm):
    code, out, _ = run("showvminfo", "b2d", "--machinereadable")
    assert code == 0
    saved = sample("showvminfo_machinereadable.saved_state.go-virtualbox.out")
    ref_keys = [k for k, _ in vbox.parse_pairs(saved)]
    keys = [k for k, _ in vbox.parse_pairs(out)]
    common = [k for k in keys if k in ref_keys]
    assert len(common) > 60
    assert common == [k for k in ref_keys if k in common]  # same relative order as real output
    # bare numbers and quoted strings exactly where the sample has them
    for line in saved.splitlines():
        key = line.split("=", 1)[0]
        if key in ("memory", "cpus", "vram", "monitorcount"):
            assert re.search(rf"^{key}=\d+$", out, re.M)
        elif key in ("VMState", "CfgFile", "UUID", "natnet1", "nic1"):
            assert re.search(rf'^{key}="[^"]*"$', out, re.M)
    assert re.search(r'^"SATA-0-0"="/.*boot2docker\.iso"$', out, re.M)
    assert re.search(r'^"SATA-ImageUUID-1-0"="[0-9a-f-]{36}"$', out, re.M)
    assert '"SATA-2-0"="none"' in out
    info = vbox.VMInfo.from_text(out)
    assert (info.state, info.memory, info.cpus) == (VMState.STOPPED, 1024, 2)
    assert info.medium("SATA", 1) == str(vm["vmdk"])
    assert [f.name for f in info.nat_forwards()] == ["ssh"]


def test_forwarding_lines_are_ordered_by_name(run, vm):
    run("modifyvm", "b2d", "--natpf1", "aaa,udp,,53,,53", "--natpf1", "zzz,tcp,127.0.0.1,9,,9")
    out = run("showvminfo", "b2d", "--machinereadable")[1]
    assert re.findall(r'^Forwarding\((\d)\)="(\w+),', out, re.M) == [("0", "aaa"), ("1", "ssh"), ("2", "zzz")]
    assert 'Forwarding(0)="aaa,udp,,53,,53"' in out  # empty IPs stay empty


def test_list_startvm_and_poweroff_match_the_transcript(run, vm, fake):
    transcript = sample("vboxmanage_session_transcript.windows.txt").replace("AlmaLinux9", "b2d")
    assert run("list", "runningvms")[1] == ""
    code, out, _ = run("startvm", "b2d", "--type", "headless")
    assert code == 0 and out in transcript
    uuid = fake.machine("b2d")["uuid"]
    assert run("list", "runningvms")[1] == f'"b2d" {{{uuid}}}\n'
    assert re.fullmatch(r'"(.+)" \{([0-9a-f-]+)\}\n', run("list", "vms")[1])
    code, out, _ = run("controlvm", "b2d", "poweroff")
    assert code == 0 and out.strip() in transcript.splitlines()


def test_version(run):
    code, out, _ = run("--version")
    assert code == 0 and vbox.parse_version(out) == (7, 0, 20)


# -- error texts and exit codes ---------------------------------------------------------------------


def test_not_found_is_the_reference_text(run):
    ref = stderr_block("VM not found")
    code, _, err = run("showvminfo", "vmaww_shucks", "--machinereadable")
    assert code == 1
    lines = err.splitlines()
    assert lines[0] == ref[0] and lines[1] == ref[1]
    assert re.fullmatch(
        r'VBoxManage: error: Context: "FindMachine\(.*\)" at line \d+ of file VBoxManageInfo\.cpp', lines[2]
    )


def test_session_lock_on_a_running_vm(run, vm):
    ref = [line.replace("'Ubuntu'", "'b2d'") for line in stderr_block("Session lock")]
    run("startvm", "b2d", "--type", "headless")
    code, _, err = run("modifyvm", "b2d", "--memory", "2048")
    assert code == 1 and err.splitlines()[0] == ref[0]
    assert err.splitlines()[2].startswith(
        'VBoxManage: error: Context: "LockMachine(a->session, LockType_Write)"'
    )
    for argv in (
        ["storagectl", "b2d", "--name", "IDE", "--add", "ide"],
        ["storageattach", "b2d", "--storagectl", "SATA", "--port", "1", "--device", "0", "--medium", "none"],
    ):
        code, _, err = run(*argv)
        assert code == 1 and err.splitlines()[0] == ref[0]
    code, _, err = run("unregistervm", "b2d", "--delete")
    assert code == 1 and "while it is locked" in err
    assert isinstance(vbox.classify(["V", "unregistervm"], code, err), vbox.VBoxLocked)
    code, _, err = run("startvm", "b2d")
    assert code == 1 and "is already locked by a session (or being locked or unlocked)" in err


def test_nat_rule_errors_are_the_reference_texts(run, vm):
    exists = [line.replace("VBoxManage.exe:", "VBoxManage:") for line in stderr_block("natpf add")]
    code, _, err = run("modifyvm", "b2d", "--natpf1", "ssh,tcp,127.0.0.1,2999,,22")
    assert code == 1 and err.splitlines()[:2] == exists[:2]
    run("startvm", "b2d", "--type", "headless")
    code, _, err = run("controlvm", "b2d", "natpf1", "ssh,tcp,127.0.0.1,2999,,22")
    assert code == 1 and err.splitlines()[0] == exists[0]
    wrapped = stderr_block("delete <name> for a rule that does not exist")
    unwrapped = [wrapped[0] + wrapped[1], wrapped[2] + wrapped[3]]  # the terminal wrapped them
    code, _, err = run("controlvm", "b2d", "natpf1", "delete", "nosuch")
    assert code == 1
    assert err.splitlines()[0] == unwrapped[0].replace("VBoxManage.exe:", "VBoxManage:")
    assert err.splitlines()[1] == unwrapped[1].replace("VBoxManage.exe:", "VBoxManage:")


def test_syntax_errors_exit_2_and_change_nothing(run, vm, fake):
    before = fake.machine("b2d")
    for argv in (
        ["frobnicate"],
        ["modifyvm", "b2d", "--memory", "64", "--no-such-option", "x"],
        ["startvm", "b2d", "--type", "warp"],
        ["list", "everything"],
        ["createvm"],
    ):
        code, _, err = run(*argv)
        assert code == 2 and "VBoxManage: error:" in err, argv
    assert fake.machine("b2d") == before  # modifyvm failed half-way: nothing saved


def test_live_natpf_needs_a_running_vm_and_modifyvm_a_stopped_one(run, vm):
    code, _, err = run("controlvm", "b2d", "natpf1", "web,tcp,127.0.0.1,8080,,80")
    assert code == 1 and err == "VBoxManage: error: Machine 'b2d' is not currently running\n"
    run("startvm", "b2d", "--type", "headless")
    assert run("controlvm", "b2d", "natpf1", "web,tcp,127.0.0.1,8080,,80")[0] == 0
    assert run("controlvm", "b2d", "natpf1", "delete", "web")[0] == 0
    assert run("modifyvm", "b2d", "--natpf1", "delete", "ssh")[0] == 1


# -- data: disks, conversion ---------------------------------------------------------------------


def test_unregistervm_delete_removes_hard_disks_not_dvds(run, vm):
    assert run("unregistervm", "b2d", "--delete")[0] == 0
    assert not vm["vmdk"].exists()
    assert vm["iso"].exists()
    assert not vm["folder"].exists()  # .vbox, Logs and the emptied folder
    assert run("list", "vms")[1] == ""


def test_detached_disk_survives_unregistervm_delete(run, vm):
    assert (
        run(
            "storageattach", "b2d", "--storagectl", "SATA", "--port", "1", "--device", "0", "--medium", "none"
        )[0]
        == 0
    )
    assert run("unregistervm", "b2d", "--delete")[0] == 0
    assert vm["vmdk"].exists()


def test_convertfromraw_demands_exactly_bytes(run, tmp_path):
    header = disk.header_tar("ssh-ed25519 AAAAC3Nza test@b2dkit")
    size = 2 << 20
    stream = header + bytes(size - len(header))
    for name, data in (("short", stream[:-1]), ("long", stream + b"\0")):
        out = tmp_path / f"{name}.vmdk"
        code, _, err = run("convertfromraw", "stdin", out, size, "--format", "VMDK", stdin=data)
        assert code == 1 and "VBoxManage: error:" in err and not out.exists(), name
    out = tmp_path / "ok.vmdk"
    code, stdout, _ = run("convertfromraw", "stdin", out, size, "--format", "VMDK", stdin=stream)
    assert code == 0 and "Converting from raw image" in stdout
    meta, kept = fakevbox.read_disk(out)
    assert meta["size"] == size and not meta["nonzero_after_header"]
    assert disk.has_magic(kept) and b"test@b2dkit" in kept
    code, _, err = run("convertfromraw", "stdin", out, size, "--format", "VMDK", stdin=stream)
    assert code == 1 and "VERR_ALREADY_EXISTS" in err


# -- running: ports, ACPI ---------------------------------------------------------------------------


def test_startvm_succeeds_with_a_taken_port_and_logs_the_real_line(run, vm):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run("modifyvm", "b2d", "--natpf1", f"web,tcp,127.0.0.1,{port},,80")
        code, out, _ = run("startvm", "b2d", "--type", "headless")
    assert code == 0 and "successfully started" in out
    log = (vm["folder"] / "Logs" / "VBox.log").read_text()
    assert vbox.nat_failures(log) == [("tcp", "127.0.0.1", port, "Address already in use")]
    real = [line for line in sample("errors.vboxmanage_stderr.txt").splitlines() if line.startswith("NAT:")][
        0
    ]
    shape = re.compile(r"NAT: failed to redirect TCP [\d.]+:\d+ -> [\d.]+:\d+", re.I)
    assert shape.match(real) and shape.search(log)


def test_acpi_button_powers_off_after_the_delay(run, vm):
    run("startvm", "b2d", "--type", "headless")
    assert run("controlvm", "b2d", "acpipowerbutton", env={"FAKEVBOX_ACPI_DELAY": "0.3"})[0] == 0
    assert 'VMState="running"' in run("showvminfo", "b2d", "--machinereadable")[1]
    time.sleep(0.35)
    assert 'VMState="poweroff"' in run("showvminfo", "b2d", "--machinereadable")[1]
    assert run("controlvm", "b2d", "poweroff")[0] == 1  # not running any more


def test_call_log_and_fault_injection(run, fake):
    env = {"FAKEVBOX_FAULTS": "list=not-ready*2"}
    assert [run("list", "vms", env=env)[0] for _ in range(3)] == [1, 1, 0]
    assert fake.calls() == [["list", "vms"]] * 3
