"""Read and edit ISOLINUX/SYSLINUX configs: put kernel boot codes on ``append`` lines.

Pure text in, text out (no I/O), so the ISO layer and the profile validator share one
notion of what a valid boot code is. Edits touch only the tokens they change: tabs,
comments, CRLF, keyword case and every other byte stay as they were, because a
boot2docker cfg is somebody's hand-written file and diffs of it should stay readable.

Syslinux syntax as implemented in syslinux ``com32/elflink/ldlinux/readconfig.c``:
one directive per line, keyword case-insensitive, ``#`` starts a comment line, the
rest of an ``append`` line is the kernel command line, ``append -`` means "none", and
an ``append`` before the first ``label`` is the global default for labels without one.
"""

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from .errors import InputError

# Kernel-like directives: the value names what the label boots.
_KERNEL_KEYWORDS = {"kernel", "linux", "boot", "bss", "pxe", "fdimage", "comboot", "com32", "config"}
# KERNEL picks the loader by extension; these ones do not start a Linux kernel,
# so codes like tz= would be handed to a menu module or a boot sector instead.
_NON_LINUX_EXTENSIONS = (".c32", ".cbt", ".com", ".bs", ".bin", ".bss", ".0", ".img")

_LINE = re.compile(r"^(?P<indent>[ \t]*)(?P<kw>[^ \t]+)?(?P<sep>[ \t]*)(?P<rest>.*?)(?P<trail>[ \t]*)$", re.S)
_KEY = re.compile(r"^[A-Za-z0-9_.:\-]+$")

# POSIX TZ (IEEE 1003.1 §8.3): std offset [dst [offset] [,start[/time],end[/time]]]
_TZ_NAME = r"(?:[A-Za-z]{3,}|<[A-Za-z0-9+\-]{3,}>)"
_TZ_OFFSET = r"[+-]?\d{1,2}(?::\d{2}(?::\d{2})?)?"
_TZ_TIME = r"[+-]?\d{1,3}(?::\d{2}(?::\d{2})?)?"
_TZ_DATE = r"(?:J\d{1,3}|\d{1,3}|M\d{1,2}\.\d\.\d)"
_TZ_RULE = rf",{_TZ_DATE}(?:/{_TZ_TIME})?,{_TZ_DATE}(?:/{_TZ_TIME})?"
_TZ = re.compile(
    rf"^(?P<std>{_TZ_NAME})(?P<offset>{_TZ_OFFSET})(?:(?P<dst>{_TZ_NAME})(?:{_TZ_OFFSET})?(?:{_TZ_RULE})?)?$"
)
_TZ_HINT = "boot2docker ships no zoneinfo; use a POSIX TZ such as CST-8 for UTC+8"


@dataclass
class Label:
    """One ``label`` block as the boot loader sees it."""

    name: str
    kernel: Optional[str] = None  # the whole KERNEL/LINUX value, arguments included
    initrd: Optional[str] = None  # from INITRD, else from an initrd= code in append
    append: Optional[str] = None  # None: the label has no append line of its own
    kernel_keyword: Optional[str] = None

    @property
    def kernel_path(self) -> Optional[str]:
        return self.kernel.split()[0] if self.kernel else None

    @property
    def boots_linux(self) -> bool:
        """False for menu modules, chain loaders and local boot: boot codes mean nothing there."""
        if self.kernel_keyword is None:
            return False
        if self.kernel_keyword in ("kernel",):
            return not (self.kernel_path or "").lower().endswith(_NON_LINUX_EXTENSIONS)
        return self.kernel_keyword == "linux"


@dataclass
class BootConfig:
    labels: List[Label] = field(default_factory=list)
    default: Optional[str] = None
    newline: bytes = b"\n"
    global_append: Optional[str] = None
    includes: List[str] = field(default_factory=list)

    def label(self, name: str) -> Label:
        return self.labels[_find_label(self.labels, name)]


