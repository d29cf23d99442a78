"""Is this laptop ready for a profile?  Each missing piece comes with the exact install command.

Used alone by ``b2dkit doctor`` and as the first step of onboarding.  Checks are cheap
(no VM is started, nothing is written) so they can run on every onboarding re-run.  Only
what the profile needs is checked (sshfs when it mounts, the guest build's packages when it
builds the guest, the Docker CLI when its guest runs Docker), so ``fix`` never installs more.
"""

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from . import forwards as fw
from . import install, lifecycle, machines, paths, pkgmanager
from .errors import B2dkitError, ChecksFailed, PortDenied
from .hypervisors.base import VMState
from .profile import Profile

MIN_FREE_MB = 300  # ISO download + remaster + the disk image's first writes


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: Dict[str, str] = field(default_factory=dict)
    packages: Dict[str, List[str]] = field(default_factory=dict)  # what installs it, per package manager

    def line(self) -> str:
        mark = "ok " if self.ok else "MISSING" if self.fix else "FAIL"
        text = f"[{mark}] {self.name}: {self.detail}"
        for system, cmd in self.fix.items():
            text += f"\n        {system}: {cmd}"
        return text


def _missing(name: str, detail: str, tool: str) -> Check:
    """A tool that a package provides: the commands to show and the packages ``fix`` installs."""
    entry = install.TABLE[tool]
    packages = {m: entry.names(m) for m in install.MANAGERS if entry.names(m)}
    return Check(name, False, detail, install.commands(tool), packages)


def check_hypervisor(provider: str) -> Check:
    if provider == "virtualbox":
        from .hypervisors.virtualbox import vboxmanage as vbox

        try:
            version = vbox.VBoxManage().version()
        except B2dkitError as exc:
            return _missing("VirtualBox", str(exc), "virtualbox")
        return Check("VirtualBox", True, "VBoxManage " + ".".join(map(str, version)))
    from .hypervisors.qemu import qemusystem as qemu

    try:
        binary = qemu.find_qemu()
    except B2dkitError as exc:
        return _missing("QEMU", str(exc), "qemu")
    accel = qemu.choose_accel()
    note = "" if accel != "tcg" else " (software emulation: slower boots; KVM is absent or unusable here)"
    return Check("QEMU", True, f"{binary}, accelerator {accel}{note}")


def check_sshfs() -> Check:
    """The same test ``vm.mount`` makes (``sshfs.require_sshfs``), with the install commands."""
    from . import sshfs  # imports paramiko: not for every TAB of shell completion

    try:
        return Check("sshfs", True, sshfs.require_sshfs())
    except B2dkitError as exc:
        if shutil.which("sshfs"):  # installed, but FUSE is not there: fuse3 (or modprobe, said in detail)
            return _missing("sshfs", exc.message, "fuse")
        return _missing("sshfs", exc.message, "sshfs")


def _check_program(label: str, program: str, why: str) -> Check:
    """A program the profile needs on PATH: its path, or missing with the install command."""
    binary = shutil.which(program)
    if not binary:
        return _missing(label, f"{program} is not installed ({why})", program)
    return Check(label, True, binary)


def check_ssh_client() -> Check:
    return _check_program("ssh client", "ssh", "`b2dkit vm.ssh` uses it")


def builds_guest(profile: Profile) -> bool:
    """The profile's ISO is built here from Debian packages (``iso: {build: guest}``; a flavour
    such as ``guest-docker`` builds the same way with more packages)."""
    return (profile.iso.build or "").startswith("guest")


def needs_docker(profile: Profile) -> bool:
    """The profile's guest runs Docker, so the host needs the Docker CLI: the ``guest-docker``
    build flavour, or a ``docker`` setting that is on (the hook for the Docker integration)."""
    return bool(profile.docker_mode)  # docker: true, or the guest-docker flavour


def check_guest_build(profile: Profile) -> Check:
    """What guest/build.py needs: its Debian packages (its own list), dpkg-query, a readable kernel."""
    name = "guest build"
    try:
        builder = lifecycle.guest_builder()
    except B2dkitError as exc:
        return Check(name, False, str(exc))
    flavour = profile.iso.build
    try:
        built = builder.cached(flavour=flavour)
    except (builder.BuildError, OSError):
        built = None
    if built:
        return Check(name, True, f"built ({built})")
    if not shutil.which("dpkg-query"):
        return Check(name, False, "the guest is built from Debian packages and dpkg-query is not on PATH: "
                                  "build it on Debian/Ubuntu, or set iso.path to a boot2docker ISO")
    missing = builder.missing_packages(flavour)
    if missing:
        return Check(name, False, f"missing Debian packages: {' '.join(missing)}",
                     {install.SYSTEMS["apt"]: install.command_text("apt", missing)}, {"apt": missing})
    try:
        kernel = Path(f"/boot/vmlinuz-{builder.kernel_version()}")
    except (builder.BuildError, OSError) as exc:
        return Check(name, False, str(exc))
    if not os.access(kernel, os.R_OK):
        return Check(name, False, f"cannot read {kernel} (Debian makes it 0600): onboard as root, "
                                  f"or `{install.privileged_text('chmod', '0644', str(kernel))}`")
    return Check(name, True, f"packages installed, kernel {kernel} readable (first build takes a minute)")


