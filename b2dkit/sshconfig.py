"""``vm.ssh-config``: an OpenSSH ``Host`` block for a b2dkit VM (like ``vagrant ssh-config``, Lima's ``show-ssh``).

With it, plain ``ssh``, ``scp``, ``rsync`` and IDEs (VS Code Remote-SSH) reach the VM the
way ``vm.ssh`` does: the VM's own key only, and the host key b2dkit pinned on first boot
checked strictly.  OpenSSH looks the key up under ``[HostName]:Port``, which is exactly how
b2dkit pins it, so no ``HostKeyAlias`` is needed.
"""

from pathlib import Path
from typing import List

from .guest import DEFAULT_USER, host_label, pinned_keys, ssh_quote
from .paths import StrPath

ALIAS_PREFIX = "b2dkit-"  # ssh b2dkit-dev, as Lima has lima-<name>


def host_alias(name: str) -> str:
    return f"{ALIAS_PREFIX}{name}"


def host_block(
    name: str, host: str, port: int, key_path: StrPath, known_hosts_path: StrPath, user: str = DEFAULT_USER
) -> List[str]:
    """The lines of one ``Host`` block; a comment says when the host key is not pinned yet."""
    lines = []
    if not pinned_keys(known_hosts_path, host, port):
        lines.append(f"# {host_label(host, port)} has no pinned host key yet: run `b2dkit vm.start --name={name}` "
                     "first, or ssh refuses (StrictHostKeyChecking)")
    lines += [
        f"Host {host_alias(name)}",
        f"  HostName {host}",
        f"  Port {int(port)}",
        f"  User {user}",
        f"  IdentityFile {ssh_quote(Path(key_path))}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {ssh_quote(Path(known_hosts_path))}",
        "  StrictHostKeyChecking yes",
        "  PasswordAuthentication no",
        "  LogLevel ERROR",
    ]
    return lines
