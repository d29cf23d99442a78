"""``b2dkit vm.*`` as a user types it, on VirtualBox (the strict fake VBoxManage).

These run the real task layer, lifecycle and VirtualBox provider; only VBoxManage is fake.
The VM is created with --no-start: booting needs a real guest (see test_e2e.py on QEMU).
"""

import json
import socket
import sys

import pytest

import shlex
import subprocess

from b2dkit import machines, paths, tlscerts
from cli import run, run_failing
from conftest import ONE_VBOX_VERSION
from fakevbox import install
from ports import free_port as _free_port




@pytest.fixture
def fake(tmp_path, monkeypatch, vbox_version):
    return install(tmp_path / "fakevbox", monkeypatch)


@pytest.fixture
def iso(boot2docker_iso):
    return boot2docker_iso


@pytest.fixture
def small(tmp_path):
    """default, with a 64 MB disk: the fake really reads every zero-filled byte."""
    path = tmp_path / "small.yaml"
    path.write_text("extends: default\ndisk: 1024\n")
    return f"--profile={path}"


@pytest.fixture
def created(fake, iso, small, capsys):
    run("vm.create", small, "--provider=virtualbox", "--name=dev", f"--iso={iso}", "--no-start")
    capsys.readouterr()
    fake.reset_calls()
    return fake



def test_create_makes_one_vm_within_the_call_budget_and_becomes_active(fake, iso, small, capsys):
    run("vm.create", small, "--provider=virtualbox", "--name=dev", f"--iso={iso}", "--no-start")
    calls = fake.calls()
    assert len(calls) <= 10, [c[0] for c in calls]
    machine = fake.machine("dev")
    assert machine is not None
    assert machines.active_name() == "dev"
    assert "dev created (not started)" in capsys.readouterr().out
    # Running it again converges: still one VM, nothing to do, one call.
    fake.reset_calls()
    run("vm.create", small, "--provider=virtualbox", "--name=dev", f"--iso={iso}", "--no-start")
    assert len(fake.calls()) == 1
    assert list(fake.state()["machines"]) == ["dev"]
    assert "already matches the profile" in capsys.readouterr().out


def test_forward_needs_no_name_and_stays_within_two_calls(created, capsys):
    port = _free_port()
    run("vm.forward", str(port))
    assert len(created.calls()) <= 2
    assert capsys.readouterr().out == f"forwarding 127.0.0.1:{port} -> guest {port}/tcp\n"
    created.reset_calls()
    rules = _forwards(capsys)
    mine = [r for r in rules if r["host_port"] == port]
    assert mine == [{"name": f"tcp-{port}", "proto": "tcp", "host_ip": "127.0.0.1", "host_port": port,
                     "guest_port": port, "guest_ip": ""}]
    # A re-run is a no-op on the hypervisor side.
    created.reset_calls()
    run("vm.forward", str(port))
    assert [c[0] for c in created.calls()] == ["showvminfo"]
    run("vm.unforward", str(port))
    capsys.readouterr()
    assert port not in [r["host_port"] for r in _forwards(capsys)]


@ONE_VBOX_VERSION
@pytest.mark.parametrize("spec", ["70000", "abc", "0", "8000:", "8000/sctp"])
def test_bad_forward_is_one_line_and_calls_nothing(created, capsys, spec):
    code, out = run_failing(capsys, "vm.forward", spec)
    assert code == 2
    err = out.err.strip()
    assert err.startswith("b2dkit: error: invalid") and "\n" not in err
    assert created.calls() == []


@ONE_VBOX_VERSION
def test_docker_port_beyond_loopback_is_refused(created, capsys):
    code, out = run_failing(capsys, "vm.forward", "2376", "--host-ip=0.0.0.0")
    assert code == 2 and "Docker daemon" in out.err
    assert created.calls() == []


