import pytest

from b2dkit import machines
from b2dkit.errors import InputError, VMNotFound


def test_record_roundtrip_and_active():
    assert machines.all_machines() == []
    with pytest.raises(VMNotFound, match="no active VM"):
        machines.resolve()
    machines.save(machines.Machine(name="dev", provider="qemu", profile="cst", persistent_dirs=["/mnt/sda1/dev"]))
    machines.save(machines.Machine(name="other", provider="virtualbox"))
    machines.set_active("dev")
    assert machines.resolve().name == "dev"
    assert machines.resolve("other").provider == "virtualbox"
    assert [m.name for m in machines.all_machines()] == ["dev", "other"]
    machines.forget("dev")
    assert machines.active_name() is None
    with pytest.raises(VMNotFound, match="no b2dkit VM named 'dev'"):
        machines.resolve("dev")


def test_bad_name_is_an_input_error():
    with pytest.raises(InputError, match="invalid VM name"):
        machines.resolve("../etc")


# -- damaged records: one line naming the file and the repair, and vm.list still shows the VM ----

from cli import run, run_failing  # noqa: E402


def _record_of_a_created_vm(capsys):
    import json as _json

    from b2dkit import paths

    machines.save(machines.Machine(name="dev", provider="qemu", profile="default"))
    machines.set_active("dev")
    path = paths.vm_dir("dev") / machines.RECORD
    return path, _json.loads(path.read_text())


@pytest.mark.parametrize("damage, why", [
    (lambda d: [], "a JSON list, not an object"),
    (lambda d: {k: v for k, v in d.items() if k != "provider"}, "missing key 'provider'"),
    (lambda d: dict(d, colour="blue"), "unknown key 'colour'"),
    (lambda d: dict(d, mounts="~/workspace"), "'mounts' is str"),
    (lambda d: dict(d, mounts=[{"guest": "/mnt/sda1/dev"}]), "'mounts'"),
    (lambda d: dict(d, mounts=[{"guest": "/mnt/sda1/dev", "host": "/w", "cache": "lazy"}]), "fresh|relaxed"),
    (lambda d: dict(d, provider="vmware"), "unknown provider"),
    (lambda d: dict(d, name=7), "'name' is int"),
])
def test_a_damaged_vm_record_is_one_line_naming_the_file_and_the_repair(capsys, damage, why):
    import json as _json

    path, data = _record_of_a_created_vm(capsys)
    path.write_text(_json.dumps(damage(data)))
    with pytest.raises(machines.DamagedRecord, match=why) as err:
        machines.load("dev")
    assert str(path) in str(err.value) and "b2dkit vm.create --name=dev" in str(err.value)
    code, out = run_failing(capsys, "vm.status")
    assert code == 3 and len(out.err.strip().splitlines()) == 1 and str(path) in out.err
    assert "Traceback" not in out.err


def test_a_truncated_record_is_listed_as_broken_never_silently_dropped(capsys):
    import json as _json

    path, _ = _record_of_a_created_vm(capsys)
    path.write_text(path.read_text()[:20])
    capsys.readouterr()
    run("vm.list", "--json")
    (row,) = _json.loads(capsys.readouterr().out)["vms"]
    assert row["name"] == "dev" and row["state"].startswith("broken:") and "truncated" in row["state"]
    assert "b2dkit vm.create --name=dev" in row["state"]
    run("vm.list")
    assert "dev" in capsys.readouterr().out


def test_a_damaged_active_vm_file_is_one_line_and_vm_list_still_lists(capsys):
    from b2dkit import paths

    machines.save(machines.Machine(name="dev", provider="qemu", profile="default"))
    (paths.data_dir() / "active").write_bytes(b"\xff\xfe../x")
    code, out = run_failing(capsys, "vm.status")
    assert code == 3 and "active is damaged" in out.err and "Traceback" not in out.err
    run("vm.list")
    assert "dev" in capsys.readouterr().out


def test_a_record_with_docker_on_reads_back_and_an_older_one_without_it_still_loads():
    machines.save(machines.Machine(name="dev", provider="qemu", profile="demo", docker=True, images=["/x.tar"]))
    assert machines.load("dev").docker is True and machines.load("dev").images == ["/x.tar"]
    path = machines.paths.vm_dir("dev") / machines.RECORD
    import json as _json

    data = _json.loads(path.read_text())
    del data["docker"], data["images"]  # written before b2dkit set Docker up
    path.write_text(_json.dumps(data))
    assert machines.load("dev").docker is None


def test_a_mounts_cache_mode_is_recorded_and_records_without_one_are_fresh():
    import json as _json
    from pathlib import Path

    from b2dkit import paths
    from b2dkit.profile import Mount

    relaxed = Mount("/mnt/sda1/dev", Path("/w/dev"), cache="relaxed")
    machines.save(machines.Machine(name="dev", provider="qemu", mounts=[relaxed, Mount("/mnt/sda1/o", Path("/w/o"))]))
    assert machines.load("dev").mounts == [relaxed, Mount("/mnt/sda1/o", Path("/w/o"), cache="fresh")]
    made = machines.MadeMount("dev", "docker@127.0.0.1:/mnt/sda1/dev", 2022, "/w/dev", "/mnt/sda1/dev", "relaxed")
    machines.record_mount(made)
    assert machines.made_mounts("dev") == [made]
    old = {k: v for k, v in made.to_dict().items() if k != "cache"}  # mounts.json of an older b2dkit
    (paths.vm_dir("dev") / machines.MOUNTS).write_text(_json.dumps([old]))
    assert [m.cache for m in machines.made_mounts("dev")] == ["fresh"]
