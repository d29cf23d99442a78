"""Which b2dkit VMs this user has, which hypervisor holds each, and which one is active.

The hypervisor stays the source of truth for a VM's *state*; this only records what the
hypervisor cannot tell us: that b2dkit made the VM, with which provider and profile, so
``vm.forward 8000`` needs no other argument (docker-machine's "active machine").
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

from . import atomic, paths
from .errors import InputError, VMNotFound
from .profile import Mount

RECORD = "b2dkit.json"


@dataclass
class Machine:
    name: str
    provider: str
    profile: str = ""  # the profile name or path it was created from
    mounts: List[Mount] = field(default_factory=list)  # the profile's, as they were at create
    persistent_dirs: List[str] = field(default_factory=list)
    boot_codes: List[str] = field(default_factory=list)
    docker: Optional[bool] = None  # Profile.docker_mode: required, none, or ask the guest at start
    images: List[str] = field(default_factory=list)  # host tarballs the daemon loads at start

    def to_dict(self) -> dict:
        return {**asdict(self), "mounts": [m.to_dict() for m in self.mounts]}


def _active_file() -> Path:
    return paths.data_dir() / "active"


def save(machine: Machine) -> None:
    vm_dir = paths.ensure_dir(paths.vm_dir(machine.name))
    atomic.write_bytes(vm_dir / RECORD, json.dumps(machine.to_dict(), indent=2, sort_keys=True).encode())


def load(name: str) -> Machine:
    path = paths.vm_dir(name) / RECORD
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise VMNotFound(
            f"no b2dkit VM named {name!r}", hint="see `b2dkit vm.list`, or create it with `b2dkit vm.create`"
        ) from None
    except ValueError:
        raise InputError(f"{path} is corrupt; delete it and re-run `b2dkit vm.create`") from None
    known = {k: v for k, v in data.items() if k in Machine.__dataclass_fields__}
    try:
        known["mounts"] = [Mount(guest=m["guest"], host=Path(m["host"])) for m in known.get("mounts", [])]
        return Machine(**known)
    except (TypeError, KeyError):
        raise InputError(f"{path} is corrupt; delete it and re-run `b2dkit vm.create`") from None


def forget(name: str) -> None:
    (paths.vm_dir(name) / RECORD).unlink(missing_ok=True)
    if active_name() == name:
        _active_file().unlink(missing_ok=True)


def all_machines() -> List[Machine]:
    root = paths.data_dir() / "vms"
    found = []
    for record in sorted(root.glob(f"*/{RECORD}")) if root.is_dir() else []:
        try:
            found.append(load(record.parent.name))
        except (VMNotFound, InputError):
            continue
    return found


def set_active(name: str) -> None:
    paths.ensure_dir(paths.data_dir())
    atomic.write_bytes(_active_file(), (paths.check_vm_name(name) + "\n").encode())


def active_name() -> Optional[str]:
    try:
        name = _active_file().read_text().strip()
    except FileNotFoundError:
        return None
    return name or None


def resolve(name: Optional[str] = None) -> Machine:
    """The VM a ``vm.*`` task acts on: ``--name`` if given, else the active one.

    An empty ``--name=`` is an error, never "the active VM": ``vm.destroy --name= --purge`` must not
    delete a VM the user did not name.
    """
    if name is not None:
        if not str(name).strip():
            raise InputError("--name is empty: give the VM's name (see `b2dkit vm.list`) or leave --name out")
        return load(paths.check_vm_name(str(name)))
    active = active_name()
    if not active:
        raise VMNotFound(
            "no active VM", hint="create one with `b2dkit vm.create --profile=NAME`, or pass --name"
        )
    return load(active)
