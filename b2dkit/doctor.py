"""Is this laptop ready for a profile?  Each missing piece comes with the exact install command.

Used alone by ``b2dkit doctor`` and as the first step of onboarding.  Checks are cheap
(no VM is started, nothing is written) so they can run on every onboarding re-run.
"""

import shutil
from dataclasses import dataclass, field
from typing import Dict, List

from . import forwards as fw
from . import install, lifecycle, machines, paths, sshfs
from .errors import B2dkitError
from .hypervisors.base import VMState

MIN_FREE_MB = 300  # ISO download + remaster + the disk image's first writes


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: Dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        mark = "ok " if self.ok else "MISSING" if self.fix else "FAIL"
        text = f"[{mark}] {self.name}: {self.detail}"
        for system, cmd in self.fix.items():
            text += f"\n        {system}: {cmd}"
        return text


def check_hypervisor(provider: str) -> Check:
    if provider == "virtualbox":
        from .hypervisors.virtualbox import vboxmanage as vbox

        try:
            version = vbox.VBoxManage().version()
        except B2dkitError as exc:
            return Check("VirtualBox", False, str(exc), install.commands("virtualbox"))
        return Check("VirtualBox", True, "VBoxManage " + ".".join(map(str, version)))
    from .hypervisors.qemu import qemusystem as qemu

    try:
        binary = qemu.find_qemu()
    except B2dkitError as exc:
        return Check("QEMU", False, str(exc), install.commands("qemu"))
    accel = qemu.choose_accel()
    note = "" if accel != "tcg" else " (software emulation: slower boots; KVM is absent or unusable here)"
    return Check("QEMU", True, f"{binary}, accelerator {accel}{note}")


def check_sshfs() -> Check:
    """The same test ``vm.mount`` makes (``sshfs.require_sshfs``), with the install commands."""
    try:
        return Check("sshfs", True, sshfs.require_sshfs())
    except B2dkitError as exc:
        return Check("sshfs", False, exc.message, install.commands("sshfs"))


def check_ssh_client() -> Check:
    binary = shutil.which("ssh")
    if not binary:
        return Check("ssh client", False, "ssh is not installed (`b2dkit vm.ssh` uses it)", install.commands("ssh"))
    return Check("ssh client", True, binary)


def check_docker_cli() -> Check:
    """For a profile whose guest runs Docker: the client ``eval "$(b2dkit vm.env)"`` is for."""
    binary = shutil.which("docker")
    if not binary:
        return Check("docker CLI", False, "docker is not installed (the VM runs the daemon; you need the client)",
                     install.commands("docker"))
    return Check("docker CLI", True, binary)


def check_disk_space(profile) -> Check:
    where = paths.data_dir()
    probe = where
    while not probe.exists():
        probe = probe.parent
    free_mb = shutil.disk_usage(probe).free >> 20
    if free_mb < MIN_FREE_MB:
        return Check("disk space", False,
                     f"only {free_mb} MB free under {where}; b2dkit needs at least {MIN_FREE_MB} MB "
                     f"now and up to {profile.disk} MB as the VM's disk fills")
    note = "" if free_mb >= profile.disk else f" (the VM disk may grow to {profile.disk} MB)"
    return Check("disk space", True, f"{free_mb} MB free under {where}{note}")


def check_ports(profile) -> Check:
    """The profile's host ports must be free, unless our own VM is what holds them."""
    try:
        machine = machines.load(profile.name)
        if lifecycle.provider_for(machine).state() == VMState.RUNNING:
            return Check("host ports", True, f"held by the running VM {profile.name}")
    except B2dkitError:
        pass
    busy, denied = [], []
    for fwd in profile.forwards:  # the same probe and owner lookup the providers use at start
        state = fw.probe(fwd.host_port, fwd.host_ip, fwd.proto)
        where = f"{fwd.host_ip or '*'}:{fwd.host_port}/{fwd.proto}"
        if state == fw.DENIED:
            denied.append(where)
        elif state == fw.BUSY:
            holder = fw.owner(fwd)
            busy.append(where + (f" (by {holder})" if holder else ""))
    if busy or denied:
        parts = (["in use: " + ", ".join(busy)] if busy else []) + (
            ["not allowed for this user (below 1024): " + ", ".join(denied)] if denied else [])
        return Check("host ports", False, "; ".join(parts) + " (free them or change the profile's forwards)")
    return Check("host ports", True, ", ".join(str(f.host_port) for f in profile.forwards) + " free")


def run(profile) -> List[Check]:
    checks = [check_hypervisor(profile.provider), check_disk_space(profile), check_ports(profile),
              check_ssh_client()]
    if profile.mounts:
        checks.append(check_sshfs())
    if profile.docker_mode:  # a guest that certainly runs Docker (docker: true, or guest-docker)
        checks.append(check_docker_cli())
    return checks
