"""The mount's 1 s rule, checked at its worst moment; shared by the dropbear tests (test_sshfs.py)
and the real guest (test_e2e.py), so both hold b2dkit's sshfs options to the same promise:
a file the guest creates, changes or deletes is seen on the host within 1 s (listing, stat
size and mtime, contents), and a file the host writes is in the guest once it is closed.
A ``cache: relaxed`` mount is held to its own bound the same way (check_bound), and to what it
keeps of the rule: the host's own writes are seen on the host at once (check_host_writes)."""

import contextlib
import os
import time
from pathlib import Path
from typing import Callable, Dict

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


def change_at_the_worst_moment(warm, change, held=0, first=None):
    """Monotonic time just before ``change()``, made when the caches hold the old state longest.

    sshfs stamps its own cache in whole wall-clock seconds (an entry lives to the end of the
    second it was filled in, plus ``held`` whole seconds: its dcache_timeout), and the kernel keeps
    what sshfs hands it for entry/attr_timeout more: so fill both just as a second starts, change,
    then let the kernel ask again just before sshfs's entry lapses. Any kernel timeout on top of
    sshfs's cache then shows here in full. ``first`` fills the caches instead of ``warm`` at the
    start: a listing alone fills sshfs's cache but not the kernel's, which a long kernel timeout
    would otherwise still hold when ``warm`` runs again (and so never ask sshfs for the old state).
    """
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.002)
    (first or warm)()
    changed = time.monotonic()
    change()
    while time.time() < start + 1.9 + held:
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


def _warmer(local: Path) -> Callable[[], None]:
    def warm():  # every cache, as an editor (reads) or `git status` (stat only) would have it
        assert "old.txt" in os.listdir(local)
        os.stat(local / "old.txt")
        (local / "old.txt").read_text()  # a read also refreshes the kernel's size: hence stat-only.txt
        os.stat(local / "stat-only.txt")
        with contextlib.suppress(FileNotFoundError):
            os.stat(local / "new.txt")

    return warm


def _read(path: Path):
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def check_one_second_rule(local: Path, guest_write: Callable[[str, str], int],
                          guest_unlink: Callable[[str], None], guest_read: Callable[[str], str]) -> None:
    """Create, change and delete in the guest; write on the host. ``guest_write(name, text)``
    returns the file's mtime in the guest (whole seconds, as SFTP carries it)."""
    guest_write("old.txt", "v1\n")
    guest_write("stat-only.txt", "v1\n")
    warm = _warmer(local)

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


def check_bound(local: Path, guest_write: Callable[[str, str], int], guest_unlink: Callable[[str], None],
                held: int, bound: float) -> Dict[str, float]:
    """The same guest changes at the same worst moment, for a mount that may show the old state for
    ``bound`` s (sshfs keeping entries ``held`` s more): each is seen in full (listing, stat and
    contents) within ``bound``, and later than LIMIT, so the caches really do hold it. A file the
    host has read and the guest rewrites with the same size reads the new bytes at once when reopened
    (no page kept across opens). Returns the seconds each change took to show."""
    guest_write("old.txt", "v1\n")
    guest_write("stat-only.txt", "v1\n")
    warm = _warmer(local)
    took, mtimes = {}, {}

    def listing():
        assert "old.txt" in os.listdir(local)

    def created():
        return "new.txt" in os.listdir(local) and _stat_is(local / "new.txt", len("from the guest\n"), mtimes["new"]) \
            and _read(local / "new.txt") == "from the guest\n"

    since = change_at_the_worst_moment(warm, lambda: mtimes.update(new=guest_write("new.txt", "from the guest\n")),
                                       held, listing)
    took["create"] = seen_within(created, bound, since)
    since = change_at_the_worst_moment(warm, lambda: mtimes.update(st=guest_write("stat-only.txt", "v2, longer\n")),
                                       held, listing)
    took["stat"] = seen_within(lambda: _stat_is(local / "stat-only.txt", len("v2, longer\n"), mtimes["st"]),
                               bound, since)
    since = change_at_the_worst_moment(warm, lambda: guest_write("old.txt", "v2, longer\n"), held, listing)
    took["contents"] = seen_within(lambda: _read(local / "old.txt") == "v2, longer\n", bound, since)
    since = change_at_the_worst_moment(warm, lambda: guest_unlink("new.txt"), held, listing)
    took["delete"] = seen_within(lambda: _read(local / "new.txt") is None and "new.txt" not in os.listdir(local),
                                 bound, since)
    for what, seconds in took.items():
        assert seconds > LIMIT, f"{what} seen after {seconds:.2f} s: this mount does not cache as relaxed"
    (local / "old.txt").read_text()
    since = time.monotonic()
    guest_write("old.txt", "v3, same s\n")  # as long as "v2, longer\n"
    took["same-size reopen"] = seen_within(lambda: _read(local / "old.txt") == "v3, same s\n", LIMIT, since)
    return took


def check_host_writes(local: Path, guest_read: Callable[[str], str]) -> None:
    """What the host writes through the mount, the host sees at once, however long the caches are:
    new, longer, renamed and deleted files, with every cache warm; and the guest has it at close."""
    (local / "a.txt").write_text("a\n")
    for _ in range(2):  # warm: listing, names, attributes, contents, and "no such file"
        os.listdir(local)
        os.stat(local / "a.txt")
        (local / "a.txt").read_text()
        for name in ("b.txt", "c.txt"):
            with contextlib.suppress(FileNotFoundError):
                os.stat(local / name)
    (local / "a.txt").write_text("a, now longer\n")
    assert os.stat(local / "a.txt").st_size == len("a, now longer\n")
    assert (local / "a.txt").read_text() == "a, now longer\n"
    (local / "b.txt").write_text("b\n")
    assert "b.txt" in os.listdir(local) and (local / "b.txt").read_text() == "b\n"
    os.rename(local / "b.txt", local / "c.txt")
    assert not (local / "b.txt").exists() and (local / "c.txt").read_text() == "b\n"
    assert sorted(n for n in os.listdir(local) if n in ("b.txt", "c.txt")) == ["c.txt"]
    (local / "c.txt").unlink()
    assert not (local / "c.txt").exists() and "c.txt" not in os.listdir(local)
    (local / "d").mkdir()
    (local / "d" / "e.txt").write_text("e\n")
    assert os.listdir(local / "d") == ["e.txt"]
    assert guest_read("a.txt") == "a, now longer\n" and guest_read("d/e.txt") == "e\n"
