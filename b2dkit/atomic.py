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
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

from .errors import InputError, cannot_write
from .paths import StrPath


def check_output(target: StrPath) -> Path:
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
def atomic_path(target: StrPath, mode: int = 0o644) -> Iterator[Path]:
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
    remove_stale_temps(parent)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=parent)
    except OSError as exc:
        raise cannot_write(exc, target) or exc from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a full disk or a Ctrl-C leaves no temp file behind
        refused = cannot_write(exc, target) if isinstance(exc, OSError) else None
        if refused is not None:
            raise refused from None
        raise


STALE_AFTER = 3600.0  # seconds: no b2dkit write takes this long, so an older temp file is a killed run's


def is_temp(path: Path) -> bool:
    """A temp file of ``atomic_path`` (``.NAME.XXXX.part``); never a resumable download (``NAME.part``)."""
    return path.name.startswith(".") and path.name.endswith(".part")


def remove_stale_temps(folder: StrPath, older_than: float = STALE_AFTER) -> List[str]:
    """Delete temp files a killed run left in ``folder`` (every write does this in its own folder).

    Only those older than ``older_than`` seconds, as another process may be writing one now;
    under the folder's ``locked_dir`` pass 0.
    """
    gone: List[str] = []
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            path = Path(entry.path)
            if not is_temp(path) or not entry.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime >= older_than:
                    path.unlink()
                    gone.append(path.name)
    return gone


def write_bytes(target: StrPath, data: bytes, mode: int = 0o644) -> None:
    with atomic_path(target, mode=mode) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def locked_dir(folder: StrPath, on_wait: Optional[Callable[[], object]] = None) -> Iterator[None]:
    """One b2dkit process at a time writes in ``folder``.

    So a temp file found there while holding the lock was left by a killed run and can go.
    flock on the directory: the kernel drops the lock with a killed holder.  ``on_wait()`` is
    called once if another process holds it (so a user knows why nothing happens).
    """
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
