"""Edit a profile file in place, keeping its comments, key order and layout.

A team commits its profiles, so a tool that changes one (``iso.pin``) must leave a diff
a reviewer can read: the changed lines and nothing else.  PyYAML can only re-dump a file
(comments gone, keys re-ordered); ruamel.yaml's round-trip mode keeps comments, order,
flow/block style and quoting.  It does not detect a file's indentation, so that is guessed
from the text here, and the result is validated as a profile before it replaces the file
(temp file + rename: an interrupted or invalid edit leaves the file as it was).
"""

import difflib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from . import atomic
from . import profile as profiles
from .errors import ProfileError
from .paths import StrPath

_KEY_LINE = re.compile(r"^( *)[^\s#-][^#]*?:\s*(#.*)?$")  # `key:` opening a nested block
_ITEM_LINE = re.compile(r"^( *)- ")


@dataclass
class Edit:
    """A decided change to one file: readable ``changes``, then ``apply`` writes ``new_text``."""

    path: Path
    old_text: str
    new_text: str
    changes: List[str] = field(default_factory=list)  # "iso.sha256: UNVERIFIED -> 3f2a…"

    @property
    def changed(self) -> bool:
        return self.new_text != self.old_text

    def diff(self) -> List[str]:
        name = profiles.display_path(self.path)
        lines = difflib.unified_diff(
            self.old_text.splitlines(True), self.new_text.splitlines(True), f"a/{name}", f"b/{name}", n=0
        )
        return [line.rstrip("\n") for line in lines]

    def apply(self) -> None:
        """Write ``new_text`` over the file (temp file + rename), keeping its permissions."""
        if not self.changed:
            return
        mode = self.path.stat().st_mode & 0o7777
        with atomic.atomic_path(self.path, mode=mode) as tmp:
            tmp.write_text(self.new_text, encoding="utf-8")


def defining_file(profile: profiles.Profile, key: str) -> Path:
    """The nearest file of ``profile``'s extends chain that sets ``key`` itself.

    ``cst`` takes its ISO from ``default``, so pinning cst's ISO edits ``default.yaml``:
    the one line every profile extending it shares.
    """
    for path in profile.chain:
        if key in read(path):
            return path
    raise ProfileError(f"no file of profile {profile.profile_name!r} sets {key!r}")


def iso_edit(path: StrPath, urls: Optional[Sequence[str]] = None, sha256: Optional[str] = None,
             local_path: Optional[str] = None) -> Edit:
    """Decide the edit that makes ``path``'s ``iso`` say: these ``urls`` (or ``local_path``) and ``sha256``.

    ``urls=None`` keeps the file's URLs.  Writing URLs drops ``path``/``build``; writing a
    local path drops ``urls``/``build`` (a profile names one image).
    """
    path = Path(path).resolve()  # a symlinked profile: edit the file it points to
    text = path.read_text(encoding="utf-8")
    yaml, data = _load(path, text)
    iso = data.get("iso") if isinstance(data, CommentedMap) else None
    if not isinstance(iso, CommentedMap):
        raise ProfileError(f"{profiles.display_path(path)}: no iso mapping to edit")
    changes: List[str] = []
    if local_path is not None:
        _replace_keys(iso, ("urls", "build"), "path", local_path, changes)
    elif urls is not None:
        old = iso.get("urls")
        if not (isinstance(old, list) and list(old) == list(urls)):
            if isinstance(old, CommentedSeq) and old:  # in place: keeps its style and comments
                changes.append(f"iso.urls: {_show(list(old))} -> {_show(list(urls))}")
                _replace_items(old, urls)
            else:
                _replace_keys(iso, ("path", "build"), "urls", CommentedSeq(urls), changes)
    if sha256 is not None and iso.get("sha256") != sha256:
        changes.append(f"iso.sha256: {iso.get('sha256', '(none)')} -> {sha256}")
        if "sha256" in iso:
            iso["sha256"] = sha256
        else:
            anchor = "path" if local_path is not None else "urls"
            position = list(iso).index(anchor) + 1 if anchor in iso else len(iso)
            iso.insert(position, "sha256", sha256)
    new_text = _dump(yaml, data) if changes else text
    if new_text != text:
        profiles.check_layer(path, new_text)  # never write a file b2dkit itself would refuse
    return Edit(path=path, old_text=text, new_text=new_text, changes=changes)


