"""download.fetch against a real HTTP server on 127.0.0.1 that misbehaves on purpose."""

import functools
import hashlib
import random
import socket
import time

import httpmirror
import pytest
from httpmirror import Mirror

from b2dkit import download, isocache, paths
from b2dkit.errors import DownloadError, InputError

PAYLOAD = random.Random(5).randbytes(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
FAST = dict(connect_timeout=1.0, read_timeout=0.3, retries=2, backoff=0.01, chunk_size=16 * 1024)


Route = functools.partial(httpmirror.Route, payload=PAYLOAD)  # serves PAYLOAD unless told otherwise


@pytest.fixture
def mirror():
    m = Mirror()
    yield m
    m.close()


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(urls, sha=SHA, **kw):
    notes = []
    options = {**FAST, **kw}
    result = download.Downloader(notify=notes.append, **options).fetch(urls, sha, progress=False)
    result.notes = notes
    return result


def iso_dir():
    return paths.cache_dir() / "iso"


def leftovers():
    return sorted(p.name for p in iso_dir().iterdir()) if iso_dir().exists() else []


def test_fetch_verifies_caches_and_a_second_fetch_makes_no_request(mirror):
    mirror.routes["/b2d.iso"] = Route()
    result = fetch([mirror.url("/b2d.iso")])
    assert result.path == iso_dir() / f"{SHA}.iso"
    assert result.path.read_bytes() == PAYLOAD
    assert (result.bytes_fetched, result.resumed, result.cached) == (len(PAYLOAD), False, False)
    assert leftovers() == [f"{SHA}.iso"]  # no .part left behind
    assert len(mirror.requests) == 1

    again = fetch([mirror.url("/b2d.iso")])
    assert again.cached and again.path == result.path and again.bytes_fetched == 0
    assert len(mirror.requests) == 1


def test_module_fetch_returns_the_cache_path(mirror):
    mirror.routes["/b2d.iso"] = Route()
    path = download.fetch([mirror.url("/b2d.iso")], SHA.upper(), progress=False, **FAST)
    assert path == isocache.source_path(SHA) and path.read_bytes() == PAYLOAD


def test_dropped_connection_is_resumed_with_range(mirror):
    cut = 100_000
    mirror.routes["/b2d.iso"] = Route(drops=1, drop_after=cut)
    result = fetch([mirror.url("/b2d.iso")])
    assert result.path.read_bytes() == PAYLOAD
    assert result.resumed
    assert result.bytes_fetched == len(PAYLOAD)  # the resume asked only for what was missing
    assert [r for _, r in mirror.requests] == [None, f"bytes={cut}-"]


def test_connection_dropping_again_and_again_still_finishes(mirror):
    mirror.routes["/b2d.iso"] = Route(drops=6, drop_after=40_000)
    result = fetch([mirror.url("/b2d.iso")], retries=1)  # progress resets the retry budget
    assert result.path.read_bytes() == PAYLOAD
    assert result.bytes_fetched == len(PAYLOAD)
    assert len(mirror.requests) == 7  # six cut-off answers, then the rest


def test_hung_server_mid_body_hits_the_read_timeout_and_resumes(mirror):
    mirror.routes["/b2d.iso"] = Route(drops=1, drop_after=50_000, stall=3.0)
    started = time.monotonic()
    result = fetch([mirror.url("/b2d.iso")], read_timeout=0.2)
    assert time.monotonic() - started < 2.0  # the timeout, not the 3 s stall, ended the first try
    assert result.path.read_bytes() == PAYLOAD and result.resumed
    assert result.bytes_fetched == len(PAYLOAD)


def test_slow_server_times_out_and_the_error_says_so(mirror):
    mirror.routes["/slow.iso"] = Route(delay=5.0)
    started = time.monotonic()
    with pytest.raises(DownloadError) as err:
        fetch([mirror.url("/slow.iso")], read_timeout=0.2, retries=1)
    assert time.monotonic() - started < 2.0
    assert mirror.url("/slow.iso") in str(err.value) and "read timed out" in str(err.value)
    assert len(mirror.requests) == 2  # one try plus the one allowed retry
    assert leftovers() == []


def test_slow_mirror_falls_back_to_the_next(mirror):
    mirror.routes["/slow.iso"] = Route(delay=5.0)
    mirror.routes["/b2d.iso"] = Route()
    result = fetch([mirror.url("/slow.iso"), mirror.url("/b2d.iso")], read_timeout=0.2, retries=0)
    assert result.url == mirror.url("/b2d.iso") and result.path.read_bytes() == PAYLOAD


def test_wrong_checksum_leaves_nothing_behind(mirror):
    mirror.routes["/evil.iso"] = Route(payload=PAYLOAD[:-1] + b"X")
    got = hashlib.sha256(PAYLOAD[:-1] + b"X").hexdigest()
    with pytest.raises(DownloadError) as err:
        fetch([mirror.url("/evil.iso")])
    message = str(err.value)
    assert f"expected sha256 {SHA}" in message and f"got {got}" in message
    assert "\n" not in message
    assert leftovers() == []


def test_404_then_a_working_mirror(mirror):
    mirror.routes["/b2d.iso"] = Route()
    missing = mirror.url("/gone.iso")
    result = fetch([missing, mirror.url("/b2d.iso")])
    assert result.path.read_bytes() == PAYLOAD
    assert result.url == mirror.url("/b2d.iso")
    assert len(result.notes) == 1 and missing in result.notes[0] and "404" in result.notes[0]
    assert result.failures == [f"{missing}: HTTP 404 Not Found"]


def test_every_mirror_failing_lists_each_url_once(mirror):
    refused = f"http://127.0.0.1:{closed_port()}/b2d.iso"
    missing = mirror.url("/gone.iso")
    mirror.routes["/down.iso"] = Route(status=503)
    down = mirror.url("/down.iso")
    with pytest.raises(DownloadError) as err:
        fetch([missing, refused, down], retries=1)
    message = str(err.value)
    assert f"{missing}: HTTP 404" in message
    assert f"{refused}: connection refused" in message
    assert f"{down}: HTTP 503" in message and "gave up after 1 retries" in message
    assert "\n" not in message
    assert sum(1 for p, _ in mirror.requests if p == "/down.iso") == 2


def test_range_not_supported_restarts_from_zero(mirror):
    iso_dir().mkdir(parents=True)
    (iso_dir() / f"{SHA}.iso.part").write_bytes(PAYLOAD[:120_000])
    mirror.routes["/b2d.iso"] = Route(ranges=False)
    result = fetch([mirror.url("/b2d.iso")])
    assert result.path.read_bytes() == PAYLOAD
    assert mirror.requests == [("/b2d.iso", "bytes=120000-")]
    assert result.bytes_fetched == len(PAYLOAD) and not result.resumed


def test_dropped_connection_without_range_support_restarts_from_zero(mirror):
    mirror.routes["/b2d.iso"] = Route(ranges=False, drops=1, drop_after=100_000)
    result = fetch([mirror.url("/b2d.iso")])
    assert result.path.read_bytes() == PAYLOAD
    assert result.bytes_fetched == 100_000 + len(PAYLOAD) < 2 * len(PAYLOAD)


def test_resume_from_a_killed_previous_runs_part_file(mirror):
    iso_dir().mkdir(parents=True)
    (iso_dir() / f"{SHA}.iso.part").write_bytes(PAYLOAD[:123_456])
    mirror.routes["/b2d.iso"] = Route()
    result = fetch([mirror.url("/b2d.iso")])
    assert result.path.read_bytes() == PAYLOAD
    assert result.resumed and result.bytes_fetched == len(PAYLOAD) - 123_456
    assert mirror.requests == [("/b2d.iso", "bytes=123456-")]


def test_complete_part_file_is_checked_without_a_body(mirror):
    iso_dir().mkdir(parents=True)
    (iso_dir() / f"{SHA}.iso.part").write_bytes(PAYLOAD)  # killed just before the rename
    mirror.routes["/b2d.iso"] = Route()
    result = fetch([mirror.url("/b2d.iso")])
    assert result.path.read_bytes() == PAYLOAD and result.bytes_fetched == 0
    assert leftovers() == [f"{SHA}.iso"]


def test_corrupt_part_file_is_deleted_and_the_next_run_succeeds(mirror):
    iso_dir().mkdir(parents=True)
    (iso_dir() / f"{SHA}.iso.part").write_bytes(b"\0" * 1000)
    mirror.routes["/b2d.iso"] = Route()
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch([mirror.url("/b2d.iso")])
    assert leftovers() == []
    assert fetch([mirror.url("/b2d.iso")]).path.read_bytes() == PAYLOAD


def test_content_range_not_matching_our_offset_restarts_from_zero(mirror):
    iso_dir().mkdir(parents=True)
    (iso_dir() / f"{SHA}.iso.part").write_bytes(PAYLOAD[:50_000])
    mirror.routes["/b2d.iso"] = Route(bad_range=True)
    result = fetch([mirror.url("/b2d.iso")])
    assert result.path.read_bytes() == PAYLOAD
    assert [r for _, r in mirror.requests] == ["bytes=50000-", None]


@pytest.mark.parametrize("bad", ["latest", "", "abc", "g" * 64])
def test_checksum_must_be_a_pinned_sha256(bad):
    with pytest.raises(InputError, match="sha256"):
        download.fetch(["http://127.0.0.1:9/x.iso"], bad)


def test_list_and_clear_cache(mirror):
    mirror.routes["/b2d.iso"] = Route()
    fetch([mirror.url("/b2d.iso")])
    (iso_dir() / f"{'0' * 64}.iso.part").write_bytes(b"partial")
    assert isocache.sources() == [iso_dir() / f"{SHA}.iso"]  # the partial download is no entry
    assert isocache.clear_cache() == 1  # one ISO; the .part went with it
    assert leftovers() == []