def parse_code(text: str) -> Tuple[str, Optional[str]]:
    """Split one kernel boot code into (key, value); a bare flag has value None.

    Spaces and quotes are refused outright: the append line has no quoting, so they
    would silently become two codes (or a literal quote) on the kernel command line.
    """
    if not isinstance(text, str) or text == "":
        raise InputError("empty boot code: use key=value (tz=CST-8) or a bare flag (noembed)")
    bad = next((c for c in text if not ("!" <= c <= "~")), None)
    if bad is not None:
        what = "a space" if bad in " \t" else f"the character {bad!r}"
        raise InputError(f"invalid boot code {text!r}: it contains {what}; boot codes are single words")
    if any(q in text for q in "\"'`"):
        raise InputError(
            f"invalid boot code {text!r}: quotes are not allowed (the append line has no quoting)"
        )
    key, eq, value = text.partition("=")
    if not key:
        raise InputError(f"invalid boot code {text!r}: '=' needs a key before it, e.g. tz=CST-8")
    if not _KEY.match(key):
        raise InputError(
            f"invalid boot code {text!r}: the key may use only letters, digits, '_', '.', ':', '-'"
        )
    return (key, value) if eq else (key, None)


def check_code(text: str) -> str:
    """Validate one code, including the values we understand (tz); return it unchanged."""
    key, value = parse_code(text)
    if key == "tz":
        if value is None:
            raise InputError(f"invalid boot code {text!r}: tz needs a value, e.g. tz=CST-8")
        validate_tz(value)
    return text


def validate_tz(value: str) -> str:
    """Accept a POSIX TZ string (``CST-8``, ``IST-5:30``, ``UTC0``); refuse IANA names.

    boot2docker ships no /usr/share/zoneinfo, so ``Asia/Shanghai`` would silently mean UTC.
    """
    if not isinstance(value, str) or not value:
        raise InputError(f"empty time zone ({_TZ_HINT})")
    m = _TZ.match(value)
    if not m:
        if "/" in value:
            raise InputError(f"time zone {value!r} is an IANA zone name, not a POSIX TZ string ({_TZ_HINT})")
        if re.fullmatch(r"[A-Za-z]{3,}", value):
            raise InputError(
                f"time zone {value!r} has no UTC offset (a POSIX TZ needs one, e.g. {value}0 or CST-8)"
            )
        raise InputError(f"time zone {value!r} is not a POSIX TZ string ({_TZ_HINT})")
    hours = int(m.group("offset").lstrip("+-").split(":")[0])
    if hours > 24:
        raise InputError(f"time zone {value!r} has an offset over 24 hours ({_TZ_HINT})")
    return value


def tz_utc_offset(value: str) -> str:
    """``CST-8`` -> ``UTC+08:00``: POSIX offsets count west of Greenwich, so the sign flips."""
    m = _TZ.match(validate_tz(value))
    assert m is not None  # validate_tz accepted it
    offset = m.group("offset")
    west = not offset.startswith("-")
    parts = [int(p) for p in offset.lstrip("+-").split(":")] + [0, 0]
    hours, minutes = parts[0], parts[1]
    if hours == 0 and minutes == 0:
        return "UTC+00:00"
    return f"UTC{'-' if west else '+'}{hours:02d}:{minutes:02d}"


# --- parsing -----------------------------------------------------------------


@dataclass
class _Line:
    index: int
    text: str  # without the line ending
    ending: str
    indent: str = ""
    keyword: Optional[str] = None  # lower-case directive, None for blank/comment lines
    raw_keyword: str = ""
    sep: str = ""
    rest: str = ""
    trail: str = ""


def _split_lines(text: str) -> List[_Line]:
    # Only \n ends a line for syslinux; str.splitlines() would also split on \x0c, \x85 ...
    lines = []
    for i, chunk in enumerate(re.findall(r"[^\n]*\n|[^\n]+$", text)):
        if chunk.endswith("\r\n"):
            body, ending = chunk[:-2], "\r\n"
        elif chunk.endswith("\n"):
            body, ending = chunk[:-1], "\n"
        else:
            body, ending = chunk, ""
        line = _Line(i, body, ending)
        m = _LINE.match(body)
        assert m is not None  # the pattern matches any line
        kw = m.group("kw")
        if kw and not kw.startswith("#"):
            line.indent, line.raw_keyword = m.group("indent"), kw
            line.keyword = kw.lower()
            line.sep, line.rest, line.trail = m.group("sep"), m.group("rest"), m.group("trail")
        lines.append(line)
    return lines


def _decode(cfg: bytes) -> str:
    if not isinstance(cfg, (bytes, bytearray)):
        raise TypeError("isolinux config must be bytes")
    return bytes(cfg).decode("latin-1")  # byte-exact round trip whatever the encoding


