"""The user's ISO cache, its one owner: downloaded sources and remastered images, keyed by content.

Layout under ``paths.cache_dir()``::

    iso/<sha256>.iso          source ISOs (``source_path``; the download module fetches into it)
    iso/<sha256>.json         where it came from: {"url": ...}
    remastered/<key>.iso      a source plus boot codes; key = hash of (source sha256, codes)
    remastered/<key>.json     {"source": path, "source_sha256": ..., "set": [...], ...}
    digests.json              sha256 of source files by (path, size, mtime), so a cache
                              hit costs a stat() instead of reading 60+ MB

Every file is written atomically; a ``.part`` left by a killed process is only
ever garbage, never mistaken for an ISO.
"""

import contextlib
import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from . import bootcfg, iso
from .atomic import is_temp, locked_dir, remove_stale_temps, write_bytes
from .digests import check_sha256, file_sha256, is_sha256
from .errors import InputError
from .paths import StrPath, cache_dir, ensure_dir

# Bump when remaster output for the same inputs would differ, so old entries are not reused.
RECIPE = 1


def sources_dir() -> Path:
    return cache_dir() / "iso"


def source_path(sha256: str) -> Path:
    """Where the source ISO with this checksum lives once fetched (whether or not it is there yet)."""
    return sources_dir() / f"{check_sha256(sha256)}.iso"


def sources() -> List[Path]:
    """Finished source ISOs (never a partial download)."""
    folder = sources_dir()
    return sorted(p for p in folder.glob("*.iso") if is_sha256(p.stem)) if folder.is_dir() else []


def remastered_dir() -> Path:
    return cache_dir() / "remastered"


def _memo_path() -> Path:
    return cache_dir() / "digests.json"


def _load_memo() -> Dict[str, Any]:  # parsed JSON, checked entry by entry
    try:
        data = json.loads(_memo_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def source_digest(path: StrPath) -> str:
    """sha256 of ``path``, re-read only when its size or mtime changed since last time."""
    path = Path(path).resolve()
    st = path.stat()
    memo = _load_memo()
    known = memo.get(str(path))
    if (
        isinstance(known, dict)
        and known.get("size") == st.st_size
        and known.get("mtime_ns") == st.st_mtime_ns
    ):
        return known["sha256"]
    digest = file_sha256(path)
    memo[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    ensure_dir(cache_dir())
    write_bytes(_memo_path(), json.dumps(memo, indent=1, sort_keys=True).encode(), mode=0o600)
    return digest


def remaster_key(
    source_sha256: str, set_codes: Iterable[str], remove: Iterable[str] = (), label: Optional[str] = None
) -> str:
    """Same source bytes + same change = same key, whatever the file is called."""
    set_codes, remove = bootcfg.normalize_codes(set_codes, remove)
    recipe = {"recipe": RECIPE, "source": source_sha256, "set": set_codes, "remove": remove, "label": label}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:32]


def _target(src: Path, set_codes: Iterable[str], remove: Iterable[str], label: Optional[str]) -> Tuple[str, Path]:
    if not src.is_file():
        raise InputError(f"ISO {src} " + ("is not a regular file" if src.exists() else "does not exist"))
    digest = source_digest(src)
    return digest, remastered_dir() / f"{remaster_key(digest, set_codes, remove, label)}.iso"


def lookup(
    src: StrPath, set_codes: Iterable[str], remove: Iterable[str] = (), label: Optional[str] = None
) -> Optional[Path]:
    """The cached remaster for (src, codes) if there is one; never builds (onboarding's dry run)."""
    set_codes, remove = bootcfg.normalize_codes(set_codes, remove)
    _, target = _target(Path(src), set_codes, remove, label)
    return target if target.is_file() else None


def cached_remaster(
    src: StrPath, set_codes: Iterable[str], remove: Iterable[str] = (), label: Optional[str] = None
) -> Path:
    """The remastered ISO for (src, codes), built once; a hit only stat()s the source."""
    src = Path(src)
    set_codes, remove = bootcfg.normalize_codes(set_codes, remove)
    digest, target = _target(src, set_codes, remove, label)
    if target.is_file():
        return target
    folder = ensure_dir(remastered_dir())
    with locked_dir(folder):  # one writer at a time; ``clear_cache`` waits for it
        if target.is_file():  # another b2dkit made it while we waited
            return target
        remove_leftovers(folder)  # under the lock, a temp file is a killed run's garbage
        return _remaster_locked(src, target, digest, set_codes, remove, label)


def remove_leftovers(folder: Path) -> List[str]:
    """Delete temp files a killed run left in ``folder``, whatever their age; only under its lock."""
    return remove_stale_temps(folder, older_than=0)


def _remaster_locked(
    src: Path, target: Path, digest: str, set_codes: Sequence[str], remove: Sequence[str], label: Optional[str]
) -> Path:
    result = iso.remaster(src, target, set_codes, remove, label)
    meta = {
        "source": str(src.resolve()),
        "source_sha256": digest,
        "set": set_codes,
        "remove": remove,
        "label": label,
        "method": result.method,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_bytes(target.with_suffix(".json"), json.dumps(meta, indent=1, sort_keys=True).encode())
    return target


def _meta(path: Path) -> dict:
    try:
        data = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def list_cache() -> List[dict]:
    """Every cached ISO: type (source|remastered), size, key, source, and codes for remasters."""
    rows = []
    remastered = sorted(remastered_dir().glob("*.iso")) if remastered_dir().is_dir() else []
    for kind, found in (("source", sources()), ("remastered", remastered)):
        for path in found:
            meta = _meta(path)
            row = {"type": kind, "path": str(path), "size": path.stat().st_size, "key": path.stem}
            if kind == "source":
                row["source"] = meta.get("url") or meta.get("source")
            else:
                row["source"] = meta.get("source")
                row["source_sha256"] = meta.get("source_sha256")
                row["codes"] = meta.get("set", [])
                row["removed"] = meta.get("remove", [])
            rows.append(row)
    for folder in (sources_dir(), remastered_dir()):  # what else takes room there
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if not path.is_file() or not path.name.endswith(".part"):
                continue
            kind = "temp" if is_temp(path) else "partial"  # partial: a download the next fetch resumes
            rows.append({"type": kind, "path": str(path), "size": path.stat().st_size,
                         "key": path.name.split(".")[0] or path.name, "source": None})
    return rows


def clear_cache(on_wait: Optional[Callable[[Path], object]] = None) -> int:
    """Delete cached ISOs, their metadata, leftovers of killed writes and the digest memo.

    Waits for a download or remaster that is writing there now (their lock); ``on_wait(folder)``
    says so.  Returns the number of ISOs removed.
    """
    removed = 0
    for folder in (sources_dir(), remastered_dir()):
        if not folder.is_dir():
            continue
        with locked_dir(folder, on_wait=functools.partial(on_wait, folder) if on_wait else None):
            for path in folder.iterdir():
                if path.is_file() and (path.suffix in (".iso", ".json") or path.name.endswith(".part")):
                    removed += path.suffix == ".iso"
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
    with contextlib.suppress(FileNotFoundError):
        _memo_path().unlink()
    return removed
