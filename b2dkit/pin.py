"""Pin a profile's boot2docker ISO: fetch (or hash) it, check it boots like boot2docker, write the digest.

A team owns its pins: ``b2dkit iso.pin`` downloads the ISO the profile lists (or the URL
given), prints its size and sha256, refuses anything that is not a boot2docker-style ISO
(an El Torito boot entry and an isolinux config with a kernel label), and writes
``iso.urls``/``iso.sha256`` into the profile file in place, so the team commits a one- or
two-line diff.  The file edited is the nearest one of the profile's ``extends`` chain that
sets ``iso`` (pinning ``cst`` edits ``default.yaml``, which it inherits its ISO from).

``--from PATH`` pins a local copy without downloading it, the way ``vagrant box add`` takes
a local box file with a checksum and Lima takes a local ``location`` with a ``digest``:

* a profile that downloads (``iso.urls``) keeps its URLs and gets the file's sha256; the
  file is copied into the ISO cache, so this machine needs no download (the URLs are not
  fetched, so nothing checks that they serve the same bytes: pin without ``--from`` for that);
* a profile with a local ``iso.path`` or ``iso.build`` gets ``iso.path: PATH`` plus the
  sha256, which b2dkit then checks before it uses the file.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from . import atomic, digests, download, isocache, paths, profileedit
from . import iso as isolib
from . import profile as profiles
from .errors import InputError, ProfileError
from .paths import StrPath

Log = Callable[[str], None]


@dataclass
class Candidate:
    """The image about to be pinned, checked: what the user is shown before the file changes."""

    source: str  # the URL it came from, or the local path
    sha256: str
    size: int
    info: dict  # iso.show() of it
    cached: Optional[Path] = None  # its place in the ISO cache, when it is there

    def lines(self) -> List[str]:
        torito = self.info["el_torito"]["entries"][0]
        cfg = self.info["cfg"]
        labels = ", ".join(label["name"] for label in cfg["labels"] if label["kernel"])
        return [
            f"ISO {self.source}",
            f"  size {self.size / 1e6:.1f} MB ({self.size} bytes)",
            f"  sha256 {self.sha256}",
            f"  boot2docker-style: volume {self.info['volume_id']!r}, El Torito {torito['path'] or 'boot image'}, "
            f"{cfg['path']} (labels: {labels})",
        ]


@dataclass
class Pin:
    candidate: Candidate
    edit: profileedit.Edit
    seed: Optional[Path] = None  # --from: the file copied into the cache when the profile downloads

    def lines(self) -> List[str]:
        name = profiles.display_path(self.edit.path)
        out = list(self.candidate.lines())
        if self.seed is not None:
            out.append(f"  copy it into the ISO cache ({self.candidate.cached}), so this machine needs no download")
        if not self.edit.changed:
            out.append(f"{name} already pins this ISO; nothing to change")
            return out
        out.append(f"{name}:")
        out.extend(f"  {change}" for change in self.edit.changes)
        return out


def plan(
    profile_ref: StrPath = profiles.DEFAULT_PROFILE,
    url: Optional[str] = None,
    from_path: Optional[StrPath] = None,
    downloader: Optional[download.Downloader] = None,
    log: Log = print,
) -> Pin:
    """Fetch or hash the image and decide the profile edit; nothing in the profile changes yet."""
    prof = profiles.load(profile_ref)
    target = profileedit.defining_file(prof, "iso")
    refuse_fetched(target)
    if url is not None:
        _check_url(url)
    if from_path is not None:
        return _plan_local(prof, target, Path(from_path).expanduser(), url)
    urls = [url] if url else list(prof.iso.urls)
    if not urls:
        raise InputError(
            f"profile {prof.profile_name!r} downloads nothing (iso.{'build' if prof.iso.build else 'path'}): "
            "give the URL to pin, or --from PATH for a local file"
        )
    log(f"fetching {urls[0]}" + (f" (and {len(urls) - 1} more mirror(s) if it fails)" if len(urls) > 1 else ""))
    fetched = (downloader or download.Downloader()).fetch_unpinned(
        urls, accept=lambda part, source: isolib.check_boot2docker(part, name=source)
    )
    assert fetched.url and fetched.sha256, fetched  # set on success
    info = isolib.show(fetched.path)
    candidate = Candidate(fetched.url, fetched.sha256, info["size"], info, cached=fetched.path)
    if prof.iso.pinned and prof.iso.sha256 != fetched.sha256 and not url:
        pinned = (prof.iso.sha256 or "")[:12]
        log(f"warning: {fetched.url} now serves a different file than the pinned sha256 {pinned}…")
    edit = profileedit.iso_edit(target, urls=urls if url else None, sha256=fetched.sha256)
    return Pin(candidate, edit)


def _plan_local(prof: profiles.Profile, target: Path, path: Path, url: Optional[str]) -> Pin:
    if not path.is_file():
        raise InputError(f"--from: {path} is not a file")
    info = isolib.check_boot2docker(path)
    digest = digests.file_sha256(path)
    downloads = bool(url) or bool(_layer_iso(target).get("urls"))
    cached = isocache.source_path(digest) if downloads else None
    candidate = Candidate(str(path), digest, info["size"], info, cached=cached)
    if cached is not None:
        edit = profileedit.iso_edit(target, urls=[url] if url else None, sha256=digest)
        seed = path if not cached.is_file() else None
        return Pin(candidate, edit, seed=seed)
    edit = profileedit.iso_edit(target, local_path=_path_for(target, path), sha256=digest)
    return Pin(candidate, edit)


def apply(pin: Pin) -> None:
    """Seed the cache (``--from``), then write the profile (temp file + rename)."""
    if pin.seed is not None and pin.candidate.cached is not None:
        folder = paths.ensure_dir(pin.candidate.cached.parent, mode=0o755)
        with atomic.locked_dir(folder), atomic.atomic_path(pin.candidate.cached) as tmp:
            isolib.fast_copy(pin.seed, tmp)
            if digests.file_sha256(tmp) != pin.candidate.sha256:
                raise InputError(f"--from: {pin.seed} changed while it was being pinned; run iso.pin again")
    pin.edit.apply()


def refuse_fetched(path: Path) -> None:
    """Profiles fetched by URL or git live in b2dkit's cache: pin in their source instead."""
    cache = paths.cache_dir().resolve()
    try:
        Path(path).resolve().relative_to(cache)
    except ValueError:
        return
    raise ProfileError(
        f"{profiles.display_path(path)} was fetched from elsewhere and is only a cached copy",
        hint="pin the ISO in the profile's own repository (or a local copy of it), then fetch it again",
    )


def _check_url(url: str) -> None:
    if not url.startswith(("https://", "http://")) or any(ch.isspace() for ch in url):
        raise InputError(f"{url!r} is not a download URL: use https://... or http://...")


def _layer_iso(path: Path) -> dict:
    """The ``iso`` mapping as the file itself writes it (not merged)."""
    return dict(profileedit.read(path).get("iso") or {})


def _path_for(profile_file: Path, iso: Path) -> str:
    """How the profile should name ``iso``: relative when it sits beside the profile (a team
    can ship both), ``~/…`` under the home directory, else absolute."""
    iso = iso.resolve()
    try:
        return str(iso.relative_to(profile_file.resolve().parent))
    except ValueError:
        pass
    home = Path(os.path.expanduser("~")).resolve()
    try:
        return "~/" + str(iso.relative_to(home))
    except ValueError:
        return str(iso)
