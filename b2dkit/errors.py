"""One error hierarchy whose messages are written for the person at the keyboard.

Every message is one line that says what went wrong and, where we know it, what to do.
The task layer prints ``str(error)`` and exits non-zero; nothing else is shown to users.
Blame decides the class (as in pycdlib): the user's input, the outside world, or our bug.
"""


class B2dkitError(Exception):
    """Base class; never raised itself."""

    exit_code = 1

    def __init__(self, message, hint=None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self):
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class InputError(B2dkitError):
    """The user's input is wrong: a flag, a port spec, a boot code, a path."""

    exit_code = 2


class ProfileError(InputError):
    """A profile file is malformed or fails validation."""


class IsoError(B2dkitError):
    """An ISO image is not what we need (not an ISO, no isolinux config, no boot entry)."""


class ToolMissing(B2dkitError):
    """An external program (VBoxManage, qemu, sshfs, xorriso) is not installed."""

    exit_code = 3


class HypervisorError(B2dkitError):
    """The hypervisor refused or failed an operation."""


class VMNotFound(HypervisorError):
    """The named VM does not exist."""


class PortInUse(InputError):
    """A host port we want to forward is already taken."""


class GuestError(B2dkitError):
    """The guest did not answer as expected (SSH, boot, set-up)."""


class DownloadError(B2dkitError):
    """Fetching an ISO failed on every mirror, or its checksum did not match."""


class MountError(B2dkitError):
    """An sshfs mount could not be made, checked or removed."""


class InternalError(B2dkitError):
    """A bug in b2dkit; the message asks for a report."""
