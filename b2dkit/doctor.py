"""Is this laptop ready for a profile?  Each missing piece comes with the exact install command.

Used alone by ``b2dkit doctor`` and as the first step of onboarding.  Checks are cheap
(no VM is started, nothing is written) so they can run on every onboarding re-run.
"""

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List

from . import forwards as fw
from . import lifecycle, machines, paths
from .errors import B2dkitError
from .hypervisors.base import VMState

INSTALL = {
    "virtualbox": {"macOS": "brew install --cask virtualbox",
                   "Debian/Ubuntu": "sudo apt-get install virtualbox  (or the package from virtualbox.org)"},
    "qemu": {"macOS": "brew install qemu", "Debian/Ubuntu": "sudo apt-get install qemu-system-x86 qemu-utils"},
    "sshfs": {"macOS": "brew install --cask macfuse && brew install gromgit/fuse/sshfs-mac",
              "Debian/Ubuntu": "sudo apt-get install sshfs fuse3"},
    "ssh": {"macOS": "ssh ships with macOS", "Debian/Ubuntu": "sudo apt-get install openssh-client"},
}
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


def _host_system() -> str:
    return "macOS" if platform.system() == "Darwin" else "Debian/Ubuntu"


def _fix(tool: str) -> Dict[str, str]:
    """Show the host's own install command first, then the other one."""
    cmds = INSTALL[tool]
    first = _host_system()
    return {first: cmds[first], **{k: v for k, v in cmds.items() if k != first}}


def check_hypervisor(provider: str) -> Check:
    if provider == "virtualbox":
        from .hypervisors.virtualbox import vboxmanage as vbox

        try:
            version = vbox.VBoxManage().version()
        except B2dkitError as exc:
            return Check("VirtualBox", False, str(exc), _fix("virtualbox"))
        return Check("VirtualBox", True, "VBoxManage " + ".".join(map(str, version)))
    from .hypervisors.qemu import qemusystem as qemu

    try:
        binary = qemu.find_qemu()
    except B2dkitError as exc:
        return Check("QEMU", False, str(exc), _fix("qemu"))
    accel = qemu.choose_accel()
    note = "" if accel != "tcg" else " (software emulation: slower boots; KVM is absent or unusable here)"
    return Check("QEMU", True, f"{binary}, accelerator {accel}{note}")


def check_sshfs() -> Check:
    binary = shutil.which("sshfs")
    if not binary:
        return Check("sshfs", False, "sshfs is not installed (needed to mount VM folders)", _fix("sshfs"))
    if platform.system() == "Linux" and not os.path.exists("/dev/fuse"):
        return Check("sshfs", False, "/dev/fuse is missing (load the fuse module: sudo modprobe fuse)",
                     _fix("sshfs"))
    return Check("sshfs", True, binary)


def check_ssh_client() -> Check:
    binary = shutil.which("ssh")
    if not binary:
        return Check("ssh client", False, "ssh is not installed (vm.ssh uses it)", _fix("ssh"))
    return Check("ssh client", True, binary)


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
    busy = [f"{f.host_ip}:{f.host_port}/{f.proto}" for f in profile.forwards
            if not fw.host_port_free(f.host_port, f.host_ip, f.proto)]
    if busy:
        owners = [_port_owner(b) for b in busy]
        return Check("host ports", False, "in use: " + ", ".join(o for o in owners)
                     + " (free them or change the profile's forwards)")
    return Check("host ports", True, ", ".join(str(f.host_port) for f in profile.forwards) + " free")


def _port_owner(spec: str) -> str:
    """Best effort: name the process holding the port (lsof where it exists)."""
    port = spec.split(":")[1].split("/")[0]
    lsof = shutil.which("lsof")
    if not lsof:
        return spec
    try:
        out = subprocess.run([lsof, "-nP", f"-iTCP:{port}", "-sTCP:LISTEN", "-Fc"], capture_output=True,
                             text=True, timeout=3).stdout
    except (OSError, subprocess.TimeoutExpired):
        return spec
    names = [line[1:] for line in out.splitlines() if line.startswith("c")]
    return f"{spec} (by {names[0]})" if names else spec


def run(profile) -> List[Check]:
    checks = [check_hypervisor(profile.provider), check_disk_space(profile), check_ports(profile),
              check_ssh_client()]
    if profile.mounts:
        checks.append(check_sshfs())
    return checks


def cache_dir_note() -> str:
    return f"cache: {paths.cache_dir()}  data: {paths.data_dir()}"
