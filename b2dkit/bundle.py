"""One archive to onboard with no network: the profile chain and its boot2docker ISO, digest-checked.

``b2dkit onboard --bundle OUT.tar`` (on a machine with the network) resolves the profile, gets
its ISO (the cache, a download, the local path, or the built guest) and writes a plain tar:

* ``b2dkit-bundle.json``: the format version, the profile's name, and the sha256 and size of
  every other member;
* ``profiles/<name>.yaml``: each file of the extends chain, its ``extends`` rewritten (in place,
  comments kept) to name the next bundled file, so the chain resolves inside the bundle;
* ``iso/<sha256>.iso``: the source ISO (remastering happens on the receiving machine);
* ``images/<name>``: each ``images:`` tarball of the profile (the ``docker save`` archives a
  Docker guest loads at start, checked readable first), and each chain file's ``images`` list
  rewritten to name the bundled copies (``../images/<name>``), so the guest loads the team's
  base images with no registry and no network.

``--from-bundle IN.tar`` reads only the members the manifest names (regular files, no paths
outside the bundle), checks each digest, and, for a profile that pins its ISO, that the ISO is
the pinned one.  The ISO goes into the download cache (a profile with ``iso.urls`` then needs
no network, now or later), the profiles and images into the cache's ``bundles/<digest>/``.
"""

import hashlib
import io
import json
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from . import __version__, atomic, digests, isocache, paths, profileedit
from . import profile as profiles
from .errors import InputError
from .paths import StrPath

FORMAT = 1
MANIFEST = "b2dkit-bundle.json"
_CHUNK = 1 << 20
Log = Callable[[str], None]


FOLDERS = ("profiles/", "iso/", "images/")  # the only places a member may be


@dataclass
class Unpacked:
    profile: Path  # the bundled profile, ready for profile.load
    iso: Path  # the source ISO, in the download cache or the bundle folder
    sha256: str  # of the ISO
    images: List[Path] = field(default_factory=list)  # the profile's image tarballs, digest-checked


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _chain_names(chain: List[Path]) -> List[str]:
    """``team.yaml``, ``cst.yaml``, ``default.yaml``: stems kept, clashes numbered."""
    names, seen = [], set()
    for path in chain:
        stem = path.name[: -len(path.suffix)] if path.suffix in profiles.SUFFIXES else path.name
        name, n = f"{stem}.yaml", 2
        while name in seen:
            name, n = f"{stem}-{n}.yaml", n + 1
        seen.add(name)
        names.append(name)
    return names


def _bundled_profiles(prof: profiles.Profile, images: bool) -> Dict[str, bytes]:
    """Each chain file with ``extends`` pointing at the next bundled file and (``images``) its
    ``images`` at the bundled tarballs (round-trip edits: comments kept)."""
    names = _chain_names(prof.chain)
    out = {}
    for index, (path, name) in enumerate(zip(prof.chain, names)):
        text = path.read_text(encoding="utf-8")
        if index + 1 < len(names):
            text = profileedit.set_top_level(path, text, "extends", names[index + 1])
        own = profiles.layer_images(path) if images else []
        if own:
            text = profileedit.set_top_level(path, text, "images", [f"../images/{p.name}" for p in own])
        out[name] = text.encode("utf-8")
    return out


def _images(prof: profiles.Profile) -> List[Path]:
    """The profile's image tarballs, through the same check ``vm.start`` makes (a missing or
    broken one is named before anything is written)."""
    from . import dockerd

    return dockerd.check_images(prof.images) if prof.images else []


