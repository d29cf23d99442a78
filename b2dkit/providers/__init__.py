"""The one small interface every hypervisor implements.

A provider knows how to make, run and forget one named VM on its hypervisor.  It never
caches state in a file that could drift: ``state()`` and ``forwards()`` ask the hypervisor
every time.  Everything above it (tasks, onboarding, guest set-up) speaks only this
interface, so a profile runs the same on VirtualBox and on QEMU.
"""

import enum
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import InputError
from ..forwards import Forward
from .. import paths

PROVIDERS = ("virtualbox", "qemu")


class VMState(str, enum.Enum):
    ABSENT = "absent"  # no such VM on this hypervisor
    STOPPED = "stopped"  # powered off / aborted: safe to reconfigure
    RUNNING = "running"
    PAUSED = "paused"
    SAVED = "saved"
    BUSY = "busy"  # starting, stopping, saving...: wait and ask again

    def __str__(self):
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
    def create(self, spec: MachineSpec) -> ApplyReport:
        """Create the VM, or converge an existing one to ``spec`` (only while stopped).

        Idempotent; re-attaches a kept persistent disk instead of making a blank one.
        """

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

    def status(self) -> "Status":
        """State, forwards and facts together, in as few hypervisor calls as the provider can.

        The default asks three times; VirtualBox overrides it to read one ``showvminfo``.
        """
        state = self.state()
        if state == VMState.ABSENT:
            return Status(state=state)
        return Status(state=state, forwards=self.forwards(), info=self.info())


def default_provider_name() -> str:
    """VirtualBox where VBoxManage is installed, else QEMU (Linux CI, laptops without VirtualBox)."""
    try:
        from ..vbox import find_vboxmanage  # local import: keep provider modules optional

        find_vboxmanage()
        return "virtualbox"
    except Exception:
        return "qemu"


def get_provider(name: str, vm: str) -> Provider:
    if name == "virtualbox":
        from .virtualbox import VirtualBoxProvider

        return VirtualBoxProvider(vm)
    if name == "qemu":
        from .qemu import QemuProvider

        return QemuProvider(vm)
    raise InputError(f"unknown provider {name!r}: use one of {', '.join(PROVIDERS)}")


def which(program: str) -> Optional[str]:
    return shutil.which(program)
