"""The mount's 1 s rule, checked at its worst moment; shared by the dropbear tests (test_sshfs.py)
and the real guest (test_e2e.py), so both hold b2dkit's sshfs options to the same promise:
a file the guest creates, changes or deletes is seen on the host within 1 s (listing, stat
size and mtime, contents), and a file the host writes is in the guest once it is closed."""

import contextlib
import os
import time
from pathlib import Path
from typing import Callable

LIMIT = 1.0


def seen_within(check, limit, since):
    """Seconds from ``since`` until ``check()`` is true, polled; fails when a check begun after
    ``limit`` (the caches' promise) still sees the old state."""
    while True:
        began = time.monotonic() - since
        if check():
            return began
        if began > limit:
            raise AssertionError(f"not seen within {limit:g} s")
        time.sleep(0.02)


def change_at_the_worst_moment(warm, change):
    """Monotonic time just before ``change()``, made when the caches hold the old state longest.

    sshfs stamps its own cache in whole wall-clock seconds (an entry lives to the end of the
    second it was filled in, or longer), and the kernel keeps what sshfs hands it for
    entry/attr_timeout more: so fill both just as a second starts, change, then let the
    kernel ask again just before that second ends. Any kernel timeout on top of sshfs's
    cache then shows here as a change seen after more than 1 s.
    """
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.002)
    warm()
    changed = time.monotonic()
    change()
    while time.time() < start + 1.9:
        time.sleep(0.002)
    with contextlib.suppress(OSError, AssertionError):
        warm()
    return changed


def _stat_is(path: Path, size: int, mtime: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return st.st_size == size and int(st.st_mtime) == mtime


def check_one_second_rule(local: Path, guest_write: Callable[[str, str], int],
                          guest_unlink: Callable[[str], None], guest_read: Callable[[str], str]) -> None:
    """Create, change and delete in the guest; write on the host. ``guest_write(name, text)``
    returns the file's mtime in the guest (whole seconds, as SFTP carries it)."""
    guest_write("old.txt", "v1\n")
    guest_write("stat-only.txt", "v1\n")

    def warm():  # every cache, as an editor (reads) or `git status` (stat only) would have it
        assert "old.txt" in os.listdir(local)
        os.stat(local / "old.txt")
        (local / "old.txt").read_text()  # a read also refreshes the kernel's size: hence stat-only.txt
        os.stat(local / "stat-only.txt")
        with contextlib.suppress(FileNotFoundError):
            os.stat(local / "new.txt")

    mtimes = {}
    # the guest creates a file: in the listing and stat-able
    since = change_at_the_worst_moment(warm, lambda: mtimes.update(new=guest_write("new.txt", "from the guest\n")))
    seen_within(lambda: "new.txt" in os.listdir(local), LIMIT, since)
    assert _stat_is(local / "new.txt", len("from the guest\n"), mtimes["new"])
    assert (local / "new.txt").read_text() == "from the guest\n"
    # ... changes one the host has only stat'ed: its size and mtime
    since = change_at_the_worst_moment(warm, lambda: mtimes.update(st=guest_write("stat-only.txt", "v2, longer\n")))
    seen_within(lambda: _stat_is(local / "stat-only.txt", len("v2, longer\n"), mtimes["st"]), LIMIT, since)
    # ... and one the host has read: its contents
    since = change_at_the_worst_moment(warm, lambda: guest_write("old.txt", "v2, longer\n"))
    seen_within(lambda: (local / "old.txt").read_text() == "v2, longer\n", LIMIT, since)
    # ... and deletes one
    since = change_at_the_worst_moment(warm, lambda: guest_unlink("new.txt"))
    seen_within(lambda: not (local / "new.txt").exists() and "new.txt" not in os.listdir(local), LIMIT, since)
    (local / "host.txt").write_text("from the host\n")  # the host's writes are there at close
    assert guest_read("host.txt") == "from the host\n"
