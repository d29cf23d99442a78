"""The only place that runs a package manager (apt-get, dnf, brew): argument lists, sudo, one error.

``onboard`` and ``doctor --fix`` decide first (an ``InstallPlan``: which manager, which
packages, the exact command a user reads) and run it only after consent. The command is
``install.install_argvs``, the one every hint shows: as root the manager runs directly;
otherwise through ``sudo``, which asks for the password on the terminal itself (nothing is
ever passed on a command line). brew refuses sudo and never gets it.
"""

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from . import install
from .errors import MachineError, ToolMissing

APT_LISTS = Path("/var/lib/apt/lists")  # empty on a fresh Debian image: apt-get update first


def detect() -> Optional[str]:
    """The package manager on PATH (apt, dnf or brew), or None."""
    for manager in ("brew", "apt", "dnf") if _darwin() else ("apt", "dnf", "brew"):
        if shutil.which(install.BINARY[manager]):
            return manager
    return None


def _darwin() -> bool:
    import platform

    return platform.system() == "Darwin"


@dataclass
class InstallPlan:
    manager: str
    packages: List[str]

    def argvs(self) -> List[List[str]]:
        """The argument lists to run, in order: the hint's command plus ``-y`` (install.install_argvs),
        after ``apt-get update`` where apt has no package lists yet (a fresh image)."""
        runs = install.install_argvs(self.manager, self.packages, yes=True)
        if self.manager == "apt" and not _has_apt_lists():
            runs.insert(0, install.privileged(["apt-get", "update"]))
        return runs

    def command(self) -> str:
        """The exact command line shown before it runs (and to copy when it may not run)."""
        return " && ".join(shlex.join(argv) for argv in self.argvs())


def _has_apt_lists() -> bool:
    try:
        return any(p.name.endswith(("_Packages", "_Packages.lz4", "_Packages.gz", "_Packages.xz"))
                   for p in APT_LISTS.iterdir())
    except OSError:
        return False


def run(plan: InstallPlan) -> None:
    """Run the plan with the terminal attached (sudo's password prompt, apt's progress)."""
    for argv in plan.argvs():
        if argv[0] == "sudo" and not shutil.which("sudo"):
            raise ToolMissing(f"installing needs root and sudo is not installed: run as root `{shlex.join(argv[1:])}`")
        try:
            status = subprocess.run(argv).returncode
        except FileNotFoundError:
            raise ToolMissing(f"{argv[0]} is not on PATH; cannot run `{shlex.join(argv)}`") from None
        if status != 0:
            raise MachineError(f"`{shlex.join(argv)}` failed (exit status {status})",
                              hint="read its output above, fix it, and re-run")
