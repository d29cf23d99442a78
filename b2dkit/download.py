"""Fetch a pinned ISO from a list of mirrors into the cache, resumably, and verify it.

A profile names the ISO by its sha256 and lists where to get it (the team's mirror
first, upstream last). The sha256 is the identity: the cache entry is
``cache_dir()/iso/<sha256>.iso`` and a hit costs no network at all. A download goes
to ``<sha256>.iso.part`` next to it -- a stable name, so a run killed half-way (even by
SIGKILL) is continued by the next one with an HTTP ``Range`` request -- and is renamed
into place only after its sha256 matched.
"""

import contextlib
import hashlib
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Set

import requests
import urllib3
from tqdm import tqdm

from . import atomic, isocache, paths
from .digests import check_sha256, file_sha256
from .errors import B2dkitError, DownloadError, InputError

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_HASH_BLOCK = 1 << 20
_URL_PART = "url-"  # partial downloads of not-yet-pinned files are named by their URL's sha256


@dataclass
class FetchResult:
    """What a fetch did: tests and the onboarding summary want to know what crossed the network."""

    path: Path
    url: Optional[str] = None  # the mirror that completed it; None on a cache hit
    cached: bool = False  # True when the cache already had it
    bytes_fetched: int = 0  # body bytes received over the network, all attempts and mirrors
    resumed: bool = False  # True when a partial file (this run's or an earlier one's) was continued
    failures: List[str] = field(default_factory=list)  # one line per mirror that failed first
    sha256: Optional[str] = None  # the file's digest (what fetch_unpinned found out)


class _MirrorFailed(Exception):
    """This mirror cannot give us the file now: say why in one line and try the next one."""


class _Retry(Exception):
    """A transient failure (dropped connection, timeout, 5xx): try the same mirror again."""

    def __init__(self, reason: str, progress: bool = False):
        super().__init__(reason)
        self.progress = progress  # the failed attempt still moved the download forward


