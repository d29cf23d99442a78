"""The boot2docker persistent disk: a "format-me" header followed by zeros.

boot2docker formats a disk whose first bytes are a tar whose first member is named and
contains ``boot2docker, please format-me``; it keeps the first 4 KiB as ``userdata.tar``
and extracts its ``.ssh`` keys into /home/docker at every boot.  Both providers build the
disk from the same header: VirtualBox pipes header + zeros into ``convertfromraw stdin``,
QEMU writes a sparse raw file.
"""

import io
import os
import tarfile
from pathlib import Path
from typing import IO

from . import atomic
from .errors import InputError
from .paths import StrPath

MAGIC = "boot2docker, please format-me"
HEADER_LIMIT = 4096  # boot2docker keeps only this much: dd ... bs=4096 count=1
_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)


def header_tar(public_key: str, mtime: int = 0) -> bytes:
    """The disk's first bytes; raises InputError if the key would not fit in 4 KiB."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _add(tar, MAGIC, MAGIC.encode(), 0o644, mtime)
        ssh = tarfile.TarInfo(".ssh")
        ssh.type, ssh.mode, ssh.mtime = tarfile.DIRTYPE, 0o700, mtime
        tar.addfile(ssh)
        key = (public_key.strip() + "\n").encode()
        _add(tar, ".ssh/authorized_keys", key, 0o644, mtime)
        _add(tar, ".ssh/authorized_keys2", key, 0o644, mtime)
        members_end = buf.tell()
    if members_end + 512 > HEADER_LIMIT:
        raise InputError(
            f"public key is too long for the boot2docker disk header ({members_end} bytes of "
            f"{HEADER_LIMIT - 512} usable); use an ed25519 or RSA-2048 key"
        )
    # Keep one end-of-archive block inside the 4 KiB; the zero fill after it supplies the rest.
    return buf.getvalue()[:HEADER_LIMIT]


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, mtime
    tar.addfile(info, io.BytesIO(data))


def size_bytes(disk_mb: int) -> int:
    if not isinstance(disk_mb, int) or disk_mb < 1:
        raise InputError(f"invalid disk size {disk_mb!r} MB")
    return disk_mb << 20


def write_stream(out: IO[bytes], header: bytes, total: int) -> int:
    """Write header then zeros until exactly ``total`` bytes (what convertfromraw stdin demands).

    Constant memory: one shared 1 MiB zero buffer, whatever the disk size.
    """
    if len(header) > total:
        raise InputError(f"disk of {total} bytes is smaller than its {len(header)}-byte header")
    write = out.write
    write(header)
    left = total - len(header)
    view = memoryview(_ZEROS)
    while left:
        n = min(left, _CHUNK)
        write(view[:n])
        left -= n
    return total


def create_raw(path: StrPath, header: bytes, total: int) -> Path:
    """A sparse raw disk image (QEMU): header at offset 0, holes for the rest. Never overwrites."""
    path = Path(path)
    if path.exists():
        raise InputError(f"refusing to overwrite existing disk {path}")
    with atomic.atomic_path(path, mode=0o600) as tmp:
        with open(tmp, "r+b") as fh:
            fh.write(header)
            fh.truncate(total)
            fh.flush()
            os.fsync(fh.fileno())
    return path


def read_header(path: StrPath, limit: int = HEADER_LIMIT) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(limit)


def has_magic(header: bytes) -> bool:
    """True while boot2docker has not formatted the disk yet (it zeroes the header when it does)."""
    return header[: len(MAGIC)] == MAGIC.encode()