def check_docker_cli() -> Check:
    return _check_program("Docker CLI", "docker", "the profile's guest runs Docker")


def check_disk_space(profile: Profile) -> Check:
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


def check_ports(profile: Profile) -> Check:
    """The profile's host ports must be free, unless our own VM is what holds them."""
    try:
        machine = machines.load(profile.name)
        if lifecycle.provider_for(machine).state() == VMState.RUNNING:
            return Check("host ports", True, f"held by the running VM {profile.name}")
    except B2dkitError:
        pass
    busy: List[str] = []
    denied: List[PortDenied] = []
    for fwd in profile.forwards:  # the same probe and owner lookup the providers use at start
        state = fw.probe(fwd.host_port, fwd.host_ip, fwd.proto)
        where = f"{fwd.host_ip or '*'}:{fwd.host_port}/{fwd.proto}"
        if state == fw.DENIED:
            denied.append(fw.denied(fwd))
        elif state == fw.BUSY:
            holder = fw.owner(fwd)
            busy.append(where + (f" (by {holder})" if holder else ""))
    if busy or denied:
        parts = (["in use: " + ", ".join(busy)] if busy else []) + [str(d) for d in denied]  # each says why
        return Check("host ports", False, "; ".join(parts) + " (free them or change the profile's forwards)")
    return Check("host ports", True, ", ".join(str(f.host_port) for f in profile.forwards) + " free")


def run(profile: Profile, iso_path: Optional[lifecycle.PathLike] = None) -> List[Check]:
    """Every check the profile needs (``iso_path``: onboard --iso, so nothing is built)."""
    checks = [check_hypervisor(profile.provider), check_disk_space(profile), check_ports(profile),
              check_ssh_client()]
    if profile.mounts:
        checks.append(check_sshfs())
    if builds_guest(profile) and not iso_path and not profile.iso.path:
        checks.append(check_guest_build(profile))
    if needs_docker(profile):
        checks.append(check_docker_cli())
    return checks


# -- installing what is missing -----------------------------------------------------------------


def install_plan(checks: List[Check], manager: Optional[str] = None) -> Optional[pkgmanager.InstallPlan]:
    """One install for every failed check this host's package manager can fix; None if there is none."""
    manager = manager or pkgmanager.detect()
    if manager is None:
        return None
    wanted: List[str] = []
    for check in checks:
        if not check.ok:
            wanted += [p for p in check.packages.get(manager, []) if p not in wanted]
    return pkgmanager.InstallPlan(manager, wanted) if wanted else None


def install_lines(checks: List[Check]) -> List[str]:
    """The table's footer: one install command per package manager, for what is missing only."""
    lines = []
    for manager in install.MANAGERS:
        wanted: List[str] = []
        for check in checks:
            if not check.ok:
                wanted += [p for p in check.packages.get(manager, []) if p not in wanted]
        if wanted:
            lines.append(f"  {install.SYSTEMS[manager]}: {install.command_text(manager, wanted)}")
    return ["to install what is missing:", *lines] if lines else []


Confirm = Callable[[str], bool]


def fix(profile: Profile, checks: List[Check], confirm: Confirm, log: Callable[[str], None] = print,
        iso_path: Optional[lifecycle.PathLike] = None, dry_run: bool = False) -> List[Check]:
    """Offer the install for what is missing, run it with consent, and return the checks re-run.

    ``confirm(command)`` is the user's answer (the task layer asks, or says --yes); without
    consent nothing is installed and ChecksFailed names the command to run.
    """
    plan = install_plan(checks)
    if plan is None:
        return checks
    command = plan.command()
    if dry_run:
        log(f"would: install {' '.join(plan.packages)}: {command}")
        return checks
    failed = [c.name for c in checks if not c.ok]
    if not confirm(command):
        raise ChecksFailed(f"{len(failed)} check(s) failed ({', '.join(failed)}); nothing was installed: "
                           f"run `{command}`, or re-run with --yes")
    log(f"running: {command}")
    pkgmanager.run(plan)
    again = run(profile, iso_path=iso_path)
    log("re-checked after installing:")
    for check in again:
        log("  " + check.line().replace("\n", "\n  "))
    return again
