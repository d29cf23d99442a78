"""The hypervisors b2dkit drives.

``base`` holds what every hypervisor shares (states, ``MachineSpec`` and its one validation,
the ``Provider`` interface); each sub-package holds one hypervisor's program wrapper and its
provider side by side (``virtualbox/{vboxmanage,provider}.py``, ``qemu/{qemusystem,provider}.py``).
Importing this package imports no hypervisor module: they load when a provider is asked for.
"""

from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from .base import Provider

PROVIDERS = ("virtualbox", "qemu")


def default_provider_name() -> str:
    """VirtualBox where VBoxManage is installed, else QEMU (Linux CI, laptops without VirtualBox)."""
    from .virtualbox.vboxmanage import find_vboxmanage
    from ..errors import ToolMissing

    try:
        find_vboxmanage()
        return "virtualbox"
    except ToolMissing:
        return "qemu"


def get_provider(name: str, vm: str) -> "Provider":
    """The provider for VM ``vm`` on hypervisor ``name`` (its module is imported only now)."""
    if name == "virtualbox":
        from .virtualbox.provider import VirtualBoxProvider

        return VirtualBoxProvider(vm)
    if name == "qemu":
        from .qemu.provider import QemuProvider

        return QemuProvider(vm)
    raise InputError(f"unknown provider {name!r}: use one of {', '.join(PROVIDERS)}")
