"""mountfeed.py: the kernel's FUSE notification it writes, the guest's feed it reads, and which
names a guest change drops (the watched mount itself: tests/test_sshfs.py)."""

import shlex
import struct
from pathlib import Path

from b2dkit import mountfeed


def test_the_inval_entry_message_is_the_kernels_layout():
    # include/uapi/linux/fuse.h: fuse_out_header {u32 len; s32 error; u64 unique}, then
    # fuse_notify_inval_entry_out {u64 parent; u32 namelen; u32 flags}, the name and a NUL.
    msg = mountfeed.inval_entry_message(7, "f00001.txt")
    assert len(msg) == 16 + 16 + len("f00001.txt") + 1
    assert struct.unpack_from("<IiQ", msg) == (len(msg), 3, 0)
    assert struct.unpack_from("<QII", msg, 16) == (7, 10, 0)
    assert msg[32:] == b"f00001.txt\0"


def test_a_name_that_is_not_utf8_goes_out_as_its_bytes():
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert mountfeed.inval_entry_message(1, name).endswith(b"caf\xe9\0")


def test_events_are_split_on_nul_and_a_partial_path_waits_for_the_rest():
    paths, rest = mountfeed.split_events(b"/mnt/sda1/dev/a\0/mnt/sda1/dev/with\nnewline\0/mnt/sda1/de")
    assert paths == ["/mnt/sda1/dev/a", "/mnt/sda1/dev/with\nnewline"] and rest == b"/mnt/sda1/de"
    assert mountfeed.split_events(rest + b"v/b\0") == (["/mnt/sda1/dev/b"], b"")


def test_a_change_drops_the_name_and_its_directorys_own_name():
    local = Path("/home/u/workspace/dev")
    assert mountfeed.host_names("/mnt/sda1/dev/src/app.py", "/mnt/sda1/dev", local) == [
        (local / "src", "app.py"), (local, "src")]
    assert mountfeed.host_names("/mnt/sda1/dev/top.txt", "/mnt/sda1/dev/", local) == [(local, "top.txt")]
    # the mount's root has no name inside the mount, and a path outside it is none of ours
    assert mountfeed.host_names("/mnt/sda1/dev/", "/mnt/sda1/dev", local) == []
    assert mountfeed.host_names("/mnt/sda1/devx/a", "/mnt/sda1/dev", local) == []


def test_each_name_is_dropped_again_just_after_the_second_sshfs_stamped_its_copy_in(tmp_path, monkeypatch):
    dropped = []
    monkeypatch.setattr(mountfeed.Invalidator, "_drop", lambda self, d, n: dropped.append((d, n)))
    inv = mountfeed.Invalidator(-1, "/g", tmp_path)
    inv.changed(["/g/a"], now=100.4)
    assert dropped == [(tmp_path, "a")]
    assert inv.next_due() == 101 + mountfeed.SECOND_PASS_DELAY
    inv.run_due(now=100.99)
    assert dropped == [(tmp_path, "a")]
    inv.run_due(now=101.03)
    assert dropped == [(tmp_path, "a"), (tmp_path, "a")] and inv.next_due() is None


def test_a_feed_that_did_not_start_says_why_in_one_line():
    assert "no inotifywait" in mountfeed.why_not_started("sh: inotifywait: not found\n", 90)
    assert "no inotifywait" in mountfeed.why_not_started("bash: line 1: inotifywait: command not found\n", 90)
    assert "guest dir does not exist" in mountfeed.why_not_started(
        "Setting up watches.  Beware: ...\nCouldn't watch /x: No such file or directory\n", 90)
    assert mountfeed.why_not_started("", 90) == "the VM's change feed did not start: no answer within 90 s"


def test_the_guest_command_quotes_the_dir_and_never_prompts_for_a_password():
    cmd = mountfeed.feed_command("/mnt/sda1/my dev")
    assert "sudo -n " in cmd and shlex.split(cmd)[-1] == "/mnt/sda1/my dev"
    assert "-e modify,attrib,close_write,move,create,delete" in cmd and "open" not in cmd