class Downloader:
    """Download policy (timeouts, retries, backoff) around one ``requests.Session``.

    The defaults suit a laptop on a flaky network; tests shrink them to milliseconds.
    """

    def __init__(
        self,
        session: Optional[requests.Session] = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        chunk_size: int = 256 * 1024,
        notify: Optional[Callable[[str], object]] = None,
    ) -> None:
        self.session = session or requests.Session()
        self.timeout = (connect_timeout, read_timeout)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.chunk_size = chunk_size
        self.notify = notify or _to_stderr

    def fetch(self, urls: Sequence[str], sha256: str, progress: Optional[bool] = None) -> FetchResult:
        """Return the cached ISO, downloading it from the first mirror that works.

        ``progress``: None shows a bar only when stderr is a terminal; True/False force it.
        """
        sha256 = check_sha256(sha256)
        target = isocache.source_path(sha256)
        if target.is_file():
            return FetchResult(path=target, cached=True)
        urls = [u for u in (urls or []) if u]
        if not urls:
            raise InputError(f"ISO {sha256[:12]}… is not in the cache and the profile lists no URL for it")
        paths.ensure_dir(target.parent, mode=0o755)
        with atomic.locked_dir(target.parent):
            if target.is_file():  # another b2dkit finished it while we waited for the lock
                return FetchResult(path=target, cached=True)
            result = FetchResult(path=target)
            part = target.with_name(target.name + ".part")
            show = sys.stderr.isatty() if progress is None else bool(progress)
            for index, url in enumerate(urls):
                try:
                    self._from_mirror(url, part, sha256, result, show)
                except _MirrorFailed as exc:
                    result.failures.append(f"{url}: {exc}")
                    if index + 1 < len(urls):  # after the last one, the error below says it all
                        self.notify(f"{url}: {exc}; trying the next mirror")
                    continue
                if not _same_on_disk(part, sha256):  # stored by digest: the name must be the truth
                    result.failures.append(f"{url}: the downloaded file changed on disk before it was stored")
                    continue
                os.chmod(part, 0o644)
                os.replace(part, target)
                result.url = url
                return result
        lines = "; ".join(result.failures)
        raise DownloadError(
            f"could not fetch ISO {sha256[:12]}… from any mirror ({lines})",
            hint="check the network or the profile's iso.urls, or pass --iso PATH to a copy you already have",
        )

    def fetch_unpinned(
        self,
        urls: Sequence[str],
        progress: Optional[bool] = None,
        accept: Optional[Callable[[Path, str], object]] = None,
    ) -> FetchResult:
        """Download a file whose sha256 is not known yet (``iso.pin``) and cache it under its digest.

        ``accept(path, url)`` checks the finished download before it enters the cache; when
        it raises a B2dkitError (whose message names the URL) the file is deleted and the
        next mirror is tried.  Each URL
        resumes only its own partial file (``url-<sha256 of the URL>.iso.part``): without a
        digest, two mirrors' bytes cannot be known to belong to the same file.
        """
        urls = [u for u in (urls or []) if u]
        if not urls:
            raise InputError("no URL to fetch: give one, or list iso.urls in the profile")
        folder = isocache.sources_dir()
        paths.ensure_dir(folder, mode=0o755)
        result = FetchResult(path=folder)  # path, url and sha256 are set on success
        show = sys.stderr.isatty() if progress is None else bool(progress)
        rejected = None
        with atomic.locked_dir(folder):
            for index, url in enumerate(urls):
                part = folder / f"{_URL_PART}{hashlib.sha256(url.encode()).hexdigest()}.iso.part"
                try:
                    digest = self._from_mirror(url, part, None, result, show)
                    if accept is not None:
                        accept(part, url)
                except (_MirrorFailed, B2dkitError) as exc:
                    line = f"{url}: {exc}"
                    if isinstance(exc, B2dkitError):
                        with contextlib.suppress(FileNotFoundError):
                            part.unlink()
                        rejected, line = exc, str(exc)
                    result.failures.append(line)
                    if index + 1 < len(urls):
                        self.notify(f"{line}; trying the next mirror")
                    continue
                target = isocache.source_path(digest)
                if target.is_file():  # the same bytes are cached already
                    part.unlink()
                else:
                    os.chmod(part, 0o644)
                    os.replace(part, target)
                result.path, result.url, result.sha256 = target, url, digest
                return result
        if rejected is not None and len(urls) == 1:
            raise rejected
        raise DownloadError(
            f"could not fetch {urls[0]} from any mirror ({'; '.join(result.failures)})",
            hint="check the network and the URL",
        )

    def get_small(self, url: str, limit: int = 1 << 20) -> bytes:
        """A small file (a profile) in memory, with the same retries and one-line errors."""
        failures = 0
        while True:
            try:
                return self._get_small(url, limit)
            except _Retry as exc:
                failures += 1
                if failures > self.retries:
                    raise DownloadError(f"cannot fetch {url}: {exc} (gave up after {self.retries} retries)") from None
                time.sleep(min(self.max_backoff, self.backoff * 2 ** (failures - 1)))
            except _MirrorFailed as exc:
                raise DownloadError(f"cannot fetch {url}: {exc}") from None

    def _get_small(self, url: str, limit: int) -> bytes:
        try:
            response = self.session.get(url, stream=True, timeout=self.timeout)
        except requests.exceptions.RequestException as exc:
            raise _classify(exc) from None
        with contextlib.closing(response):
            status = response.status_code
            if status in (408, 429) or status >= 500:
                raise _Retry(f"HTTP {status} {response.reason}")
            if status != 200:
                raise _MirrorFailed(f"HTTP {status} {response.reason}".strip())
            data = b""
            try:
                for chunk in response.iter_content(64 * 1024):
                    data += chunk
                    if len(data) > limit:
                        raise _MirrorFailed(f"larger than {limit >> 10} KiB: not a profile")
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
                raise _classify(exc) from None
            return data

    # -- one mirror --------------------------------------------------------------------------

    def _from_mirror(self, url: str, part: Path, sha256: Optional[str], result: FetchResult, show: bool) -> str:
        """Complete ``part`` from ``url`` and return its sha256, which must equal ``sha256`` when
        given; _MirrorFailed if this mirror cannot."""
        state = _Partial(part)
        failures = 0
        while True:
            try:
                self._attempt(url, state, result, show)
                break
            except _Retry as exc:
                # Attempts that moved the download forward do not count: the file is finite, so
                # a connection that keeps dropping after some progress still gets there.
                failures = 1 if exc.progress else failures + 1
                if failures > self.retries:
                    raise _MirrorFailed(f"{exc} (gave up after {self.retries} retries)") from None
                time.sleep(min(self.max_backoff, self.backoff * 2 ** (failures - 1)))
        got = state.hasher.hexdigest()
        if sha256 is not None and got != sha256:
            state.discard()
            raise _MirrorFailed(f"checksum mismatch: expected sha256 {sha256}, got {got}; file deleted")
        state.sync()
        return got

    def _attempt(self, url: str, state: "_Partial", result: FetchResult, show: bool) -> None:
        """One HTTP request that returns with the body complete, or raises _Retry/_MirrorFailed."""
        offset = state.size
        headers = {"Accept-Encoding": "identity"}  # byte ranges are over the file as stored
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = self.session.get(url, headers=headers, stream=True, timeout=self.timeout)
        except requests.exceptions.RequestException as exc:
            raise _classify(exc) from None
        with contextlib.closing(response):
            total = self._accept(response, state, offset)
            if response.status_code == 416:
                return  # our partial file already is the whole file
            if state.size:
                result.resumed = True
            got_bytes = False
            bar = tqdm(
                total=total,
                initial=state.size,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=url.rsplit("/", 1)[-1][:40] or "ISO",
                disable=not show,
                leave=False,
            )
            try:
                with open(state.path, "ab") as out:
                    for chunk in _body(response, self.chunk_size):
                        out.write(chunk)
                        state.update(chunk)
                        result.bytes_fetched += len(chunk)
                        got_bytes = True
                        bar.update(len(chunk))
                        if total is not None and state.size > total:
                            state.discard()
                            raise _MirrorFailed(f"server sent more than the {total} bytes it announced")
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
                err = _classify(exc)
                if isinstance(err, _Retry):
                    err.progress = got_bytes
                raise err from None
            except OSError as exc:
                raise DownloadError(
                    f"cannot write {state.path}: {exc.strerror}", hint="free some disk space and re-run"
                ) from None
            finally:
                bar.close()
        if total is not None and state.size < total:
            raise _Retry(f"connection closed after {state.size} of {total} bytes", progress=got_bytes)

    def _accept(self, response: requests.Response, state: "_Partial", offset: int) -> Optional[int]:
        """Check the status and range of a response; return the full file size if known."""
        status = response.status_code
        if status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", "").strip())
            if not match or int(match.group(1)) != offset:
                # A range we did not ask for: the bytes would not line up with ours.
                state.discard()
                raise _Retry(f"server answered a bad Content-Range {response.headers.get('Content-Range')!r}")
            return None if match.group(3) == "*" else int(match.group(3))
        if status == 200:
            if offset:
                state.discard()  # Range ignored: the body starts at byte 0, so must our file
            length = response.headers.get("Content-Length")
            return int(length) if length and length.isdigit() else None
        if status == 416 and offset:
            # Our partial file is longer than (or exactly) the file: check it or start again.
            match = re.match(r"^bytes \*/(\d+)$", response.headers.get("Content-Range", "").strip())
            if match and int(match.group(1)) == offset:
                return offset
            state.discard()
            raise _Retry("server rejected our resume range; restarting from zero")
        if status in (408, 429) or status >= 500:
            raise _Retry(f"HTTP {status} {response.reason}")
        raise _MirrorFailed(f"HTTP {status} {response.reason}".strip())