def create(profile_ref: StrPath, out: StrPath, iso_path: Optional[Union[str, Path]] = None, log: Log = print) -> str:
    """Write the bundle for ``profile_ref`` to ``out`` (temp file + rename); returns its sha256."""
    from . import lifecycle

    prof = profiles.load(profile_ref)
    out = Path(out).expanduser()
    if out.suffix != ".tar":
        raise InputError(f"--bundle: {out} should end in .tar (an uncompressed tar: ISOs do not compress)")
    images = _images(prof)  # before the ISO: a broken tarball is a quick, offline answer
    source = Path(lifecycle.source_iso(prof, iso_path=iso_path, log=log))
    digest = isocache.source_digest(source)
    if prof.iso.pinned and not iso_path and digest != prof.iso.sha256:
        raise InputError(f"ISO {source} has sha256 {digest}, not the {prof.iso.sha256} the profile pins")
    files = {f"profiles/{name}": data for name, data in _bundled_profiles(prof, bool(images)).items()}
    big = {f"iso/{digest}.iso": source, **{f"images/{p.name}": p for p in images}}  # copied from disk
    manifest: Dict[str, Any] = {
        "format": FORMAT,
        "b2dkit": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "profile": f"profiles/{_chain_names(prof.chain)[0]}",
        "iso": {"member": f"iso/{digest}.iso", "sha256": digest, "size": source.stat().st_size},
        "images": [f"images/{p.name}" for p in images],
        "members": {name: {"sha256": _sha256_bytes(data), "size": len(data)} for name, data in files.items()},
    }
    for name, path in big.items():
        manifest["members"][name] = {"sha256": digest if path == source else digests.file_sha256(path),
                                     "size": path.stat().st_size}
    pictures = f", {len(images)} image(s) ({sum(p.stat().st_size for p in images) / 1e6:.1f} MB)" if images else ""
    log(f"bundle: profile {prof.profile_name} ({len(files)} file(s)), ISO {source.name} "
        f"({source.stat().st_size / 1e6:.1f} MB, sha256 {digest[:12]}…){pictures}")
    with atomic.atomic_path(out) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
            for name, data in files.items():
                _add(tar, name, data)
            for name, path in big.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = path.stat().st_size, 0o644, int(time.time())
                with open(path, "rb") as fp:
                    tar.addfile(info, fp)
        whole = digests.file_sha256(tmp)
    log(f"wrote {out} (sha256 {whole}); onboard with it: b2dkit onboard --from-bundle {out.name}")
    return whole


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def unpack(path: StrPath, log: Log = print) -> Unpacked:
    """Check ``path`` member by member and install it; raises InputError on anything unexpected."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"--from-bundle: {path} is not a file")
    try:
        tar = tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as exc:
        raise InputError(f"--from-bundle: {path} is not a b2dkit bundle (not a tar: {exc})") from None
    with tar:
        manifest = _manifest(tar, path)
        bundle_id = _sha256_bytes(json.dumps(manifest, sort_keys=True).encode())[:24]
        folder = paths.ensure_dir(paths.cache_dir() / "bundles" / bundle_id, mode=0o755)
        iso_member = manifest["iso"]["member"]
        digest = manifest["iso"]["sha256"]
        iso_target = isocache.source_path(digest)
        for name, expected in sorted(manifest["members"].items()):
            member = tar.getmember(name)
            dest = iso_target if name == iso_member else folder / name
            if name == iso_member and dest.is_file() and digests.file_sha256(dest) == digest:
                continue  # already in the cache
            paths.ensure_dir(dest.parent, mode=0o755)
            _extract_checked(tar, member, dest, expected, path)
    prof_path = folder / manifest["profile"]
    prof = profiles.load(str(prof_path))
    if prof.iso.pinned and prof.iso.sha256 != digest:
        raise InputError(f"--from-bundle: {path}: the bundled ISO has sha256 {digest}, "
                         f"but the bundled profile pins {prof.iso.sha256}")
    bundled = {(folder / name).resolve() for name in manifest.get("images", [])}
    outside = [str(p) for p in prof.images if p.resolve() not in bundled]
    if outside:  # it would need files this laptop may not have
        raise InputError(f"--from-bundle: {path}: the bundled profile names image(s) the bundle lacks: "
                         f"{', '.join(outside)}; make the bundle again with this b2dkit")
    carried = f", {len(bundled)} image(s)" if bundled else ""
    log(f"bundle {path.name}: checked {len(manifest['members'])} file(s); profile {prof.profile_name}{carried}, "
        f"ISO sha256 {digest[:12]}… in the cache")
    return Unpacked(profile=prof_path, iso=iso_target, sha256=digest, images=sorted(bundled))


def _manifest(tar: tarfile.TarFile, path: Path) -> dict:
    bad = InputError(f"--from-bundle: {path} is not a b2dkit bundle (no valid {MANIFEST})")
    try:
        member = tar.getmember(MANIFEST)
        fp = tar.extractfile(member)
        if fp is None:  # a directory or link named like the manifest
            raise bad
        data = json.loads(fp.read(1 << 20))
    except (KeyError, AttributeError, ValueError, tarfile.TarError):
        raise bad from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"--from-bundle: {path}: bundle format {data.get('format') if isinstance(data, dict) else '?'}"
                         f" is not {FORMAT}; make it again with this b2dkit")
    members = data.get("members")
    if not isinstance(members, dict) or data.get("profile") not in members or \
            not isinstance(data.get("iso"), dict) or data["iso"].get("member") not in members or \
            not isinstance(data.get("images", []), list) or \
            any(name not in members or not str(name).startswith("images/") for name in data.get("images", [])):
        raise bad
    for name, meta in members.items():
        parts = Path(name).parts
        if name.startswith("/") or ".." in parts or not name.startswith(FOLDERS) or \
                not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
            raise InputError(f"--from-bundle: {path}: refusing member {name!r} (outside the bundle's folders)")
        try:
            member = tar.getmember(name)
        except KeyError:
            raise InputError(f"--from-bundle: {path}: {name} is listed but missing") from None
        if not member.isreg():
            raise InputError(f"--from-bundle: {path}: {name} is not a regular file")
    return data


def _extract_checked(
    tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, expected: Dict[str, Any], path: Path
) -> None:
    source = tar.extractfile(member)
    assert source is not None  # _manifest let regular files only through
    digest = hashlib.sha256()
    with atomic.atomic_path(dest) as tmp:
        with open(tmp, "wb") as out:
            for chunk in iter(lambda: source.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected["sha256"]:
            raise InputError(f"--from-bundle: {path}: {member.name} has sha256 {digest.hexdigest()}, "
                             f"not the {expected['sha256']} its manifest lists; nothing was installed from it")


def iso_override(unpacked: Unpacked, prof: profiles.Profile) -> Optional[Path]:
    """``--iso`` for onboarding: none when the profile downloads (the cache has it), else the file."""
    return None if prof.iso.urls else unpacked.iso