def test_busy_host_port_is_named_and_auto_correct_picks_another(created, capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        code, out = run_failing(capsys, "vm.forward", f"{busy}:80")
        assert code == 3 and f"127.0.0.1:{busy}/tcp is already in use" in out.err  # the machine, not the input
        run("vm.forward", f"{busy}:80", "--auto-correct")
        said = capsys.readouterr().out
        assert f"Fixed port collision for 80 => {busy}. Now on port" in said
    rules = _forwards(capsys)
    moved = [r for r in rules if r["guest_port"] == 80]
    assert len(moved) == 1 and 2200 <= moved[0]["host_port"] <= 2250


def test_status_is_one_call_and_reports_the_vm(created, capsys):
    run("vm.status", "--json")
    assert len(created.calls()) == 1
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "dev" and info["state"] == "stopped" and info["active"] is True
    assert any(f["guest_port"] == 22 for f in info["forwards"])
    assert info["disk"].endswith("disk.vmdk")
    run("vm.status")
    text = capsys.readouterr().out
    assert "state:      stopped" in text and "(active)" in text


def test_destroy_keeps_the_disk_and_create_reattaches_it(created, iso, small, capsys):
    disk = machines.paths.vm_dir("dev") / "disk.vmdk"
    assert disk.exists()
    before = disk.read_bytes()
    code, out = run_failing(capsys, "vm.destroy")  # no TTY, no --yes: refuse
    assert code == 2 and "--yes" in out.err and created.machine("dev") is not None
    run("vm.destroy", "--yes")
    assert created.machine("dev") is None and disk.exists()
    assert "kept its disk" in capsys.readouterr().out
    run("vm.create", small, "--provider=virtualbox", "--name=dev", f"--iso={iso}", "--no-start")
    assert created.machine("dev") is not None
    assert disk.read_bytes() == before  # the same disk, not a blank one
    assert "convertfromraw" not in [c[0] for c in created.calls()]
    run("vm.destroy", "--yes", "--purge")
    assert not disk.exists() and created.machine("dev") is None
    code, out = run_failing(capsys, "vm.status")
    assert code == 2 and "no active VM" in out.err


def test_list_marks_the_active_vm(created, iso, tmp_path, capsys):
    other = tmp_path / "other.yaml"  # its own host ports: two VMs may not claim one (the run must succeed)
    other.write_text(f"extends: default\ndisk: 1024\nforwards:\n  - {{host: 2022, remove: true}}\n"
                     f"  - {{host: {_free_port()}, guest: 22}}\n")
    run("vm.create", f"--profile={other}", "--provider=virtualbox", "--name=second", f"--iso={iso}", "--no-start")
    capsys.readouterr()
    run("vm.list", "--json")
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["vms"]}
    assert rows["second"]["active"] and not rows["dev"]["active"]
    assert rows["dev"]["state"] == "stopped" and rows["dev"]["provider"] == "virtualbox"


def test_vm_tasks_without_any_vm_say_what_to_do(fake, capsys):
    code, out = run_failing(capsys, "vm.forward", "8000")
    assert code == 2  # naming no VM is the user's input to fix
    assert out.err.strip() == (
        "b2dkit: error: no active VM (create one with `b2dkit vm.create --profile=NAME`, or pass --name)"
    )


def test_env_needs_the_docker_set_up_or_says_to_use_ssh(created, capsys):
    # No daemon forward yet (vm.start adds it when the guest has Docker): one line saying what to do.
    code, out = run_failing(capsys, "vm.env")
    assert code == 2 and out.err.count("\n") == 1
    assert "`b2dkit vm.start --name dev`" in out.err and "`b2dkit vm.env --ssh`" in out.err
    run("vm.env", "--ssh")
    lines = capsys.readouterr().out.splitlines()
    ssh_port = next(f["host_port"] for f in _forwards(capsys) if f["guest_port"] == 22)
    assert lines[:3] == ["unset DOCKER_TLS_VERIFY", f"export DOCKER_HOST=ssh://docker@127.0.0.1:{ssh_port}",
                         "unset DOCKER_CERT_PATH"]
    assert lines[-1] == '# eval "$(b2dkit vm.env --name dev --ssh)"'


