"""The one QEMU clean-up for tests and benchmarks: no qemu process outlives the run that made it."""

import contextlib
import os
import signal
from pathlib import Path
from typing import List, Optional

from b2dkit.hypervisors.qemu import qemusystem


def qemu_pids(root: Optional[Path] = None) -> List[int]:
    """PIDs of QEMU processes whose command line mentions ``root`` (ours, not other tests'); all of them
    without one."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        mine = root is None or any((str(root) + "/").encode() in a for a in argv)
        if argv and b"qemu-system" in argv[0] and mine:
            found.append(int(entry.name))
    return found


def stop_qemu(pidfile: Path, qmp_socket: Optional[Path] = None, timeout: float = 30.0) -> None:
    """Power button first when there is a monitor (the disk is the VM's own), SIGKILL if it hangs."""
    pid = qemusystem.read_pid(pidfile)
    if not pid or not qemusystem.process_alive(pid, str(pidfile)):
        return
    if qmp_socket is not None:
        with contextlib.suppress(Exception):
            with qemusystem.QMP(qmp_socket) as mon:
                mon.execute("system_powerdown")
        if qemusystem.wait_exit(pid, timeout, str(pidfile)):
            return
    qemusystem.kill(pid)
    qemusystem.wait_exit(pid, 5.0)


def kill_all(root: Path) -> None:
    """SIGKILL every QEMU that runs from under ``root`` and wait until each is gone."""
    for pid in qemu_pids(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        qemusystem.wait_exit(pid, 5.0)
