"""``b2dkit vm.*`` as a user types it, on VirtualBox (the strict fake VBoxManage).

These run the real task layer, lifecycle and VirtualBox provider; only VBoxManage is fake.
The VM is created with --no-start: booting needs a real guest (see test_e2e.py on QEMU).
"""

import json
import socket

import pytest

import shlex
import subprocess

from b2dkit import machines, paths, tlscerts
from cli import run, run_failing
from fakevbox import install




@pytest.fixture
def fake(tmp_path, monkeypatch):
    return install(tmp_path / "fakevbox", monkeypatch)


@pytest.fixture
def iso(tmp_path):
    path = tmp_path / "boot2docker.iso"
    path.write_bytes(b"\0" * 4096)
    return path


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


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    run("vm.forwards", "--json")
    rules = json.loads(capsys.readouterr().out)
    mine = [r for r in rules if r["host_port"] == port]
    assert mine == [{"name": f"tcp-{port}", "proto": "tcp", "host_ip": "127.0.0.1", "host_port": port,
                     "guest_port": port, "guest_ip": ""}]
    # A re-run is a no-op on the hypervisor side.
    created.reset_calls()
    run("vm.forward", str(port))
    assert [c[0] for c in created.calls()] == ["showvminfo"]
    run("vm.unforward", str(port))
    capsys.readouterr()
    run("vm.forwards", "--json")
    assert port not in [r["host_port"] for r in json.loads(capsys.readouterr().out)]


@pytest.mark.parametrize("spec", ["70000", "abc", "0", "8000:", "8000/sctp"])
def test_bad_forward_is_one_line_and_calls_nothing(created, capsys, spec):
    code, out = run_failing(capsys, "vm.forward", spec)
    assert code == 2
    err = out.err.strip()
    assert err.startswith("b2dkit: error: invalid") and "\n" not in err
    assert created.calls() == []


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
    run("vm.forwards", "--json")
    rules = json.loads(capsys.readouterr().out)
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
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
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
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("timeout", ["0", "-5", "abc", "nan", "inf", ""])
def test_stop_refuses_a_timeout_that_would_skip_the_guest_shutdown(created, capsys, timeout):
    code, out = run_failing(capsys, "vm.stop", f"--timeout={timeout}")
    err = out.err.strip()
    assert code == 2 and err.startswith("b2dkit: error: --timeout must be") and "\n" not in err
    assert "Traceback" not in out.err and created.calls() == []


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