def _same_on_disk(part: Path, sha256: str) -> bool:
    """Re-hash the finished ``.part`` as it is on disk (something may have cut or replaced it since
    the streamed hash was taken); a mismatch is deleted, never stored under ``sha256``."""
    try:
        if file_sha256(part) == sha256:
            return True
    except FileNotFoundError:
        return False
    with contextlib.suppress(FileNotFoundError):
        part.unlink()
    return False


class _Partial:
    """The ``.part`` file and a sha256 kept in step with it, so the check needs no second read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hasher = hashlib.sha256()
        self.size = 0
        if path.exists():
            with open(path, "rb") as f:  # a previous run's prefix: hash it once, then append
                for block in iter(lambda: f.read(_HASH_BLOCK), b""):
                    self.hasher.update(block)
                    self.size += len(block)

    def update(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        self.size += len(chunk)

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.hasher = hashlib.sha256()
        self.size = 0

    def sync(self) -> None:
        with open(self.path, "rb+") as f:
            os.fsync(f.fileno())


def _body(response: requests.Response, size: int) -> Iterator[bytes]:
    """The body as it arrives: ``read1`` hands over every received byte before a drop is
    reported, so a resume re-fetches nothing (``iter_content`` would lose the unfinished chunk)."""
    read1 = getattr(response.raw, "read1", None)
    if read1 is None:  # urllib3 < 2
        yield from response.iter_content(size)
        return
    while True:
        chunk = read1(size, decode_content=False)
        if not chunk:
            return
        yield chunk


def _classify(exc: Exception) -> Exception:
    """Turn a requests error into one short line, and decide: next mirror or retry."""
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        requests.exceptions.InvalidSchema)):
        return _MirrorFailed(f"invalid URL ({exc})")
    if isinstance(exc, requests.exceptions.SSLError):
        return _MirrorFailed(f"TLS error: {_innermost(exc)}")
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return _MirrorFailed("connection timed out")
    if isinstance(exc, (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError)) or (
        "Read timed out" in str(exc)
    ):
        return _Retry("read timed out")
    if isinstance(exc, requests.exceptions.ConnectionError):
        causes = list(_chain(exc))
        if any(isinstance(e, socket.gaierror) or type(e).__name__ == "NameResolutionError" for e in causes):
            return _MirrorFailed("host name not found (DNS)")
        if any(isinstance(e, ConnectionRefusedError) for e in causes):
            return _MirrorFailed("connection refused")
        return _Retry(f"connection error: {_innermost(exc)}")
    return _Retry(f"{type(exc).__name__}: {_innermost(exc)}")


def _to_stderr(line: str) -> None:
    print(f"b2dkit: {line}", file=sys.stderr, flush=True)


def _chain(exc: Optional[BaseException]) -> Iterator[BaseException]:
    seen: Set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _innermost(exc: BaseException) -> str:
    *_, last = _chain(exc)
    text = str(last) or type(last).__name__
    return text.splitlines()[0][:160]



def fetch(urls: Sequence[str], sha256: str, progress: Optional[bool] = None, **options: Any) -> Path:
    """The cached ISO's path, fetched first if needed; ``options`` go to :class:`Downloader` (it checks them)."""
    return Downloader(**options).fetch(urls, sha256, progress=progress).path
