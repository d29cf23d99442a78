"""atomic.py: whole files or nothing, and never a write over something that is not a file."""

import os
import stat

import pytest
from cli import run, run_failing

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


# -- a full or read-only disk: one line naming the path and what to do, no temp file left ------

def _temp_files(root):
    return [p for p in root.rglob("*") if p.name.endswith(".part")]


def test_a_full_cache_disk_during_a_remaster_is_one_line_and_leaves_no_temp_file(b2dkit_home, small_fs,
                                                                                 tmp_path, capsys):
    from isofixtures import build_iso, tools_available

    if tools_available():
        pytest.skip(tools_available())
    src = build_iso(tmp_path / "boot2docker.iso", initrd_size=400_000)
    cache = small_fs(b2dkit_home / "cache", size="300k")
    code, out = run_failing(capsys, "iso.remaster", f"--src={src}", "--boot-code=tz=CST-8")
    assert code == 3 and len(out.err.strip().splitlines()) == 1, out.err
    assert "no space left" in out.err and str(cache) in out.err and "Traceback" not in out.err
    assert _temp_files(cache) == []


def test_a_read_only_data_dir_is_one_line_naming_it(b2dkit_home, small_fs, tmp_path, capsys):
    from isofixtures import build_iso, tools_available

    if tools_available():
        pytest.skip(tools_available())
    src = build_iso(tmp_path / "boot2docker.iso")
    data = small_fs(b2dkit_home / "data", read_only=True)
    code, out = run_failing(capsys, "vm.create", "--provider=qemu", "--no-start", f"--iso={src}")
    assert code == 3 and len(out.err.strip().splitlines()) == 1 and "Traceback" not in out.err
    assert str(data) in out.err and "read-only" in out.err


def test_a_full_data_disk_while_creating_a_qemu_vm_is_one_line_and_leaves_no_temp_file(b2dkit_home, small_fs,
                                                                                       tmp_path, capsys):
    from isofixtures import build_iso, tools_available

    if tools_available():
        pytest.skip(tools_available())
    src = build_iso(tmp_path / "boot2docker.iso", initrd_size=400_000)
    data = small_fs(b2dkit_home / "data", size="200k")  # the ISO copy (no hard link across file systems) fills it
    code, out = run_failing(capsys, "vm.create", "--provider=qemu", "--no-start", f"--iso={src}")
    assert code == 3 and len(out.err.strip().splitlines()) == 1, out.err
    assert "no space left" in out.err and str(data) in out.err
    assert _temp_files(data) == []
    run("vm.list")  # and b2dkit still works: nothing half-written is mistaken for a VM


def test_every_write_cleans_the_temp_files_a_killed_run_left_in_its_folder(folder):
    old = folder / ".b2dkit.json.x1y2.part"
    fresh = folder / ".b2dkit.json.z3w4.part"  # maybe another process writing now: kept
    download = folder / ("0" * 64 + ".iso.part")  # a resumable download, never a temp file
    for path in (old, fresh, download):
        path.write_bytes(b"half")
    hours_ago = os.path.getmtime(old) - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    atomic.write_bytes(folder / "active", b"dev\n")
    assert not old.exists() and fresh.exists() and download.exists()


def test_iso_cache_lists_unfinished_downloads_and_leftovers_with_the_total(b2dkit_home, capsys):
    from b2dkit import isocache

    isocache.sources_dir().mkdir(parents=True)
    (isocache.sources_dir() / ("a" * 64 + ".iso.part")).write_bytes(b"x" * 1000)
    (isocache.sources_dir() / ".meta.json.k.part").write_bytes(b"y" * 500)
    run("iso.cache")
    out = capsys.readouterr().out
    assert "partial" in out and "unfinished download" in out and "temp" in out
    assert f"2 file(s), 0.0 MB in {isocache.cache_dir()}" in out
