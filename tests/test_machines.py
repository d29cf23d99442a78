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
