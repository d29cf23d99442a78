"""One error hierarchy, by blame: whose move is it to fix this?

Every message is one line that says what went wrong and, where we know it, what to do.
Three roots a user can act on, each with its exit code (README, "Exit codes"):

* ``InputError`` (2): the user's input is wrong (a profile, an argument, a VM name, an ISO);
* ``MachineError`` (3): this machine or what runs on it (a missing tool, a busy port, a
  hypervisor that refuses, a guest that does not answer, a mirror that fails);
* ``InternalError`` (70): a bug in b2dkit; the top level logs the traceback and asks for a report.

Subsystems subclass one of them (``VBoxError(HypervisorError)``, ``QMPError``...), so the
class tells the task layer the exit code and the user whose move it is.
"""

from typing import Optional


class B2dkitError(Exception):
    """Base class; never raised itself."""

    exit_code = 1

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


# -- the user's input: exit 2 -------------------------------------------------------------------


class InputError(B2dkitError):
    """The user's input is wrong: a flag, a port spec, a boot code, a path."""

    exit_code = 2


class ProfileError(InputError):
    """A profile file is malformed or fails validation."""


class IsoError(InputError):
    """An ISO image is not what we need (not an ISO, no isolinux config, no boot entry)."""


class VMNotFound(InputError):
    """The named VM does not exist."""


class Interrupted(InputError):
    """The user pressed Ctrl-C; what was finished is kept."""

    exit_code = 130


# -- this machine and what runs on it: exit 3 ---------------------------------------------------


class MachineError(B2dkitError):
    """The machine, a program on it or a remote service failed or refused; not the input."""

    exit_code = 3


class ToolMissing(MachineError):
    """An external program (VBoxManage, qemu, sshfs, ssh) is not installed."""


class HypervisorError(MachineError):
    """The hypervisor refused or failed an operation."""


class PortInUse(MachineError):
    """A host port we want to forward is already taken (by another program or rule)."""


class PortDenied(MachineError):
    """The host refuses this user a port (EACCES: below 1024 without privilege)."""


class GuestError(MachineError):
    """The guest did not answer as expected (SSH, boot, set-up)."""


class DownloadError(MachineError):
    """Fetching an ISO failed on every mirror, or its checksum did not match."""


class MountError(MachineError):
    """An sshfs mount could not be made, checked or removed."""


class ChecksFailed(MachineError):
    """Pre-flight checks (doctor) found something missing on this machine."""


# -- our own bug: exit 70 -----------------------------------------------------------------------


class InternalError(B2dkitError):
    """A bug in b2dkit; the message asks for a report."""

    exit_code = 70