def _newline(lines: List[_Line]) -> str:
    return next((ln.ending for ln in lines if ln.ending), "\n")


def _blocks(lines: List[_Line]) -> Iterator[Tuple[Optional[str], List[_Line]]]:
    """Yield (label name or None for the global part, its lines)."""
    current: Optional[str] = None
    block: List[_Line] = []
    for line in lines:
        if line.keyword == "label":
            yield current, block
            current, block = line.rest, [line]
        else:
            block.append(line)
    yield current, block


def _label_from_block(name: str, block: List[_Line]) -> Label:
    label = Label(name=name)
    for line in block[1:]:
        if line.keyword in _KERNEL_KEYWORDS:
            label.kernel, label.kernel_keyword = line.rest, line.keyword
        elif line.keyword == "initrd":
            label.initrd = line.rest
        elif line.keyword == "append":
            label.append = line.rest
        elif line.keyword == "localboot":
            label.kernel_keyword = "localboot"
    if label.initrd is None and label.append:
        label.initrd = next((t[7:] for t in label.append.split() if t.startswith("initrd=")), None)
    return label


def parse(cfg: bytes) -> BootConfig:
    lines = _split_lines(_decode(cfg))
    config = BootConfig(newline=_newline(lines).encode("ascii"))
    for name, block in _blocks(lines):
        if name is None:
            for line in block:
                if line.keyword == "default":
                    config.default = line.rest
                elif line.keyword == "append":
                    config.global_append = line.rest
                elif line.keyword == "include":
                    config.includes.append(line.rest)
        else:
            config.labels.append(_label_from_block(name, block))
            config.includes.extend(ln.rest for ln in block if ln.keyword == "include")
    return config


