"""The hypervisors b2dkit drives.

``base`` holds what every hypervisor shares (states, ``MachineSpec`` and its one validation,
the ``Provider`` interface); each sub-package holds one hypervisor's program wrapper and its
provider side by side (``virtualbox/{vboxmanage,provider}.py``, ``qemu/{qemusystem,provider}.py``).
Importing this package imports no hypervisor module: they load when a provider is asked for.
"""

from typing import TYPE_CHECKING, Optional

from ..errors import InputError, MachineError

if TYPE_CHECKING:
    from .base import Provider

PROVIDERS = ("virtualbox", "qemu")


def virtualbox_unsupported() -> Optional[str]:
    """Why VirtualBox cannot run b2dkit's guest on this host, or None (#12 item 10).

    VirtualBox on Apple silicon runs arm64 guests only; boot2docker is x86_64.
    """
    import platform
    import sys

    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "VirtualBox on an arm64 Mac (Apple silicon) cannot run the x86_64 boot2docker guest"
    return None


def default_provider_name() -> str:
    """VirtualBox where VBoxManage is installed and can run the guest, else QEMU (Linux CI,
    laptops without VirtualBox, arm64 Macs)."""
    from .virtualbox.vboxmanage import find_vboxmanage
    from ..errors import ToolMissing

    if virtualbox_unsupported():
        return "qemu"
    try:
        find_vboxmanage()
        return "virtualbox"
    except ToolMissing:
        return "qemu"


def get_provider(name: str, vm: str) -> "Provider":
    """The provider for VM ``vm`` on hypervisor ``name`` (its module is imported only now)."""
    if name == "virtualbox":
        from .virtualbox.provider import VirtualBoxProvider

        why = virtualbox_unsupported()
        if why:
            raise MachineError(why, hint="use `provider: qemu` in the profile, or --provider=qemu")

        return VirtualBoxProvider(vm)
    if name == "qemu":
        from .qemu.provider import QemuProvider

        return QemuProvider(vm)
    raise InputError(f"unknown provider {name!r}: use one of {', '.join(PROVIDERS)}")
