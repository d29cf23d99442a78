"""What a step will change, in the words a user reads: the one shape every decide function returns.

pyinfra's model: a step reads the current state (its *fact* function), a pure ``changes(current,
wanted)`` says only what differs, and ``apply`` acts on exactly those changes.  A dry run prints
the changes (``would: X``), a real run prints the same lines as it applies them (``done: X``), so
the two cannot say different things.
"""

from dataclasses import dataclass, field
from typing import Any, List


@dataclass(frozen=True)
class Change:
    """One change: ``text`` is the line the user reads (``memory 1024 → 2048 MB``); ``kind`` and
    ``value`` are what the step's ``apply`` needs to make it (``value`` is never shown)."""

    text: str
    kind: str = ""
    value: Any = field(default=None, compare=False)
    past: str = field(default="", compare=False)  # the line once made, when the tense matters

    def __str__(self) -> str:
        return self.text

    @property
    def done(self) -> str:
        """What a real run says once it made the change (``done: …``)."""
        return self.past or self.text


@dataclass
class Decision:
    """What one step found: the changes it will make and, in words, what is already in place."""

    changes: List[Change] = field(default_factory=list)
    kept: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)  # what the step cannot do, and why


def texts(changes: List[Change]) -> List[str]:
    """The lines of ``changes``, in order."""
    return [change.text for change in changes]


def deferred(change: Change, vm: str) -> Change:
    """``change`` to a setting a running VM cannot take: recorded now, made at the VM's next start."""
    return Change(f"{change.text} (VM {vm} is running: takes effect at its next start)", change.kind,
                  change.value)
