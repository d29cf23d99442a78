"""Reading the JSON records b2dkit writes about a VM (b2dkit.json, QEMU's machine.json), strictly.

A record that is not an object, lacks a key, has one b2dkit never writes or a value of the
wrong type is DamagedRecord: one line naming the file and how to repair it, never a
traceback or a silently half-read VM.
"""

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple, Union

from .errors import DamagedRecord

Kind = Union[type, Tuple[type, ...]]


def read(path: Path, fields: Mapping[str, Kind], repair: str, optional: Tuple[str, ...] = ()) -> Optional[dict]:
    """The record at ``path`` checked against ``fields`` (key → type), or None when there is none.

    ``repair`` is the advice every error ends with; ``optional`` keys may be missing (older records).
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise damaged(path, f"unreadable: {getattr(exc, 'strerror', None) or exc}", repair) from None
    try:
        data: Any = json.loads(text)
    except ValueError:
        raise damaged(path, "not valid JSON (truncated?)" if text.strip() else "empty", repair) from None
    if not isinstance(data, dict):
        raise damaged(path, f"a JSON {type(data).__name__}, not an object", repair)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise damaged(path, f"unknown key {unknown[0]!r}", repair)
    for key, kind in fields.items():
        if key not in data:
            if key in optional:
                continue
            raise damaged(path, f"missing key {key!r}", repair)
        value = data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise damaged(path, f"{key!r} is {type(value).__name__}, not {_kind_name(kind)}", repair)
    return data


def damaged(path: Path, why: str, repair: str) -> DamagedRecord:
    return DamagedRecord(f"{path} is damaged ({why})", hint=repair)


def _kind_name(kind: Kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {"str": "text", "int": "a number", "list": "a list", "dict": "an object"}
    return " or ".join(names.get(k.__name__, k.__name__) for k in kinds)
