"""How to install each external program b2dkit runs: the one table doctor and every error use."""

import platform
from typing import Dict

COMMANDS: Dict[str, Dict[str, str]] = {
    "virtualbox": {"macOS": "brew install --cask virtualbox",
                   "Debian/Ubuntu": "sudo apt-get install virtualbox  (or the package from virtualbox.org)"},
    "qemu": {"macOS": "brew install qemu", "Debian/Ubuntu": "sudo apt-get install qemu-system-x86 qemu-utils"},
    "sshfs": {"macOS": "brew install --cask macfuse && brew install gromgit/fuse/sshfs-mac",
              "Debian/Ubuntu": "sudo apt-get install sshfs fuse3"},
    "fuse": {"macOS": "brew install --cask macfuse", "Debian/Ubuntu": "sudo apt-get install fuse3"},
    "ssh": {"macOS": "ssh ships with macOS", "Debian/Ubuntu": "sudo apt-get install openssh-client"},
    # Only the client is used (the daemon runs in the VM); Debian packages both as docker.io.
    "docker": {"macOS": "brew install docker",
               "Debian/Ubuntu": "sudo apt-get install docker.io  (b2dkit uses only its docker CLI)"},
}  # fmt: skip


def host_system() -> str:
    return "macOS" if platform.system() == "Darwin" else "Debian/Ubuntu"


def commands(tool: str) -> Dict[str, str]:
    """The install commands for ``tool``, this host's system first."""
    cmds = COMMANDS[tool]
    first = host_system()
    return {first: cmds[first], **{k: v for k, v in cmds.items() if k != first}}


def hint(tool: str) -> str:
    """One line for an error message: ``install it with `…` (Debian/Ubuntu) or `…` (macOS)``."""
    return "install it with " + " or ".join(f"`{cmd}` ({system})" for system, cmd in commands(tool).items())