def set_top_level(path: StrPath, text: str, key: str, value: str) -> str:
    """``text`` (the content of ``path``) with the top-level ``key`` set to ``value``, layout kept."""
    yaml, data = _load(Path(path), text)
    if not isinstance(data, CommentedMap):
        raise ProfileError(f"{profiles.display_path(path)}: the top level is not a mapping")
    if data.get(key) == value:
        return text
    if key in data:
        data[key] = value
    else:
        data.insert(0, key, value)
    return _dump(yaml, data)


def _replace_keys(iso: CommentedMap, drop: Tuple[str, ...], key: str, value: object, changes: List[str]) -> None:
    """Set ``key`` where the first dropped key was, moving that key's trailing comment to it."""
    position, comment = None, None
    for old in drop:
        if old in iso:
            if position is None:
                position = list(iso).index(old)
            comment = iso.ca.items.pop(old, None) or comment
            changes.append(f"iso.{old}: {_show(iso[old])} -> (removed)")
            del iso[old]
    before = iso.get(key)
    if key in iso:
        iso[key] = value
    else:
        iso.insert(len(iso) if position is None else position, key, value)
    if comment is not None:
        iso.ca.items[key] = comment
    changes.append(f"iso.{key}: {_show(before) if before is not None else '(none)'} -> {_show(value)}")


def _replace_items(seq: CommentedSeq, items: Sequence[str]) -> None:
    """New items in an existing list; the comment after its last item (the lines that
    follow the list) stays after the new last item."""
    comments = dict(seq.ca.items)
    tail = comments.pop(len(seq) - 1, None)
    del seq[:]
    seq.extend(items)
    seq.ca.items.clear()
    seq.ca.items.update({index: c for index, c in comments.items() if index < len(items) - 1})
    if tail is not None:
        seq.ca.items[len(items) - 1] = tail


def _show(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def read(path: StrPath) -> CommentedMap:
    """One file's top-level settings as it writes them (no extends merged in)."""
    path = Path(path)
    data = _load(path, path.read_text(encoding="utf-8"))[1]
    return data if isinstance(data, CommentedMap) else CommentedMap()


def _load(path: Path, text: str) -> Tuple[YAML, Any]:  # Any: whatever YAML the file holds
    yaml = YAML()  # round-trip mode
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long URL or comment
    mapping, sequence, offset = guess_indent(text)
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    try:
        return yaml, yaml.load(text)
    except YAMLError as exc:
        raise ProfileError(f"{profiles.display_path(path)}: invalid YAML: {' '.join(str(exc).split())}") from None


def _dump(yaml: YAML, data: object) -> str:
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def guess_indent(text: str) -> Tuple[int, int, int]:
    """(mapping indent, sequence indent, dash offset) as the file already uses them.

    Defaults are the shipped profiles' style: two spaces per level, list dashes indented
    two under their key (``urls:\\n    - https://…``).
    """
    mapping = offset = None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for here, after in zip(lines, lines[1:]):
        key = _KEY_LINE.match(here)
        if not key:
            continue
        base = len(key.group(1))
        item = _ITEM_LINE.match(after)
        indent = len(after) - len(after.lstrip(" "))
        if item and offset is None and indent >= base:
            offset = indent - base
        elif not item and mapping is None and indent > base:
            mapping = indent - base
        if mapping is not None and offset is not None:
            break
    mapping = 2 if mapping is None else mapping
    offset = 2 if offset is None else offset
    return mapping, offset + 2, offset

