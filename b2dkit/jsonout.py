"""The documents ``--json`` prints: one versioned shape per task, described by a JSON Schema.

Scripts and IDE plugins read ``vm.status --json`` and friends, so the shape is a contract:
``b2dkit/schemas/v<N>/<task>.schema.json`` describes it and every document carries a top-level
``schema_version``.  Adding a field keeps the version; removing or renaming one, or changing
its type, bumps it (and the old schema files stay).  The tests validate real output against
the schemas.
"""

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Sequence

if TYPE_CHECKING:  # for the checker only: these modules print through this one
    from .doctor import Check
    from .forwards import Forward
    from .profile import Profile

# A document as json.dumps takes it: nested plain data, whose shape the schemas (not Python) fix.
Document = Dict[str, Any]

SCHEMA_VERSION = 1
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas" / f"v{SCHEMA_VERSION}"
KINDS = ("vm.status", "vm.list", "vm.forwards", "vm.mounts", "doctor", "profile.show")


def schema_path(kind: str) -> Path:
    return SCHEMA_DIR / f"{kind}.schema.json"


def load_schema(kind: str) -> Dict[str, Any]:
    return json.loads(schema_path(kind).read_text(encoding="utf-8"))


def document(**fields: Any) -> Document:
    return {"schema_version": SCHEMA_VERSION, **fields}


def vm_status(info: Dict[str, Any]) -> Document:
    return document(**info)


def vm_list(rows: List[Dict[str, Any]]) -> Document:
    return document(vms=rows)


def vm_forwards(name: str, rules: Iterable["Forward"]) -> Document:
    return document(name=name, forwards=[rule.to_dict() for rule in sorted(rules)])


def vm_mounts(name: str, rows: List[Dict[str, Any]]) -> Document:
    return document(name=name, mounts=rows)


def doctor(profile: "Profile", checks: Sequence["Check"]) -> Document:
    return document(profile=profile.profile_name, provider=profile.provider, ok=all(c.ok for c in checks),
                    checks=[dataclasses.asdict(check) for check in checks])


def profile_show(profile: "Profile") -> Document:
    from .profile import display_path

    return document(profile=profile.profile_name, chain=[display_path(path) for path in profile.chain],
                    settings=profile.to_dict())
