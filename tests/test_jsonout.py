"""``--json`` of vm.status, vm.list, vm.forwards, vm.mounts, doctor and profile.show: real output
validated against the shipped, versioned JSON Schemas (fake VBoxManage and the QEMU provider,
VMs created with --no-start; the running guest is validated in test_e2e.py)."""

import json
import shutil

import pytest
from jsonschemas import jsonschema, validate, validator

from b2dkit import jsonout
from b2dkit.main import make_program
from cli import task
from fakevbox import install


def run_json(capsys, *argv, code=0):
    got, out = task(capsys, *argv)
    assert got == code, out.err
    return json.loads(out.out)


@pytest.fixture
def vms(tmp_path, monkeypatch, capsys, boot2docker_iso):
    """``vb`` on the fake VirtualBox (forwards added, one mount) and ``qm`` on QEMU, both not started."""
    install(tmp_path / "fv", monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    iso = tmp_path / "b2d.iso"
    shutil.copyfile(boot2docker_iso, iso)
    vb = tmp_path / "vb.yaml"
    vb.write_text("extends: default\ndisk: 1024\npersistent_dirs: [/mnt/sda1/dev]\n"  # no boot codes: no remaster
                  "mounts:\n  - {guest: /mnt/sda1/dev, host: ~/workspace/dev}\n")
    qm = tmp_path / "qm.yaml"
    qm.write_text(f"extends: {vb}\nprovider: qemu\nforwards:\n  - {{host: 2022, remove: true}}\n"
                  "  - {host: 2122, guest: 22}\n")
    for name, prof, provider in (("qm", qm, "qemu"), ("vb", vb, "virtualbox")):
        make_program().run(["b2dkit", "vm.create", f"--profile={prof}", f"--provider={provider}", f"--name={name}",
                            f"--iso={iso}", "--no-start"], exit=False)
    make_program().run(["b2dkit", "vm.forward", "5353:53/udp", "--name=vb"], exit=False)
    capsys.readouterr()


def test_every_schema_is_a_valid_json_schema_with_the_current_version():
    for kind in jsonout.KINDS:
        schema = jsonout.load_schema(kind)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$id"].endswith(f"/v{jsonout.SCHEMA_VERSION}/{kind}.schema.json")
    assert sorted(p.name for p in jsonout.SCHEMA_DIR.glob("*.json")) == sorted(
        [f"{kind}.schema.json" for kind in jsonout.KINDS] + ["common.schema.json"])


@pytest.mark.parametrize("name", ["vb", "qm"])
def test_vm_status_list_forwards_and_mounts_match_their_schemas(vms, capsys, name):
    status = run_json(capsys, "vm.status", f"--name={name}", "--json")
    validate("vm.status", status)
    assert status["schema_version"] == 1 and status["name"] == name and status["state"] == "stopped"
    assert status["mounts"] and status["mounts"][0]["status"] == "not mounted"
    forwards = run_json(capsys, "vm.forwards", f"--name={name}", "--json")
    validate("vm.forwards", forwards)
    assert forwards["name"] == name and {f["guest_port"] for f in forwards["forwards"]} >= {22}
    mounts = run_json(capsys, "vm.mounts", f"--name={name}", "--json")
    validate("vm.mounts", mounts)
    assert [m["guest"] for m in mounts["mounts"]] == ["/mnt/sda1/dev"]
    listing = run_json(capsys, "vm.list", "--json")
    validate("vm.list", listing)
    assert sorted((vm["name"], vm["provider"], vm["active"]) for vm in listing["vms"]) == [
        ("qm", "qemu", False), ("vb", "virtualbox", True)]


def test_udp_forwards_are_in_the_schema_too(vms, capsys):
    forwards = run_json(capsys, "vm.forwards", "--name=vb", "--json")["forwards"]
    assert {"name": "udp-5353", "proto": "udp", "host_ip": "127.0.0.1", "host_port": 5353, "guest_ip": "",
            "guest_port": 53} in forwards


@pytest.mark.parametrize("profile", ["default", "cst", "demo"])
def test_profile_show_matches_its_schema(profile, capsys):
    shown = run_json(capsys, "profile.show", f"--profile={profile}", "--json")
    validate("profile.show", shown)
    assert shown["profile"] == profile and shown["chain"][0].endswith(f"{profile}.yaml")


def test_doctor_matches_its_schema_when_it_passes_and_when_it_fails(tmp_path, monkeypatch, capsys):
    fake = install(tmp_path / "fv", monkeypatch)
    report = run_json(capsys, "doctor", "--profile=default", "--provider=virtualbox", "--json")
    validate("doctor", report)
    assert report["ok"] is True and report["provider"] == "virtualbox"
    monkeypatch.setenv("PATH", str(fake.bin))  # VirtualBox, but no ssh client
    monkeypatch.setattr("b2dkit.install.as_root", lambda: False)
    report = run_json(capsys, "doctor", "--profile=cst", "--provider=virtualbox", "--json", code=3)
    validate("doctor", report)
    failed = {c["name"]: c for c in report["checks"] if not c["ok"]}
    assert report["ok"] is False and set(failed) == {"ssh client", "sshfs"}
    assert "sudo apt-get install sshfs fuse3" in failed["sshfs"]["fix"].values()


def test_the_schemas_are_not_vacuous():
    good = {"schema_version": 1, "name": "dev", "forwards": [
        {"name": "tcp-2022", "proto": "tcp", "host_ip": "127.0.0.1", "host_port": 2022, "guest_ip": "",
         "guest_port": 22}]}
    validate("vm.forwards", good)
    for bad in ({**good, "schema_version": 2}, {k: v for k, v in good.items() if k != "name"},
                {**good, "forwards": [{**good["forwards"][0], "host_port": "2022"}]},
                {**good, "forwards": [{**good["forwards"][0], "proto": "sctp"}]}):
        assert list(validator("vm.forwards").iter_errors(bad)), bad


def test_the_schema_names_every_reason_an_auto_port_is_refused_for():
    from b2dkit import autoports

    refused = jsonout.load_schema("common")["$defs"]["auto_ports"]["properties"]["refused"]["items"]
    assert refused["properties"]["reason"]["enum"] == list(autoports.REASONS)  # "dismissed": vm.unforward
