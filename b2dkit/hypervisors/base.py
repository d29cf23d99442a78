"""The one small interface every hypervisor implements.

A provider knows how to make, run and forget one named VM on its hypervisor.  It never
caches state in a file that could drift: ``state()`` and ``forwards()`` ask the hypervisor
every time.  Everything above it (tasks, onboarding, guest set-up) speaks only this
interface, so a profile runs the same on VirtualBox and on QEMU.
"""

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Tuple

from .. import forwards as fw
from .. import paths
from ..changes import Change
from ..errors import InputError
from ..forwards import Forward

# The one set of size limits, shared by profile validation and MachineSpec.check (boot2docker
# runs from RAM and needs 256 MB; 64 vCPUs is what both hypervisors accept).
MEMORY_MB = (256, 65536)
CPUS = (1, 64)
# Change kinds a running VM cannot take: ``create(spec, defer=True)`` records them for the next
# start (as Lima and Vagrant users expect: an edited config applies at the next boot).
OFFLINE_KINDS = frozenset({"memory", "cpus", "iso"})


class VMState(str, enum.Enum):
    ABSENT = "absent"  # no such VM on this hypervisor
    STOPPED = "stopped"  # powered off / aborted: safe to reconfigure
    RUNNING = "running"
    PAUSED = "paused"
    SAVED = "saved"
    BUSY = "busy"  # starting, stopping, saving...: wait and ask again
    CRASHED = "crashed"  # the hypervisor stopped the guest on a fatal error: only a power-off clears it
    INACCESSIBLE = "inaccessible"  # the hypervisor cannot read the VM's definition (its file is gone)

    def __str__(self) -> str:
        return self.value


@dataclass
class MachineSpec:
    """What ``create`` needs, resolved from a profile."""

    name: str
    memory_mb: int
    cpus: int
    disk_mb: int
    iso: Path  # the (remastered) boot ISO
    forwards: List[Forward] = field(default_factory=list)
    public_key: str = ""  # OpenSSH line baked into the persistent disk's header
    host_loopback: bool = False  # the guest may reach the host's 127.0.0.1 (VirtualBox 7.x: opt-in)

    def check(self, vm: str) -> List[Forward]:
        """The one validation of a spec, before any hypervisor call; returns the checked forwards."""
        if self.name != vm:
            raise InputError(f"machine spec is for {self.name!r}, not {vm!r}")
        for what, value, (low, high), unit in (
            ("memory", self.memory_mb, MEMORY_MB, " MB"),
            ("CPU count", self.cpus, CPUS, ""),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InputError(f"invalid {what} {value!r}{unit}: use {low} to {high}")
        if isinstance(self.disk_mb, bool) or not isinstance(self.disk_mb, int) or self.disk_mb < 1:
            raise InputError(f"invalid disk size {self.disk_mb!r} MB")
        if not Path(self.iso).is_file():
            raise InputError(f"boot ISO {self.iso} does not exist", hint="check the profile's ISO or --iso")
        if not str(self.public_key).strip():
            raise InputError("no SSH public key for the persistent disk")
        return fw.check_rules(self.forwards)

    @classmethod
    def from_profile(cls, profile: Any, iso: Path, public_key: str) -> "MachineSpec":
        """The one way a spec is built: from a resolved profile and the VM's own boot ISO."""
        return cls(
            name=profile.name,
            memory_mb=profile.memory,
            cpus=profile.cpus,
            disk_mb=profile.disk,
            iso=Path(iso),
            forwards=list(profile.forwards),
            public_key=public_key,
            host_loopback=profile.host_loopback,
        )


@dataclass
class Status:
    state: VMState
    forwards: List[Forward] = field(default_factory=list)
    info: dict = field(default_factory=dict)


@dataclass
class ApplyReport:
    """What create/converge did, so tasks can say it (idempotent re-runs report nothing)."""

    created: bool = False
    changes: List[str] = field(default_factory=list)
    running: bool = False  # the VM runs (create never starts or stops one): `--no-start` must not say "not started"


class Provider(ABC):
    """One VM on one hypervisor. Subclasses wrap their hypervisor's program; no parsing here."""

    name = "abstract"

    def __init__(self, vm: str):
        self.vm = paths.check_vm_name(vm)
        self.dir = paths.vm_dir(vm)

    # -- lifecycle -------------------------------------------------------------------------
    @abstractmethod
    def state(self) -> VMState:
        """Ask the hypervisor now."""

    @abstractmethod
    def changes(self, spec: MachineSpec, defer: bool = False) -> List[Change]:
        """Decide only: what ``create(spec, defer)`` would change on the existing VM, in the lines
        its report will use (``memory 1024 → 2048 MB``); [] when it matches. Reads, never writes."""

    @abstractmethod
    def create(self, spec: MachineSpec, defer: bool = False) -> ApplyReport:
        """Create the VM, or converge an existing one to ``spec``: the changes ``changes`` decides.

        A running VM takes forward changes live; memory, CPUs and the boot ISO need it stopped:
        refused, or with ``defer`` recorded for its next start (``OFFLINE_KINDS``, ``pending``).
        Idempotent; re-attaches a kept persistent disk instead of making a blank one.
        """

    def pending(self) -> List[str]:
        """Settings recorded for the next start that the running VM does not have yet, in words."""
        return []

    @abstractmethod
    def start(self) -> None:
        """Boot headless; return once the hypervisor reports running (not SSH-ready)."""

    @abstractmethod
    def stop(self, timeout: float = 30.0) -> bool:
        """ACPI power button, then hard power-off after ``timeout`` seconds.

        True when the guest shut itself down; False when it had to be powered off (the caller
        says so: a power-off loses whatever the guest had not written yet).
        """

    @abstractmethod
    def destroy(self, purge: bool = False) -> None:
        """Remove the VM. Keep the persistent disk unless ``purge``."""

    # -- forwards --------------------------------------------------------------------------
    @abstractmethod
    def forwards(self) -> List[Forward]:
        """The NAT rules as the hypervisor has them now."""

    @abstractmethod
    def add_forward(self, fwd: Forward) -> None:
        """Live when running, persistent when stopped; a rule with the same name is replaced."""

    @abstractmethod
    def remove_forward(self, name: str) -> None:
        """Remove by rule name; removing a missing rule is an InputError naming it."""

    # -- where things are ------------------------------------------------------------------
    @abstractmethod
    def ssh_endpoint(self) -> Tuple[str, int]:
        """(host, port) the host connects to for the guest's sshd."""

    @abstractmethod
    def disk_path(self) -> Optional[Path]:
        """The persistent disk image, whether attached or kept after destroy (None if none)."""

    @abstractmethod
    def log_path(self) -> Optional[Path]:
        """The log a user should read when boot fails (VBox.log, QEMU serial log)."""

    def info(self) -> dict:
        """Extra provider facts for ``vm.status`` (ISO path, memory...). Optional."""
        return {}

    def halted(self) -> Optional[str]:
        """Why the hypervisor has halted a running guest (disk full, panic), or None."""
        return None

    def status(self) -> "Status":
        """State, forwards and facts together, in as few hypervisor calls as the provider can.

        The default asks three times; VirtualBox overrides it to read one ``showvminfo``.
        """
        state = self.state()
        if state == VMState.ABSENT:
            return Status(state=state)
        return Status(state=state, forwards=self.forwards(), info=self.info())
