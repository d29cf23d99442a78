"""sha256 digests: the one pattern for a pinned digest and the one way a file is hashed."""

import hashlib
import os
import re

from .errors import InputError

SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_CHUNK = 1024 * 1024


def is_sha256(text: str) -> bool:
    return bool(SHA256_HEX.match(text or ""))


def check_sha256(sha256: str) -> str:
    """The digest in lower case, or InputError: an ISO is pinned by its exact sha256."""
    value = (sha256 or "").strip().lower()
    if not is_sha256(value):
        raise InputError(f"ISO checksum {sha256!r} is not a sha256 (64 hex digits); pin the exact image")
    return value


def file_sha256(path: "os.PathLike[str] | str") -> str:
    """Read the whole file; the one expensive step a cache hit must skip."""
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        for chunk in iter(lambda: fp.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
