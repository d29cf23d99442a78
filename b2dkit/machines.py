"""Which b2dkit VMs this user has, which hypervisor holds each, and which one is active.

The hypervisor stays the source of truth for a VM's *state*; this only records what the
hypervisor cannot tell us: that b2dkit made the VM, with which provider and profile, so
``vm.forward 8000`` needs no other argument (docker-machine's "active machine").
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from . import atomic, paths, records
from .errors import DamagedRecord, InputError, VMNotFound
from .profile import MOUNT_CACHES, Mount

RECORD = "b2dkit.json"
MOUNTS = "mounts.json"  # the sshfs mounts b2dkit made for this VM (see MadeMount)


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
    auto_ports: Optional[List[str]] = None  # `ports: auto`: the allow-list (autoports.py); None: off

    def to_dict(self) -> dict:
        return {**asdict(self), "mounts": [m.to_dict() for m in self.mounts]}


@dataclass(frozen=True)
class MadeMount:
    """An sshfs mount b2dkit made for VM ``vm``.  The mount table shows only ``docker@127.0.0.1:/dir``,
    the same for every VM, so this record is how a VM knows which live mount is its own."""

    vm: str
    source: str  # as the mount table shows it: user@host:/guest/dir
    port: int  # the host port of the VM's SSH forward it went through
    local_dir: str  # absolute, symlinks resolved, as the mount table shows it
    guest: str
    # The profile's cache mode it was mounted with (records from before the key: fresh, the only
    # mode then); the mount table cannot tell, so a changed mode is seen here and remounted.
    cache: str = "fresh"

    def to_dict(self) -> dict:
        return asdict(self)


def made_mounts(name: str) -> List[MadeMount]:
    """What b2dkit mounted for ``name``.  An unreadable record counts as none: b2dkit rewrites it
    at the next mount, and a mount it no longer knows is left alone rather than guessed at."""
    path = paths.vm_dir(name) / MOUNTS
    try:
        rows = json.loads(path.read_text())
        return [MadeMount(**row) for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []
    except (OSError, ValueError, TypeError):
        return []


def _save_mounts(name: str, rows: List[MadeMount]) -> None:
    path = paths.vm_dir(name) / MOUNTS
    if not rows:
        path.unlink(missing_ok=True)
        return
    atomic.write_bytes(path, json.dumps([r.to_dict() for r in rows], indent=2, sort_keys=True).encode())


def record_mount(made: MadeMount) -> None:
    """``made`` is now the mount at its dir: this VM's record gains it, any other VM's loses it."""
    for other in (paths.data_dir() / "vms").glob(f"*/{MOUNTS}"):
        name = other.parent.name
        rows = made_mounts(name)
        kept = [r for r in rows if r.local_dir != made.local_dir]
        if name == made.vm:
            kept.append(made)
        if kept != rows:
            _save_mounts(name, kept)
    if not (paths.vm_dir(made.vm) / MOUNTS).exists():
        _save_mounts(made.vm, [made])


def forget_mount(name: str, local_dir: str) -> None:
    rows = made_mounts(name)
    kept = [r for r in rows if r.local_dir != local_dir]
    if kept != rows:
        _save_mounts(name, kept)


def mount_owner(local_dir: str, source: str) -> Optional[MadeMount]:
    """Which VM's mount is live at ``local_dir`` (with that ``source``), by b2dkit's records."""
    for other in sorted((paths.data_dir() / "vms").glob(f"*/{MOUNTS}")):
        for row in made_mounts(other.parent.name):
            if row.local_dir == local_dir and row.source == source:
                return row
    return None


def _active_file() -> Path:
    return paths.data_dir() / "active"


def save(machine: Machine) -> None:
    vm_dir = paths.ensure_dir(paths.vm_dir(machine.name))
    atomic.write_bytes(vm_dir / RECORD, json.dumps(machine.to_dict(), indent=2, sort_keys=True).encode())


_FIELDS: Dict[str, records.Kind] = {
    "name": str, "provider": str, "profile": str, "mounts": list, "persistent_dirs": list, "boot_codes": list,
    "docker": (bool, type(None)), "images": list, "auto_ports": (list, type(None)),
}
_OPTIONAL = ("docker", "images", "auto_ports")  # records written before Docker (or auto ports) lack them


def _repair(name: str) -> str:
    return (f"rewrite it with `b2dkit vm.create --name={name} --profile=PROFILE` (the VM and its disk are kept)")


def load(name: str) -> Machine:
    """The VM's record, checked: a damaged one is one line naming the file and the repair."""
    from .hypervisors import PROVIDERS

    path = paths.vm_dir(name) / RECORD
    repair = _repair(name)
    data = records.read(path, _FIELDS, repair, optional=_OPTIONAL)
    if data is None:
        raise VMNotFound(
            f"no b2dkit VM named {name!r}", hint="see `b2dkit vm.list`, or create it with `b2dkit vm.create`"
        )
    if data["name"] != name:
        raise records.damaged(path, f"it names VM {data['name']!r}, not {name!r}", repair)
    if data["provider"] not in PROVIDERS:
        raise records.damaged(path, f"unknown provider {data['provider']!r}", repair)
    for key in ("persistent_dirs", "boot_codes", "images", "auto_ports"):
        if not all(isinstance(v, str) for v in data.get(key) or []):
            raise records.damaged(path, f"{key!r} must be a list of text", repair)
    mounts = []
    for m in data["mounts"]:
        if not (isinstance(m, dict) and {"guest", "host"} <= set(m) <= {"guest", "host", "cache"}
                and all(isinstance(v, str) for v in m.values()) and m.get("cache", "fresh") in MOUNT_CACHES):
            raise records.damaged(path, "each of 'mounts' must be {guest: text, host: text, cache: fresh|relaxed "
                                  "(optional)}", repair)
        mounts.append(Mount(guest=m["guest"], host=Path(m["host"]), cache=m.get("cache", "fresh")))
    return Machine(**dict(data, mounts=mounts))


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
        except (VMNotFound, InputError, DamagedRecord):
            continue
    return found


def broken() -> List[Tuple[str, str]]:
    """(name, what is wrong) of every VM folder whose record cannot be read: vm.list shows them,
    so a truncated record never makes a VM silently vanish."""
    root = paths.data_dir() / "vms"
    found = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        if not (folder / RECORD).exists():
            if (folder / "machine.json").exists():  # a kept disk alone is a destroyed VM, not a broken one
                found.append((folder.name, f"{folder / RECORD} is missing ({_repair(folder.name)})"))
            continue
        try:
            load(folder.name)
        except (InputError, DamagedRecord) as exc:
            found.append((folder.name, str(exc)))
    return found


def set_active(name: str) -> None:
    paths.ensure_dir(paths.data_dir())
    atomic.write_bytes(_active_file(), (paths.check_vm_name(name) + "\n").encode())


def active_name() -> Optional[str]:
    path = _active_file()
    try:
        name = path.read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        name = "\ufffd"
    if name and not _VALID_NAME(name):
        raise records.damaged(path, "not a VM name", "pass --name, or delete that file and run "
                              "`b2dkit vm.create` to set the active VM again")
    return name or None


def _VALID_NAME(name: str) -> bool:
    try:
        paths.check_vm_name(name)
        return True
    except InputError:
        return False


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
