"""Profiles that live elsewhere: ``https://…/team.yaml#sha256=…`` and ``git+URL@REF:path.yaml``.

A team publishes its profile once (a web server, a tag in its repository) and the README's
one line names it, the way Lima names a template by URL and Vagrant a box by URL and
checksum.  The file is fetched into b2dkit's cache and read from there:

* ``#sha256=<64 hex>`` pins the file: it is fetched once, checked, and later loads read the
  cached copy (checked again) with no network; a different file is refused.
* without a pin (or with a git tag or branch, which can move) it is fetched on every load,
  and b2dkit prints what it fetched and its digest, so the README can pin it.  When the
  fetch fails, the last copy is used, with a warning.  A full git commit id pins too.

``extends`` inside a fetched profile resolves relative to it: a path (``base.yaml``,
``../common/base.yaml``) is the file next to it on the same server or at the same git
commit, and may carry its own ``#sha256=``; a bare name (``default``) is a profile on this
machine; a full reference is fetched as such.  A digest pins the file it is attached to,
not the files it extends.
"""

import hashlib
import json
import posixpath
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple, Union
from urllib.parse import urljoin, urlparse

from . import atomic, paths
from .errors import DownloadError, InputError, ProfileError
from .paths import StrPath

if TYPE_CHECKING:  # imported where used: only a remote profile needs the network modules
    from .download import Downloader

PIN = "sha256="
HTTP_SCHEMES = ("https", "http")
GIT_SCHEMES = ("https", "http", "ssh", "file")
SUFFIXES = (".yaml", ".yml")
ORIGIN = "origin.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
Notify = Callable[[str], None]


def _to_stderr(line: str) -> None:
    print(f"b2dkit: {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Ref:
    """One remote profile file: where it is and, optionally, the digest it must have."""

    kind: str  # "http" or "git"
    url: str  # http: the file; git: the repository
    sha256: Optional[str] = None
    ref: Optional[str] = None  # git: tag, branch or commit id
    path: Optional[str] = None  # git: the file inside the repository

    def text(self, pin: Optional[str] = None) -> str:
        """The reference as a user writes it; ``pin`` adds a digest."""
        base = self.url if self.kind == "http" else f"git+{self.url}@{self.ref}:{self.path}"
        digest = pin or self.sha256
        return f"{base}#{PIN}{digest}" if digest else base

    @property
    def name(self) -> str:
        return posixpath.basename(urlparse(self.url).path if self.kind == "http" else self.path or "")

    @property
    def pinned(self) -> bool:
        return bool(self.sha256) or (self.kind == "git" and _is_commit(self.ref))


def is_remote(text: str) -> bool:
    return str(text).startswith(("https://", "http://", "git+"))


def parse(text: str) -> Ref:
    """``https://host/team.yaml#sha256=…`` or ``git+URL@REF:path.yaml[#sha256=…]``."""
    text = str(text).strip()
    base, _, fragment = text.partition("#")
    sha256 = None
    if fragment:
        if not fragment.startswith(PIN) or not _SHA256.match(fragment[len(PIN):].lower()):
            raise InputError(f"{text!r}: the part after # must be sha256=<64 hex digits>")
        sha256 = fragment[len(PIN):].lower()
    if any(ch.isspace() for ch in base):
        raise InputError(f"{text!r} is not a profile URL: it contains spaces")
    if base.startswith("git+"):
        return _parse_git(text, base[len("git+"):], sha256)
    parsed = urlparse(base)
    if parsed.scheme not in HTTP_SCHEMES or not parsed.netloc:
        raise InputError(f"{text!r} is not a profile URL: use https://host/path/team.yaml")
    if not parsed.path.endswith(SUFFIXES):
        raise InputError(f"{text!r} does not name a .yaml file")
    return Ref("http", base, sha256)


def _parse_git(text: str, rest: str, sha256: Optional[str]) -> Ref:
    shape = "git+https://host/repo.git@TAG:path/team.yaml"
    repo, at, tail = rest.rpartition("@")
    ref, colon, path = tail.partition(":")
    parsed = urlparse(repo)
    if not at or not colon or parsed.scheme not in GIT_SCHEMES or not parsed.path.strip("/") or not ref:
        raise InputError(f"{text!r} is not a git profile reference: use {shape}")
    path = posixpath.normpath(path.strip("/"))
    if path.startswith("..") or not path.endswith(SUFFIXES):
        raise InputError(f"{text!r}: {path!r} is not a .yaml file inside the repository ({shape})")
    return Ref("git", repo, sha256, ref, path)


# -- fetching and the cache ------------------------------------------------------------------


def root() -> Path:
    return paths.cache_dir() / "profiles"


def _entry(ref: Ref) -> Path:
    key = hashlib.sha256(ref.text(pin=None).split("#")[0].encode()).hexdigest()[:24]
    return root() / key


def fetch(reference: Union[str, Ref], notify: Notify = _to_stderr, downloader: Optional["Downloader"] = None) -> Path:
    """The cached local copy of a remote profile, fetched (and checked) as its pin requires."""
    ref = reference if isinstance(reference, Ref) else parse(reference)
    entry = _entry(ref)
    target = entry / ref.name
    if ref.pinned and target.is_file() and _cached_ok(target, ref):
        return target
    try:
        data, commit = _download(ref, downloader)
    except DownloadError as exc:
        if not ref.pinned and target.is_file():
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(target.stat().st_mtime))
            notify(f"{exc}; using the copy fetched {when}")
            return target
        raise
    digest = hashlib.sha256(data).hexdigest()
    if ref.sha256 and digest != ref.sha256:
        raise ProfileError(
            f"{ref.text()}: the fetched file has sha256 {digest}, not the pinned {ref.sha256}",
            hint="the profile changed where it is published; ask its owners, then pin the new digest",
        )
    origin = {"ref": ref.text(pin=None), "sha256": digest, "kind": ref.kind, "url": ref.url}
    if commit:
        origin.update(commit=commit, path=ref.path or "")
    paths.ensure_dir(entry, mode=0o755)
    with atomic.locked_dir(entry):
        if not target.is_file() or target.read_bytes() != data:
            atomic.write_bytes(target, data)
        atomic.write_bytes(entry / ORIGIN, json.dumps(origin, indent=1, sort_keys=True).encode())
    if not ref.sha256:
        at = f" (commit {commit})" if commit and commit != ref.ref else ""
        notify(f"fetched {ref.text()}{at}: sha256 {digest}; pin it as --profile={ref.text(pin=digest)}")
    return target


