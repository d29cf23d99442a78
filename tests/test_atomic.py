"""atomic.py: whole files or nothing, and never a write over something that is not a file."""

import os
import stat

import pytest

from b2dkit import atomic
from b2dkit.errors import InputError


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    return path


def test_write_replaces_a_file_and_leaves_no_temp(folder):
    target = folder / "out.json"
    target.write_bytes(b"old")
    atomic.write_bytes(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(folder) == ["out.json"]


def test_a_failed_write_keeps_the_old_file(folder):
    target = folder / "out"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and os.listdir(folder) == ["out"]


def test_a_fifo_is_never_replaced(folder):
    fifo = folder / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        atomic.write_bytes(fifo, b"data")
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and os.listdir(folder) == ["fifo"]


@pytest.mark.skipif(os.getuid() != 0, reason="making a device node needs root")
def test_a_device_is_never_replaced(folder):
    dev = folder / "null"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(InputError, match="not a regular file"):
        atomic.write_bytes(dev, b"data")
    assert stat.S_ISCHR(dev.lstat().st_mode)


def test_a_directory_is_refused(folder):
    with pytest.raises(InputError, match="is a directory"):
        atomic.write_bytes(folder, b"data")


def test_a_symlink_stays_and_its_file_is_replaced(folder):
    real = folder / "real"
    real.write_bytes(b"old")
    link = folder / "link"
    link.symlink_to(real)
    atomic.write_bytes(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"
