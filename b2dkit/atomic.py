"""Write a file so that readers see either nothing or the whole thing.

Interrupted downloads, remasters and crashes must never leave a half-written file
where a finished one is expected: we write to a temp file in the target directory
(same filesystem, so the rename is atomic) and rename only on success.
"""

import contextlib
import fcntl
import os
import stat
import tempfile
from pathlib import Path

from .errors import InputError


def check_output(target) -> Path:
    """The path to write: ``target`` itself, or the file a symlink points to; never a non-file.

    The rename would otherwise put a regular file in place of a device, FIFO or socket: run as
    root, ``iso.remaster --out /dev/null`` replaced /dev/null itself.
    """
    target = Path(target)
    if target.is_symlink():
        target = Path(os.path.realpath(target))  # keep the link; replace what it points to
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"output {target} is a directory; give a file name")
    if not stat.S_ISREG(mode):
        raise InputError(
            f"output {target} is not a regular file (a device, FIFO or socket); b2dkit writes only regular files"
        )
    return target


@contextlib.contextmanager
def atomic_path(target, mode=0o644):
    """Yield a temp path next to ``target``; rename it over ``target`` if the block succeeds.

    On any exception (including KeyboardInterrupt) the temp file is removed and
    ``target`` is left exactly as it was.
    """
    target = check_output(target)
    parent = target.parent
    if not parent.is_dir():
        raise InputError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"output directory {parent} is not writable")
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes(target, data: bytes, mode=0o644):
    with atomic_path(target, mode=mode) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def locked_dir(folder):
    """One b2dkit process at a time writes in ``folder``.

    So a temp file found there while holding the lock was left by a killed run and can go.
    flock on the directory: the kernel drops the lock with a killed holder.
    """
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
