"""A TZif file (RFC 8536) made from a POSIX TZ string, so the team's time zone reaches containers.

boot2docker ships no zoneinfo and the seed's teams give a POSIX TZ (``tz=CST-8``). Containers do
not inherit TZ (dockerd runs with a clean environment), but ``-v /etc/localtime:/etc/localtime:ro``
hands them a file, and a TZif version 2+ file needs no database: its footer *is* a POSIX TZ
string, which readers use for every time after the last transition.

The file has no real transitions. For a zone without DST that is all (one local time type).
For a zone with DST rules (``EST5EDT,M3.2.0,M11.1.0``) the footer carries the rules, and one
transition at the start of time (zic's "big bang", -2**59) is added to the 64-bit data: glibc
applies the footer only after the last transition and, with none, would stay on standard time.
"""

import re
import struct
from dataclasses import dataclass
from typing import List, Optional, Tuple

from . import bootcfg
from .errors import InputError

BIG_BANG = -(2**59)  # what zic writes as the first transition of a zone (its -b fat "big bang")

_NAME = r"(?:[A-Za-z]{3,}|<[A-Za-z0-9+\-]{3,}>)"
_OFFSET = r"[+-]?\d{1,3}(?::\d{2}(?::\d{2})?)?"
_PARTS = re.compile(
    rf"^(?P<std>{_NAME})(?P<std_off>{_OFFSET})"
    rf"(?:(?P<dst>{_NAME})(?P<dst_off>{_OFFSET})?(?P<rule>,[^,]+,[^,]+)?)?$"
)
_RULE_TIME = re.compile(r"/([+-]?\d+)")


@dataclass(frozen=True)
class PosixTZ:
    """The parts of a POSIX TZ string a TZif file needs (UTC offsets east-positive, in seconds)."""

    text: str
    std: str
    std_utoff: int
    dst: Optional[str] = None
    dst_utoff: Optional[int] = None
    rule: Optional[str] = None


def _seconds(text: str) -> int:
    sign = -1 if text.startswith("-") else 1
    fields = [int(part) for part in text.lstrip("+-").split(":")]
    fields += [0] * (3 - len(fields))
    return sign * (fields[0] * 3600 + fields[1] * 60 + fields[2])


def _designation(name: str) -> str:
    return name[1:-1] if name.startswith("<") else name


def parse(text: str) -> PosixTZ:
    """Split a POSIX TZ string; the same strings the ``tz`` boot code accepts, but a DST zone needs rules."""
    value = bootcfg.validate_tz(str(text).strip())
    match = _PARTS.match(value)
    if not match:  # validate_tz accepted it, so this is our bug, but say it plainly
        raise InputError(f"time zone {value!r} cannot be turned into /etc/localtime")
    std_utoff = -_seconds(match["std_off"])  # POSIX offsets are west-positive
    if not match["dst"]:
        return PosixTZ(value, _designation(match["std"]), std_utoff)
    if not match["rule"]:
        raise InputError(
            f"time zone {value!r} has daylight saving time but no rules saying when: "
            f"add them, e.g. {value},M3.2.0,M11.1.0"
        )
    dst_utoff = -_seconds(match["dst_off"]) if match["dst_off"] else std_utoff + 3600
    return PosixTZ(value, _designation(match["std"]), std_utoff, _designation(match["dst"]), dst_utoff,
                   match["rule"][1:])


def _version(tz: PosixTZ) -> bytes:
    """'3' only when the rule uses RFC 8536's extension (transition hours beyond 0..24)."""
    hours = [int(h) for h in _RULE_TIME.findall(tz.rule or "")]
    return b"3" if any(h < 0 or h > 24 for h in hours) else b"2"


def _block(times: List[int], types: List[Tuple[int, int, int]], chars: bytes,
           time_format: str) -> Tuple[bytes, bytes]:
    header_counts = struct.pack(">6l", 0, 0, 0, len(times), len(types), len(chars))
    body = b"".join(struct.pack(time_format, t) for t in times)
    body += bytes(0 for _ in times)  # every transition goes to type 0 (standard time)
    body += b"".join(struct.pack(">lBB", utoff, isdst, index) for utoff, isdst, index in types)
    return header_counts, body + chars


def build(text: str) -> bytes:
    """The TZif bytes for a POSIX TZ string such as ``CST-8``, ``IST-5:30`` or ``EST5EDT,M3.2.0,M11.1.0``."""
    tz = parse(text)
    chars = tz.std.encode("ascii") + b"\0"
    types = [(tz.std_utoff, 0, 0)]
    if tz.dst and tz.dst_utoff is not None:
        types.append((tz.dst_utoff, 1, len(chars)))
        chars += tz.dst.encode("ascii") + b"\0"
    version = _version(tz)
    # v1 (32-bit) data: no transitions (the big bang does not fit); v2+ (64-bit) data: see the module doc.
    counts1, body1 = _block([], types, chars, ">l")
    counts2, body2 = _block([BIG_BANG] if tz.dst else [], types, chars, ">q")
    header = b"TZif" + version + b"\0" * 15
    return header + counts1 + body1 + header + counts2 + body2 + b"\n" + tz.text.encode("ascii") + b"\n"