def test_env_prints_the_tls_settings_for_each_shell(created, capsys):
    port = _free_port()
    run("vm.forward", f"{port}:2376")
    certs = paths.vm_dir("dev") / "certs"
    tlscerts.ensure(certs, "dev")  # what vm.start does for a guest with Docker
    capsys.readouterr()
    run("vm.env")
    assert capsys.readouterr().out.splitlines() == [
        "export DOCKER_TLS_VERIFY=1", f"export DOCKER_HOST=tcp://127.0.0.1:{port}",
        f"export DOCKER_CERT_PATH={certs}", "export DOCKER_MACHINE_NAME=dev",
        "# Run this command to configure your shell:", '# eval "$(b2dkit vm.env --name dev)"',
    ]
    run("vm.env", "--shell", "fish")
    out = capsys.readouterr().out.splitlines()
    assert out[1] == f"set -gx DOCKER_HOST 'tcp://127.0.0.1:{port}';" and out[-1] == (
        "# eval (b2dkit vm.env --name dev --shell fish)")
    run("vm.env", "--shell", "powershell")
    out = capsys.readouterr().out.splitlines()
    assert out[2] == f"$Env:DOCKER_CERT_PATH = '{certs}'"
    assert out[-1] == "# & b2dkit vm.env --name dev --shell powershell | Invoke-Expression"
    run("vm.env", "--shell", "cmd")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "SET DOCKER_TLS_VERIFY=1" and out[-2].startswith("REM ")
    run("vm.env", "--unset")
    out = capsys.readouterr().out.splitlines()
    assert out[:4] == ["unset DOCKER_TLS_VERIFY", "unset DOCKER_HOST", "unset DOCKER_CERT_PATH",
                       "unset DOCKER_MACHINE_NAME"]
    run("vm.env", "--unset", "--shell", "powershell")
    assert capsys.readouterr().out.startswith("Remove-Item Env:\\DOCKER_TLS_VERIFY")
    code, out = run_failing(capsys, "vm.env", "--shell", "tcsh")
    assert code == 2 and "unknown shell 'tcsh'" in out.err


def test_env_quotes_a_cert_path_with_spaces(fake, iso, small, tmp_path, monkeypatch, capsys):
    """macOS keeps data under "Application Support": the eval'd lines must keep the path whole."""
    monkeypatch.setenv("B2DKIT_HOME", str(tmp_path / "Application Support" / "b2dkit"))
    run("vm.create", small, "--provider=virtualbox", "--name=dev", f"--iso={iso}", "--no-start")
    run("vm.forward", f"{_free_port()}:2376")
    certs = paths.vm_dir("dev") / "certs"
    tlscerts.ensure(certs, "dev")
    capsys.readouterr()
    run("vm.env")
    lines = capsys.readouterr().out
    assert f"export DOCKER_CERT_PATH={shlex.quote(str(certs))}\n" in lines and " " in str(certs)
    shown = subprocess.run(["sh", "-c", lines + 'printf %s "$DOCKER_CERT_PATH"'], capture_output=True, text=True)
    assert shown.stdout == str(certs)


def _forwards(capsys):
    run("vm.forwards", "--json")
    return json.loads(capsys.readouterr().out)["forwards"]


@ONE_VBOX_VERSION
@pytest.mark.parametrize("timeout", ["0", "-5", "abc", "nan", "inf", ""])
def test_stop_refuses_a_timeout_that_would_skip_the_guest_shutdown(created, capsys, timeout):
    code, out = run_failing(capsys, "vm.stop", f"--timeout={timeout}")
    err = out.err.strip()
    assert code == 2 and err.startswith("b2dkit: error: --timeout must be") and "\n" not in err
    assert "Traceback" not in out.err and created.calls() == []


@ONE_VBOX_VERSION
@pytest.mark.parametrize("name", ["", " ", "\t"])
def test_an_empty_name_is_an_error_never_the_active_vm(created, capsys, name):
    disk = machines.paths.vm_dir("dev") / "disk.vmdk"
    for argv in (["vm.destroy", f"--name={name}", "--purge", "--yes"], ["vm.stop", f"--name={name}"],
                 ["vm.status", f"--name={name}"], ["vm.forward", "8000", f"--name={name}"]):
        code, out = run_failing(capsys, *argv)
        assert code == 2 and "--name is empty" in out.err, argv
    assert created.machine("dev") is not None and disk.exists() and machines.active_name() == "dev"
    assert created.calls() == []


def test_a_stop_that_must_power_off_says_so(created, monkeypatch):
    from b2dkit import lifecycle

    machine = machines.resolve("dev")
    lifecycle.provider_for(machine).start()
    monkeypatch.setenv("FAKEVBOX_ACPI_IGNORE", "1")
    said = []
    out = lifecycle.stop(machine, log=said.append, timeout=0.5)
    assert out.done == ["stopped VM dev (powered off)"]
    # No guest answers SSH here: the flush is tried, and the user is told what that means.
    assert any(line.startswith("warning: could not flush the guest's disks") for line in said)
    assert len(out.warnings) == 1 and "powered off" in out.warnings[0] and "may be lost" in out.warnings[0]
    assert ["controlvm", "dev", "poweroff"] in [c[:3] for c in created.calls()]


