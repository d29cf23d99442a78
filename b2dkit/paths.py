"""Where b2dkit keeps its files: the platform's user cache and data dirs.

``B2DKIT_HOME`` moves everything under one folder (tests and CI use it so nothing
touches the real home directory).
"""

import os
import re
from pathlib import Path
from typing import Optional, Union

import platformdirs

from .errors import InputError

# What a function that opens or names a file accepts: a str or any path object (Path, DirEntry...).
StrPath = Union[str, "os.PathLike[str]"]

_APP = "b2dkit"
_VM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _home() -> Optional[Path]:
    value = os.environ.get("B2DKIT_HOME")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """ISO downloads and remastered images: safe to delete, rebuilt on demand."""
    home = _home()
    return home / "cache" if home else Path(platformdirs.user_cache_dir(_APP))


def data_dir() -> Path:
    """VM state dirs, keys, the active-VM record: not safe to delete."""
    home = _home()
    return home / "data" if home else Path(platformdirs.user_data_dir(_APP))


def check_vm_name(name: str) -> str:
    if not isinstance(name, str) or not _VM_NAME.match(name):
        raise InputError(
            f"invalid VM name {name!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def vm_dir(name: str) -> Path:
    """One folder per VM: SSH keys, known_hosts, logs, and (for QEMU) the machine itself."""
    return data_dir() / "vms" / check_vm_name(name)


def ensure_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    return path


def same_file(a: Union[str, Path], b: Union[str, Path]) -> bool:
    """The same file on disk (or, when one is missing, the same absolute path): is it attached already?"""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(str(a)) == os.path.abspath(str(b))


def same_content(a: Path, b: Path) -> bool:
    """Same inode, or same bytes: does the VM's own ISO link still hold this boot ISO?"""
    sa, sb = os.stat(a), os.stat(b)
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return True
    if sa.st_size != sb.st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(1 << 20), fb.read(1 << 20)
            if ca != cb:
                return False
            if not ca:
                return True