def _find_label(labels: List[Label], name: str) -> int:
    for i, label in enumerate(labels):
        if label.name == name:
            return i
    folded = [i for i, label in enumerate(labels) if label.name.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    known = ", ".join(label.name for label in labels) or "none"
    raise InputError(f"no label {name!r} in the isolinux config (labels: {known})")


# --- editing -----------------------------------------------------------------


def normalize_codes(set_codes: Iterable[str] = (), remove: Iterable[str] = ()) -> Tuple[List[str], List[str]]:
    """Validate a change set; refuse contradictions before anything is edited."""
    set_codes = [check_code(c) for c in set_codes]
    remove = [c for c in remove]
    for code in remove:
        parse_code(code)
    seen: Dict[str, str] = {}
    for code in set_codes:
        key = parse_code(code)[0]
        if key in seen and seen[key] != code:
            raise InputError(f"boot codes {seen[key]!r} and {code!r} set {key} twice; give it once")
        seen[key] = code
    for code in remove:
        key = parse_code(code)[0]
        if key in seen:
            raise InputError(f"boot code {key!r} is both set ({seen[key]}) and removed; choose one")
    return list(dict.fromkeys(set_codes)), list(dict.fromkeys(remove))


def _tokens(value: str) -> List[List[str]]:
    """[[separator-before, token], ...] so edits keep the original spacing."""
    if value.strip() == "-":
        return []
    return [[m.group(1), m.group(2)] for m in re.finditer(r"([ \t]*)([^ \t]+)", value)]


def _edit_tokens(tokens: List[List[str]], set_codes: List[str], remove: List[str]) -> List[List[str]]:
    tokens = [list(t) for t in tokens]

    def matches(token: str, code: str) -> bool:
        if "=" in code and code in remove:
            return token == code  # removing key=value removes exactly that code
        return token.partition("=")[0] == parse_code(code)[0]

    for code in remove:
        tokens = [t for t in tokens if not matches(t[1], code)]
    for code in set_codes:
        if any(t[1] == code for t in tokens):
            hits = [i for i, t in enumerate(tokens) if matches(t[1], code)]
            keep = next(i for i in hits if tokens[i][1] == code)
        else:
            hits = [i for i, t in enumerate(tokens) if matches(t[1], code)]
            if hits:
                keep = hits[0]
                tokens[keep][1] = code
            else:
                tokens.append([" ", code])
                keep = len(tokens) - 1
                hits = [keep]
        # One value per key: tc-config and the kernel take the last, which would be
        # an old value left behind after ours.
        drop = set(hits) - {keep}
        tokens = [t for i, t in enumerate(tokens) if i not in drop]
    if tokens:
        tokens[0][0] = ""
    return tokens


def _join(tokens: List[List[str]]) -> str:
    return "".join(sep + tok for sep, tok in tokens) if tokens else "-"


def _rewrite_append(line: _Line, set_codes: List[str], remove: List[str]) -> None:
    before = _tokens(line.rest)
    after = _edit_tokens(before, set_codes, remove)
    if after == before or (not before and not after):
        return
    check_command_line(_join(after))
    sep = line.sep or " "
    line.text = f"{line.indent}{line.raw_keyword}{sep}{_join(after)}{line.trail}"


KERNEL_CMDLINE_MAX = 2047  # x86 Linux COMMAND_LINE_SIZE is 2048 with the NUL: the rest is cut off silently


def check_command_line(value: str) -> str:
    """Refuse an append line the kernel would truncate: the codes at its end would be lost unseen."""
    if len(value.encode()) > KERNEL_CMDLINE_MAX:
        raise InputError(
            f"the boot codes make a kernel command line of {len(value.encode())} bytes; Linux keeps only the "
            f"first {KERNEL_CMDLINE_MAX}, so shorten or drop some boot codes"
        )
    return value


def _new_append_line(block: List[_Line], sibling_indent: Optional[str], value: str, newline: str) -> _Line:
    label_line = block[0]
    body = [ln for ln in block[1:] if ln.keyword]
    if body:
        indent = body[0].indent
    elif sibling_indent is not None:
        indent = sibling_indent
    else:
        indent = label_line.indent + "\t"
    upper = any(ln.raw_keyword.isupper() for ln in block if ln.keyword)
    text = f"{indent}{'APPEND' if upper else 'append'} {check_command_line(value)}"
    return _Line(-1, text, newline, keyword="append")


def apply(
    cfg: bytes, set_codes: Iterable[str] = (), remove: Iterable[str] = (), label: Optional[str] = None
) -> bytes:
    """Set (add or replace) and remove boot codes on the append line of every Linux label, or one label.

    Idempotent: applying the same change to the output returns it unchanged.
    """
    set_codes, remove = normalize_codes(set_codes, remove)
    lines = _split_lines(_decode(cfg))
    newline = _newline(lines)
    blocks = list(_blocks(lines))
    labelled = [(name, block) for name, block in blocks if name is not None]
    if not labelled:
        raise InputError("the isolinux config has no LABEL to put boot codes on")
    labels = [_label_from_block(name, block) for name, block in labelled]
    if label is not None:
        targets = [_find_label(labels, label)]
    else:
        targets = [i for i, lb in enumerate(labels) if lb.boots_linux]
        if not targets:
            raise InputError(
                "the isolinux config has no label that boots a Linux kernel; name one with --label"
            )

    global_block = blocks[0][1]
    global_append = next((ln for ln in reversed(global_block) if ln.keyword == "append"), None)
    edit_global = label is None and global_append is not None
    if edit_global and global_append is not None:
        _rewrite_append(global_append, set_codes, remove)
    sibling_indent = next((ln.indent for _, b in labelled for ln in b[1:] if ln.keyword == "append"), None)

    inserts = {}  # line index -> new line to put after it
    for i in targets:
        name, block = labelled[i]
        appends = [ln for ln in block if ln.keyword == "append"]
        if appends:
            # syslinux keeps the last append of a label; earlier ones are dead text.
            _rewrite_append(appends[-1], set_codes, remove)
            continue
        if edit_global:
            continue  # the label inherits the global append we just edited
        inherited = _tokens(global_append.rest) if global_append is not None else []
        tokens = _edit_tokens(inherited, set_codes, remove)
        if tokens == inherited:
            continue
        last = max((ln for ln in block if ln.keyword), key=lambda ln: ln.index)
        inserts[last.index] = _new_append_line(block, sibling_indent, _join(tokens), newline)

    out = []
    for line in lines:
        new = inserts.get(line.index)
        if new is not None and not line.ending:
            out.append(line.text + newline)  # the file had no final newline: keep it that way
            out.append(new.text)
            continue
        out.append(line.text + line.ending)
        if new is not None:
            out.append(new.text + new.ending)
    return "".join(out).encode("latin-1")