# -- issue #12 at the command line -----------------------------------------------------------------


def test_item1_a_kept_disk_can_be_purged_after_the_vm_is_gone(created, capsys):
    disk = machines.paths.vm_dir("dev") / "disk.vmdk"
    run("vm.destroy", "--yes")
    assert disk.exists()
    created.reset_calls()
    run("vm.destroy", "--yes", "--purge", "--name=dev")
    assert not disk.exists() and not machines.paths.vm_dir("dev").exists()
    assert ["closemedium", "disk", str(disk)] in created.calls()  # out of the media registry too
    assert all(m["location"] != str(disk) for m in created.state().get("media", {}).values())
    code, out = run_failing(capsys, "vm.destroy", "--yes", "--purge", "--name=dev")  # nothing left
    assert code == 2 and "no b2dkit VM named 'dev'" in out.err


def test_item1_a_kept_disk_is_never_deleted_without_purge(created, capsys):
    disk = machines.paths.vm_dir("dev") / "disk.vmdk"
    run("vm.destroy", "--yes")
    code, out = run_failing(capsys, "vm.destroy", "--yes", "--name=dev")
    assert code == 2 and "no b2dkit VM named 'dev'" in out.err and disk.exists()


def test_item9_profile_host_loopback_creates_on_every_version(fake, iso, tmp_path, capsys, vbox_version):
    profile = tmp_path / "loop.yaml"
    profile.write_text("extends: default\ndisk: 1024\nhost_loopback: true\n")
    run("vm.create", f"--profile={profile}", "--provider=virtualbox", "--name=dev", f"--iso={iso}", "--no-start")
    reachable = fake.machine("dev")["nics"]["1"]["localhost_reachable"]
    assert reachable == (None if vbox_version.startswith("6.") else "on")


@ONE_VBOX_VERSION
def test_item10_explicit_virtualbox_on_an_arm64_mac_is_one_line_saying_why(fake, iso, small, capsys, monkeypatch):
    import platform

    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    code, out = run_failing(capsys, "vm.create", small, "--provider=virtualbox", "--name=dev", f"--iso={iso}",
                            "--no-start")
    err = out.err.strip()
    assert code == 3 and "arm64" in err and "x86_64" in err and "\n" not in err and "Traceback" not in err
    assert fake.calls() == [] and fake.machine("dev") is None


def test_item4_create_and_status_work_for_a_russian_user(fake, iso, small, capsys, monkeypatch):
    """LANG/LC_ALL=ru_RU.UTF-8, and a VBoxSVC that a Russian GUI started: nothing is misread."""
    monkeypatch.setenv("LANG", "ru_RU.UTF-8")
    monkeypatch.setenv("LC_ALL", "ru_RU.UTF-8")
    monkeypatch.setenv("FAKEVBOX_SVC_LANG", "ru")
    run("vm.create", small, "--provider=virtualbox", "--name=dev", f"--iso={iso}", "--no-start")
    assert "dev created (not started)" in capsys.readouterr().out
    run("vm.status", "--json")
    assert json.loads(capsys.readouterr().out)["state"] == "stopped"


@pytest.fixture(params=["virtualbox", "qemu"])
def any_provider(request, tmp_path, monkeypatch, iso, small, capsys):
    """A stopped VM ``dev`` on each provider (VirtualBox through the fake VBoxManage)."""
    if request.param == "virtualbox":
        install(tmp_path / "fakevbox", monkeypatch)
    run("vm.create", small, f"--provider={request.param}", "--name=dev", f"--iso={iso}", "--no-start")
    capsys.readouterr()
    return request.param


def _rules(capsys):
    capsys.readouterr()
    run("vm.forwards", "--json")
    return json.loads(capsys.readouterr().out)["forwards"]


