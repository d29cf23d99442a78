"""Validate ``--json`` output against b2dkit's shipped JSON Schemas (jsonschema is a test-only dependency)."""

import json

import pytest

from b2dkit import jsonout

jsonschema = pytest.importorskip("jsonschema")
referencing = pytest.importorskip("referencing")


def _registry():
    resources = []
    for path in sorted(jsonout.SCHEMA_DIR.glob("*.schema.json")):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], referencing.Resource.from_contents(schema)))
    return referencing.Registry().with_resources(resources)


def validator(kind: str):
    schema = jsonout.load_schema(kind)
    return jsonschema.Draft202012Validator(schema, registry=_registry())


def validate(kind: str, document) -> None:
    """Raise (with every problem listed) unless ``document`` matches the schema of ``kind``."""
    errors = sorted(validator(kind).iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]
        raise AssertionError(f"{kind} --json does not match its schema:\n" + "\n".join(lines))
