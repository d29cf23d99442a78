"""isocache: a hit costs a stat(), reads no source bytes and writes nothing."""

import hashlib
import json
import os
import shutil

import pytest

import isofixtures as fx
from b2dkit import iso, isocache
from b2dkit.errors import InputError
from b2dkit.paths import cache_dir


@pytest.fixture(scope="session")
def base_iso(tmp_path_factory):
    missing = fx.tools_available()
    if missing:
        pytest.skip(missing)
    return fx.build_iso(tmp_path_factory.mktemp("cache-src") / "b2d.iso", "v19")


@pytest.fixture
def src(base_iso, tmp_path):
    path = tmp_path / "boot2docker.iso"
    shutil.copy(base_iso, path)
    return path


def snapshot(root):
    """Every file and dir under root with size and mtime: any write shows up here."""
    found = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.stat(os.path.join(dirpath, name))
            found[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return found


class Spy:
    def __init__(self, real):
        self.real, self.calls = real, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


def test_miss_builds_and_records_where_it_came_from(src):
    path = isocache.cached_remaster(src, ["tz=CST-8"])
    assert path.parent == cache_dir() / "remastered" and path.suffix == ".iso"
    assert b"tz=CST-8" in fx.read_cfg(path, "v19")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert meta["set"] == ["tz=CST-8"] and meta["source"] == str(src.resolve())


def test_hit_neither_rehashes_nor_writes(src, monkeypatch):
    first = isocache.cached_remaster(src, ["tz=CST-8"])
    before = snapshot(cache_dir())
    hasher, builder = Spy(isocache.file_sha256), Spy(iso.remaster)
    monkeypatch.setattr(isocache, "file_sha256", hasher)
    monkeypatch.setattr(iso, "remaster", builder)
    again = isocache.cached_remaster(src, ["tz=CST-8"])
    assert again == first
    assert (hasher.calls, builder.calls) == (0, 0)
    assert snapshot(cache_dir()) == before


def test_changed_source_is_rehashed_and_gets_its_own_entry(src, monkeypatch):
    first = isocache.cached_remaster(src, ["tz=CST-8"])
    with open(src, "r+b") as fp:  # change a byte of padding data: same size, new mtime
        fp.seek(src.stat().st_size - 1)
        fp.write(b"\x01")
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    hasher = Spy(isocache.file_sha256)
    monkeypatch.setattr(isocache, "file_sha256", hasher)
    second = isocache.cached_remaster(src, ["tz=CST-8"])
    assert hasher.calls == 1 and second != first and first.exists()


def test_same_bytes_under_another_name_share_the_entry(src, tmp_path):
    first = isocache.cached_remaster(src, ["tz=CST-8"])
    other = tmp_path / "copy.iso"
    shutil.copy(src, other)
    assert isocache.cached_remaster(other, ["tz=CST-8"]) == first


def test_key_depends_on_codes_label_and_source():
    sha = "0" * 64
    key = isocache.remaster_key(sha, ["tz=CST-8"])
    assert key == isocache.remaster_key(sha, ["tz=CST-8", "tz=CST-8"])
    others = {
        isocache.remaster_key(sha, ["tz=CST-7"]),
        isocache.remaster_key(sha, ["tz=CST-8"], remove=["base"]),
        isocache.remaster_key(sha, ["tz=CST-8"], label="x"),
        isocache.remaster_key("1" * 64, ["tz=CST-8"]),
    }
    assert key not in others and len(others) == 4


def test_bad_code_or_missing_source(src, tmp_path):
    with pytest.raises(InputError):
        isocache.cached_remaster(src, ["tz=Asia/Shanghai"])
    with pytest.raises(InputError, match="does not exist"):
        isocache.cached_remaster(tmp_path / "nope.iso", ["tz=CST-8"])
    assert not (cache_dir() / "remastered").exists() or not list((cache_dir() / "remastered").iterdir())


def test_list_shows_both_kinds_and_clear_removes_them(src):
    built = isocache.cached_remaster(src, ["tz=CST-8", "noembed"])
    downloads = cache_dir() / "iso"
    downloads.mkdir(parents=True)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    shutil.copy(src, downloads / f"{sha}.iso")
    (downloads / f"{sha}.json").write_text(json.dumps({"url": "https://example.invalid/boot2docker.iso"}))
    (downloads / ".x.iso.123.part").write_bytes(b"half")
    rows = isocache.list_cache()
    assert [(r["type"], r["key"]) for r in rows] == [("source", sha), ("remastered", built.stem)]
    assert rows[0]["source"] == "https://example.invalid/boot2docker.iso"
    assert rows[1]["codes"] == ["tz=CST-8", "noembed"] and rows[1]["size"] == built.stat().st_size
    assert isocache.clear_cache() == 2
    assert isocache.list_cache() == []
    assert list(downloads.iterdir()) == [] and not (cache_dir() / "digests.json").exists()