def test_the_ssh_route_is_never_replaced_or_removed_without_force(any_provider, capsys):
    before = _rules(capsys)
    (ssh,) = [r for r in before if r["guest_port"] == 22]
    code, out = run_failing(capsys, "vm.forward", f"{ssh['host_port']}:8000")
    assert code == 3 and "SSH route" in out.err and "unforward" not in out.err
    assert _rules(capsys) == before
    code, out = run_failing(capsys, "vm.unforward", str(ssh["host_port"]))
    assert code == 2 and "SSH route" in out.err and "--force" in out.err
    assert _rules(capsys) == before
    run("vm.unforward", str(ssh["host_port"]), "--force")
    assert [r for r in _rules(capsys) if r["guest_port"] == 22] == []


def test_a_forward_on_a_port_the_vm_already_forwards_is_a_clash(any_provider, capsys):
    port = _free_port()
    run("vm.forward", f"{port}:80")
    before = _rules(capsys)
    code, out = run_failing(capsys, "vm.forward", f"{port}:81")
    assert code == 3 and f"vm.unforward {port}" in out.err
    assert _rules(capsys) == before


def test_a_create_refused_on_a_port_clash_records_nothing_and_keeps_the_active_vm(any_provider, iso, small,
                                                                                  capsys):
    # ``small`` forwards ssh on 2022, which ``dev`` already has: the second create must fail cleanly.
    code, out = run_failing(capsys, "vm.create", small, f"--provider={any_provider}", "--name=second",
                            f"--iso={iso}", "--no-start")
    assert code == 3 and "'dev'" in out.err
    assert machines.active_name() == "dev"
    assert [m.name for m in machines.all_machines()] == ["dev"]
    assert not (machines.paths.vm_dir("second") / machines.RECORD).exists()
    run("vm.list", "--json")
    assert [r["name"] for r in json.loads(capsys.readouterr().out)["vms"]] == ["dev"]


def test_a_create_the_hypervisor_refuses_leaves_no_record_of_a_vm_that_does_not_exist(fake, iso, small,
                                                                                        capsys, monkeypatch):
    monkeypatch.setenv("FAKEVBOX_FAULTS", "createvm=exit0-error*1")  # VirtualBox refuses the first createvm
    code, out = run_failing(capsys, "vm.create", small, "--provider=virtualbox", "--name=dev", f"--iso={iso}",
                            "--no-start")
    assert code == 3 and "VT-x" in out.err
    assert machines.all_machines() == [] and machines.active_name() is None
    run("vm.create", small, "--provider=virtualbox", "--name=dev", f"--iso={iso}", "--no-start")  # then it works
    assert machines.active_name() == "dev"


@pytest.mark.parametrize("content", [b"", b"junk" * 1000, b"\0" * 40960])
def test_a_source_iso_that_cannot_boot_is_refused_even_without_a_remaster(fake, small, tmp_path, capsys,
                                                                         content):
    junk = tmp_path / "junk.iso"
    junk.write_bytes(content)
    code, out = run_failing(capsys, "vm.create", small, "--provider=virtualbox", "--name=dev", f"--iso={junk}",
                            "--no-start")
    assert code == 2 and len(out.err.strip().splitlines()) == 1 and "junk.iso" in out.err
    assert "Traceback" not in out.err and fake.machine("dev") is None
    assert not (machines.paths.vm_dir("dev") / "boot2docker.iso").exists() and machines.all_machines() == []
    assert junk.read_bytes() == content  # the user's file is never touched


# -- hints that work ----------------------------------------------------------------------------

def _own_ports_profile(tmp_path, ssh_port):
    path = tmp_path / "own.yaml"
    path.write_text(f"extends: default\ndisk: 1024\nforwards:\n  - {{host: 2022, remove: true}}\n"
                    f"  - {{host: {ssh_port}, guest: 22}}\n")
    return f"--profile={path}"


def test_a_busy_port_at_start_never_suggests_a_flag_vm_start_lacks(fake, iso, tmp_path, capsys):
    port = _free_port()
    run("vm.create", _own_ports_profile(tmp_path, port), "--provider=virtualbox", "--name=dev", f"--iso={iso}",
        "--no-start")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        code, out = run_failing(capsys, "vm.start")
        assert code == 3 and "already in use" in out.err and "--auto-correct" not in out.err
        code, out = run_failing(capsys, "vm.forward", f"{port}:8000")
        assert code == 3 and "--auto-correct" in out.err  # vm.forward has it