def _cached_ok(target: Path, ref: Ref) -> bool:
    if ref.sha256:
        return hashlib.sha256(target.read_bytes()).hexdigest() == ref.sha256
    meta = _origin_data(target) or {}
    return meta.get("commit") == ref.ref  # a commit id: the copy fetched at that very commit


def _download(ref: Ref, downloader: Optional["Downloader"]) -> Tuple[bytes, Optional[str]]:
    """(bytes, commit id or None)."""
    if ref.kind == "http":
        from . import download

        return (downloader or download.Downloader()).get_small(ref.url), None
    from . import git

    assert ref.ref and ref.path, ref  # parse() gives a git Ref both
    repo = root() / "git" / (hashlib.sha256(ref.url.encode()).hexdigest()[:24] + ".git")
    paths.ensure_dir(repo.parent, mode=0o755)
    with atomic.locked_dir(repo.parent):
        if _is_commit(ref.ref) and git.has_commit(repo, ref.ref):
            commit = ref.ref  # the same commit as a profile it extends: no network
        else:
            commit = git.fetch(repo, ref.url, ref.ref)
        try:
            return git.show(repo, commit, ref.path), commit
        except InputError as exc:
            raise ProfileError(f"{ref.text()}: {exc.message}") from None


def _is_commit(ref: Optional[str]) -> bool:
    return bool(re.match(r"^[0-9a-f]{40}$", ref or ""))


# -- where a cached file came from -----------------------------------------------------------


def _origin_data(path: StrPath) -> Optional[Dict[str, Any]]:  # the origin record: parsed JSON
    path = Path(path)
    try:
        path.resolve().relative_to(root().resolve())
        return json.loads((path.parent / ORIGIN).read_text())
    except (ValueError, OSError):
        return None


def origin(path: StrPath) -> Optional[Ref]:
    """The remote reference a cached profile file was fetched from (None for local files).

    For git it names the commit that was fetched, so files it extends come from the same tree.
    """
    data = _origin_data(path)
    if not data:
        return None
    ref = parse(data["ref"])
    if ref.kind == "git" and data.get("commit"):
        ref = replace(ref, ref=data["commit"])
    return ref


def display(path: StrPath) -> Optional[str]:
    """What messages call a cached profile: its reference, not its cache path."""
    data = _origin_data(path)
    return data.get("ref") if data else None


def resolve_extends(parent: str, child: Path, notify: Notify = _to_stderr) -> Optional[Path]:
    """The file ``extends: parent`` names when it must be fetched; None when it is local."""
    if is_remote(parent):
        return fetch(parent, notify)
    base = origin(child)
    rel, _, fragment = parent.partition("#")
    if base is None or not ("/" in rel or rel.endswith(SUFFIXES)):
        return None  # a local profile, or a profile name on this machine's search path
    if rel.startswith(("/", "~")):
        raise ProfileError(f"a fetched profile cannot extend a file on this machine ({parent!r})",
                           hint="use a path relative to it, a profile name, or a full URL")
    pin = f"#{fragment}" if fragment else ""
    if base.kind == "http":
        return fetch(urljoin(base.url, rel) + pin, notify)
    path = posixpath.normpath(posixpath.join(posixpath.dirname(base.path or ""), rel))
    if path.startswith(".."):
        raise ProfileError(f"extends {parent!r} points outside the repository of {base.text()}")
    return fetch(f"git+{base.url}@{base.ref}:{path}{pin}", notify)
