"""How to install each external program b2dkit runs: the one table doctor, onboarding and every error use.

A tool maps to its package names per package manager (apt, dnf, brew; brew casks apart,
since they need ``--cask``); the human-readable commands are made from the same names and
the same argument lists (``install_argvs``) that ``pkgmanager`` runs, so what an error
suggests is what ``onboard --yes`` would run.  ``privileged`` is the one rule for root:
as root a command runs (and is shown) as is, otherwise through ``sudo``; brew never.
"""

import os
import platform
import shlex
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

MANAGERS = ("apt", "dnf", "brew")
SYSTEMS = {"apt": "Debian/Ubuntu", "dnf": "Fedora", "brew": "macOS"}
BINARY = {"apt": "apt-get", "dnf": "dnf", "brew": "brew"}


@dataclass(frozen=True)
class Packages:
    """The packages that provide a tool, per package manager; ``note`` says what a name cannot."""

    apt: Tuple[str, ...] = ()
    dnf: Tuple[str, ...] = ()
    brew: Tuple[str, ...] = ()
    cask: Tuple[str, ...] = ()  # brew install --cask
    note: Dict[str, str] = field(default_factory=dict)

    def names(self, manager: str) -> List[str]:
        """What ``manager`` installs (casks as ``--cask NAME``, which is how pkgmanager passes them)."""
        if manager == "brew":
            return [f"--cask {c}" for c in self.cask] + list(self.brew)
        return list(getattr(self, manager))


TABLE: Dict[str, Packages] = {
    "virtualbox": Packages(apt=("virtualbox",), dnf=("VirtualBox",), cask=("virtualbox",),
                           note={"apt": "or the package from virtualbox.org",
                                 "dnf": "from RPM Fusion or virtualbox.org"}),
    "qemu": Packages(apt=("qemu-system-x86", "qemu-utils"), dnf=("qemu-system-x86", "qemu-img"), brew=("qemu",)),
    "sshfs": Packages(apt=("sshfs", "fuse3"), dnf=("fuse-sshfs", "fuse3"), brew=("gromgit/fuse/sshfs-mac",),
                      cask=("macfuse",)),
    "fuse": Packages(apt=("fuse3",), dnf=("fuse3",), cask=("macfuse",)),
    "ssh": Packages(apt=("openssh-client",), dnf=("openssh-clients",), note={"brew": "ssh ships with macOS"}),
    "docker": Packages(apt=("docker.io",), dnf=("moby-engine",), brew=("docker",)),
    "git": Packages(apt=("git",), dnf=("git",), brew=("git",)),
}  # fmt: skip


def as_root() -> bool:
    return os.geteuid() == 0


def privileged(argv: List[str]) -> List[str]:
    """``argv`` as this user must run a command that needs root: as is when root (a bare
    machine or container often has no sudo at all), otherwise through ``sudo``."""
    return list(argv) if as_root() else ["sudo", *argv]


def privileged_text(*argv: str) -> str:
    """The same, as a person types it (for hints: ``sudo modprobe fuse`` or ``modprobe fuse``)."""
    return shlex.join(privileged(list(argv)))


def install_argvs(manager: str, packages: List[str], yes: bool = False) -> List[List[str]]:
    """The argument lists that install ``packages`` (brew: casks first, never sudo).

    ``yes``: no question from the manager itself (``-y``; the user consented already).
    """
    if manager == "brew":
        casks = [p.split(" ", 1)[1] for p in packages if p.startswith("--cask ")]
        formulae = [p for p in packages if not p.startswith("--cask ")]
        return ([["brew", "install", "--cask", *casks]] if casks else []) + (
            [["brew", "install", *formulae]] if formulae else [])
    return [privileged([BINARY[manager], "install", *(["-y"] if yes else []), *packages])]


def host_manager() -> str:
    """The package manager this host's commands are shown for first (brew on macOS)."""
    if platform.system() == "Darwin":
        return "brew"
    return "dnf" if shutil.which("dnf") and not shutil.which("apt-get") else "apt"


def host_system() -> str:
    return SYSTEMS[host_manager()]


def command_text(manager: str, packages: List[str]) -> str:
    """What a person types: ``sudo apt-get install a b``, or ``apt-get install a b`` as root."""
    return " && ".join(shlex.join(argv) for argv in install_argvs(manager, packages))


def commands(tool: str) -> Dict[str, str]:
    """The install command for ``tool`` per system, this host's first."""
    entry = TABLE[tool]
    first = host_manager()
    out = {}
    for manager in (first, *[m for m in MANAGERS if m != first]):
        names = entry.names(manager)
        note = entry.note.get(manager)
        if names:
            out[SYSTEMS[manager]] = command_text(manager, names) + (f"  ({note})" if note else "")
        elif note:
            out[SYSTEMS[manager]] = note
    return out


def hint(tool: str) -> str:
    """One line for an error message: ``install it with `…` (Debian/Ubuntu) or `…` (macOS)``."""
    return "install it with " + " or ".join(f"`{cmd}` ({system})" for system, cmd in commands(tool).items())