def test_create_no_start_on_a_running_vm_does_not_say_not_started(created, iso, small, capsys):
    import subprocess

    subprocess.run([str(created.exe), "startvm", "dev", "--type", "headless"], check=True, env=created.env(),
                   capture_output=True)
    capsys.readouterr()
    run("vm.create", small, "--provider=virtualbox", "--name=dev", f"--iso={iso}", "--no-start")
    out = capsys.readouterr().out
    assert "not started" not in out and "running" in out


def test_ctrl_c_while_waiting_for_ssh_says_the_vm_keeps_running(created, monkeypatch, capsys):
    from b2dkit import guest

    def interrupted(*a, **kw):
        raise KeyboardInterrupt  # the user's Ctrl-C while the guest boots

    monkeypatch.setattr(guest, "wait_for_session", interrupted)
    code, out = run_failing(capsys, "vm.start")
    assert code == 130 and "keeps running" in out.err and "nothing half-done" not in out.err
    assert "b2dkit vm.stop" in out.err


def test_destroying_a_vm_whose_disk_is_gone_never_says_none(iso, small, capsys):
    from b2dkit.hypervisors import get_provider

    run("vm.create", small, "--provider=qemu", "--name=dev", f"--iso={iso}", "--no-start")
    get_provider("qemu", "dev").disk_path().unlink()  # the user deleted it by hand
    capsys.readouterr()
    run("vm.destroy", "--yes")
    out = capsys.readouterr().out
    assert "None" not in out and "destroyed VM dev" in out


def test_a_vm_whose_definition_is_damaged_is_listed_so_and_can_still_be_destroyed(iso, small, capsys):
    from b2dkit import paths

    run("vm.create", small, "--provider=qemu", "--name=dev", f"--iso={iso}", "--no-start")
    (paths.vm_dir("dev") / "machine.json").write_text('{"format": 1')
    capsys.readouterr()
    run("vm.list", "--json")
    (row,) = json.loads(capsys.readouterr().out)["vms"]
    assert "damaged" in row["state"]  # not "stopped" until the next start fails
    run("vm.destroy", "--yes")
    assert "kept its disk" in capsys.readouterr().out
    run("vm.list", "--json")
    assert json.loads(capsys.readouterr().out)["vms"] == []  # a kept disk is not a broken VM


def test_an_iso_that_is_not_a_regular_file_is_called_that(fake, small, capsys):
    code, out = run_failing(capsys, "vm.create", small, "--provider=virtualbox", "--name=dev", "--iso=/dev/null",
                            "--no-start")
    assert code == 2 and "/dev/null is not a regular file" in out.err


def test_a_taken_docker_port_moves_the_stopped_vms_daemon_forward_and_says_so(created, capsys):
    """What vm.start does before it boots: the same remove + add VirtualBox gets for any rule while off."""
    from b2dkit import lifecycle

    old = _free_port()
    run("vm.forward", f"{old}:2376")
    capsys.readouterr()
    machine = machines.load("dev")
    provider = lifecycle.provider_for(machine)
    said = []
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", old))
        holder.listen()
        rules = lifecycle._move_docker_forward(machine, provider, provider.forwards(), lifecycle.Outcome(),
                                               said.append)
    (new,) = [f for f in _forwards(capsys) if f["guest_port"] == 2376]
    assert new["host_port"] != old and new["host_ip"] == "127.0.0.1"
    assert [f.host_port for f in rules if f.guest_port == 2376] == [new["host_port"]]
    assert len(said) == 1 and f"host port 127.0.0.1:{old} is in use" in said[0]
    assert f"moves to 127.0.0.1:{new['host_port']} → 2376/tcp" in said[0]


def test_vm_docker_on_a_stopped_vm_or_one_without_docker_is_one_line(created, capsys):
    code, out = run_failing(capsys, "vm.docker", "--restart")
    assert code == 2 and out.err.count("\n") == 1 and "is stopped, so is its Docker daemon" in out.err
    code, out = run_failing(capsys, "vm.docker")
    assert code == 2 and out.err.count("\n") == 1 and "has no Docker daemon set up" in out.err
    run("vm.forward", f"{_free_port()}:2376")
    capsys.readouterr()
    run("vm.docker")
    assert capsys.readouterr().out.strip() == "not reachable (the VM is stopped)"
