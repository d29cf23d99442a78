"""``b2dkit iso.pin``: a local HTTP mirror serves real boot2docker-shaped ISOs; the profile edit is minimal.

Then a new hire (a fresh B2DKIT_HOME) creates a VM from the pinned profile on the fake
VBoxManage: the ISO is downloaded again and checked against the pinned digest.
"""

import os
import shutil
from pathlib import Path

import pytest
from httpmirror import Mirror, Route
from isofixtures import build_iso, sha256, tools_available

from b2dkit import download, isocache, lifecycle, pin, profileedit
from b2dkit import profile as profiles
from b2dkit.errors import IsoError, ProfileError
from cli import outputs
from fakevbox import install

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = "https://github.com/boot2docker/boot2docker/releases/download/v19.03.12/boot2docker.iso"
SHIPPED = "33d2db9b78f8e90d0998a1ab34d957c7cb1f8ad2893aad480f13d063f019d95b"  # its release notes' sha256


@pytest.fixture(scope="module")
def isos(tmp_path_factory):
    missing = tools_available()
    if missing:
        pytest.skip(missing)
    root = tmp_path_factory.mktemp("pin-isos")
    return {
        "good": build_iso(root / "boot2docker.iso"),
        "other": build_iso(root / "other.iso", initrd_size=70_000),
        "no_torito": build_iso(root / "plain.iso", eltorito=False),
        "no_cfg": build_iso(root / "nocfg.iso", with_cfg=False),
    }


@pytest.fixture
def mirror(isos):
    m = Mirror()
    for name, path in isos.items():
        m.routes[f"/{name}.iso"] = Route(payload=path.read_bytes())
    m.routes["/error.html"] = Route(payload=b"<html><body>Please log in</body></html>\n" * 50)
    yield m
    m.close()


@pytest.fixture
def team(tmp_path, monkeypatch):
    """A team's profiles directory: a copy of the shipped default.yaml shadows the built-in one,
    not pinned yet (the placeholder in place of the published digest)."""
    folder = tmp_path / "team"
    folder.mkdir()
    shipped = (REPO / "profiles" / "default.yaml").read_text()
    assert shipped.count(f"  sha256: {SHIPPED}\n") == 1
    (folder / "default.yaml").write_text(shipped.replace(SHIPPED, profiles.SHA256_PLACEHOLDER))
    (folder / "cst.yaml").write_text((REPO / "profiles" / "cst.yaml").read_text())
    monkeypatch.setenv("B2DKIT_PROFILES", str(folder))
    return folder


b2dkit = outputs  # (exit code, stdout, stderr) of one command


def changed_lines(before: str, after: str):
    """(removed, added) lines, in order: what `git diff` would show a reviewer."""
    edit = profileedit.Edit(Path("x.yaml"), before, after)
    body = [line for line in edit.diff() if not line.startswith(("---", "+++", "@@"))]
    return [line[1:] for line in body if line[0] == "-"], [line[1:] for line in body if line[0] == "+"]


def comments(text: str):
    return [line for line in text.splitlines() if line.lstrip().startswith("#") or " # " in line]


def cache_files():
    folder = isocache.sources_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# -- pinning from a URL ----------------------------------------------------------------------


def test_pin_by_url_writes_only_the_url_and_sha256_lines(team, mirror, isos, capfd):
    target = team / "default.yaml"
    before = target.read_text()
    target.chmod(0o640)
    url = mirror.url("/good.iso")
    code, out, err = b2dkit(capfd, "iso.pin", "--profile=cst", f"--url={url}")  # cst inherits default's ISO
    assert code == 0, err
    digest = sha256(isos["good"])
    size = isos["good"].stat().st_size
    assert f"  sha256 {digest}" in out.splitlines()
    assert f"({size} bytes)" in out
    assert "El Torito /isolinux/isolinux.bin" in out and "/isolinux/isolinux.cfg (labels: boot2docker)" in out
    after = target.read_text()
    assert changed_lines(before, after) == (
        [f"    - {UPSTREAM}", "  sha256: UNVERIFIED"],
        [f"    - {url}", f"  sha256: {digest}"],
    )
    assert comments(after) == comments(before)  # every comment kept, in place
    assert (target.stat().st_mode & 0o777) == 0o640
    assert (team / "cst.yaml").read_text() == (REPO / "profiles" / "cst.yaml").read_text()
    assert f"pinned: {profiles.display_path(target)}" in out
    # The download is in the cache under its digest, and nothing half-made is left.
    assert cache_files() == [f"{digest}.iso"]
    assert profiles.load("cst").iso.sha256 == digest


def test_the_shipped_placeholder_is_pinned_from_the_profiles_own_url_in_one_line(team, mirror, isos, capfd):
    target = team / "default.yaml"
    target.write_text(target.read_text().replace(UPSTREAM, mirror.url("/good.iso")))
    before = target.read_text()
    assert not profiles.load("default").iso.pinned
    code, out, err = b2dkit(capfd, "iso.pin")  # no URL: the profile's own iso.urls
    assert code == 0, err
    assert changed_lines(before, target.read_text()) == (
        ["  sha256: UNVERIFIED"], [f"  sha256: {sha256(isos['good'])}"])
    assert mirror.requests == [("/good.iso", None)]


def test_pinning_again_changes_nothing(team, mirror, capfd):
    url = mirror.url("/good.iso")
    assert b2dkit(capfd, "iso.pin", f"--url={url}")[0] == 0
    target = team / "default.yaml"
    stamp = target.stat().st_mtime_ns
    code, out, _ = b2dkit(capfd, "iso.pin", f"--url={url}")
    assert code == 0
    assert "already pins this ISO; nothing to change" in out and "pinned:" not in out
    assert target.stat().st_mtime_ns == stamp


def test_dry_run_fetches_and_checks_but_writes_no_profile(team, mirror, isos, capfd):
    before = (team / "default.yaml").read_text()
    code, out, _ = b2dkit(capfd, "iso.pin", f"--url={mirror.url('/good.iso')}", "--dry-run")
    assert code == 0
    assert f"iso.sha256: UNVERIFIED -> {sha256(isos['good'])}" in out
    assert out.rstrip().endswith("dry run: the profile was not changed")
    assert (team / "default.yaml").read_text() == before


@pytest.mark.parametrize("route, why", [
    ("/error.html", "is not an ISO 9660 image"),
    ("/no_torito.iso", "has no El Torito boot entry"),
    ("/no_cfg.iso", "has no isolinux config"),
])
def test_what_is_not_a_boot2docker_iso_is_refused_and_leaves_nothing(team, mirror, capfd, route, why):
    before = (team / "default.yaml").read_text()
    url = mirror.url(route)
    code, out, err = b2dkit(capfd, "iso.pin", f"--url={url}")
    assert code == 2
    assert err.splitlines() == [err.strip()] and err.startswith(f"b2dkit: error: {url} ")
    assert why in err and "Traceback" not in err
    assert (team / "default.yaml").read_text() == before
    assert cache_files() == []  # neither the download nor its partial file is kept


def test_a_bad_first_mirror_falls_through_to_the_next(team, mirror, isos, capfd):
    target = team / "default.yaml"
    urls = [mirror.url("/error.html"), mirror.url("/gone.iso"), mirror.url("/good.iso")]
    text = target.read_text().replace(f"    - {UPSTREAM}", "\n".join(f"    - {u}" for u in urls))
    target.write_text(text)
    code, out, err = b2dkit(capfd, "iso.pin")
    assert code == 0, err
    assert "is not an ISO 9660 image; trying the next mirror" in err
    assert "HTTP 404" in err
    assert changed_lines(text, target.read_text())[1] == [f"  sha256: {sha256(isos['good'])}"]


def test_a_dropped_download_is_resumed_by_the_next_pin(team, mirror, isos, capfd, monkeypatch):
    url = mirror.url("/good.iso")
    real_body = download._body

    def interrupted(response, size):
        chunks = real_body(response, 4096)
        yield next(chunks)
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "_body", interrupted)
    code, _, err = b2dkit(capfd, "iso.pin", f"--url={url}")
    assert code == 130 and "interrupted" in err
    assert len(cache_files()) == 1 and cache_files()[0].endswith(".iso.part")
    monkeypatch.setattr(download, "_body", real_body)
    code, _, err = b2dkit(capfd, "iso.pin", f"--url={url}")
    assert code == 0, err
    assert mirror.requests[-1] == ("/good.iso", "bytes=4096-")
    assert cache_files() == [f"{sha256(isos['good'])}.iso"]


def test_a_mirror_that_changed_its_file_is_pinned_with_a_warning(team, mirror, isos, capfd):
    url = mirror.url("/good.iso")
    assert b2dkit(capfd, "iso.pin", f"--url={url}")[0] == 0
    mirror.routes["/good.iso"] = Route(payload=isos["other"].read_bytes())  # upstream re-published
    code, out, _ = b2dkit(capfd, "iso.pin")
    assert code == 0
    assert f"warning: {url} now serves a different file than the pinned sha256" in out
    assert profiles.load("default").iso.sha256 == sha256(isos["other"])


# -- pinning a local file --------------------------------------------------------------------


def test_from_a_local_file_keeps_the_urls_and_seeds_the_cache(team, isos, capfd):
    target = team / "default.yaml"
    before = target.read_text()
    code, out, err = b2dkit(capfd, "iso.pin", f"--from={isos['good']}")
    assert code == 0, err
    digest = sha256(isos["good"])
    assert changed_lines(before, target.read_text()) == (["  sha256: UNVERIFIED"], [f"  sha256: {digest}"])
    assert profiles.load("default").iso.urls == (UPSTREAM,)
    assert sha256(isocache.source_path(digest)) == digest  # onboarding here needs no download
    assert "so this machine needs no download" in out
    assert sha256(isos["good"]) == digest  # the source is only read


def test_from_a_local_file_in_a_building_profile_writes_path_and_sha256_and_it_is_checked(tmp_path, isos, capfd):
    shutil.copy(REPO / "profiles" / "demo.yaml", tmp_path / "demo.yaml")
    iso = tmp_path / "isos" / "b2d.iso"
    iso.parent.mkdir()
    shutil.copy(isos["good"], iso)
    target = tmp_path / "demo.yaml"
    before = target.read_text()
    code, _, err = b2dkit(capfd, "iso.pin", f"--profile={target}", f"--from={iso}")
    assert code == 0, err
    digest = sha256(iso)
    assert changed_lines(before, target.read_text()) == (
        ["  build: guest-docker"], ["  path: isos/b2d.iso", f"  sha256: {digest}"])  # beside the profile: relative
    prof = profiles.load(str(target))
    assert lifecycle.source_iso(prof) == iso
    shutil.copy(isos["other"], iso)  # someone swaps the file
    with pytest.raises(IsoError, match=f"has sha256 {sha256(iso)}, not the {digest} the profile pins"):
        lifecycle.source_iso(prof)
    assert lifecycle.source_iso(prof, iso_path=iso) == iso  # --iso on the command line is the user's call


def test_from_something_that_is_not_an_iso_is_refused(team, tmp_path, capfd):
    junk = tmp_path / "notes.iso"
    junk.write_text("not an image\n")
    before = (team / "default.yaml").read_text()
    code, _, err = b2dkit(capfd, "iso.pin", f"--from={junk}")
    assert code == 2 and "is not an ISO 9660 image" in err
    assert (team / "default.yaml").read_text() == before and cache_files() == []


def test_bad_input_is_one_line(team, capfd):
    code, _, err = b2dkit(capfd, "iso.pin", "--url=ftp://example/b2d.iso")
    assert code == 2 and err.strip() == (
        "b2dkit: error: 'ftp://example/b2d.iso' is not a download URL: use https://... or http://...")
    code, _, err = b2dkit(capfd, "iso.pin", "--from=/nonexistent.iso")
    assert code == 2 and err.strip() == "b2dkit: error: --from: /nonexistent.iso is not a file"
    code, _, err = b2dkit(capfd, "iso.pin", f"--profile={REPO / 'profiles' / 'demo.yaml'}")
    assert code == 2 and "downloads nothing (iso.build): give the URL to pin" in err


# -- the edit itself -------------------------------------------------------------------------


def test_other_layouts_keep_their_indentation_flow_lists_quotes_and_comments(tmp_path):
    path = tmp_path / "team.yaml"
    text = (
        "# our team's VM\n"
        "extends: default\n"
        "iso:\n"
        "    urls: [https://a.example/b2d.iso, https://b.example/b2d.iso]   # mirror first\n"
        "    sha256: \"UNVERIFIED\"    # fill in\n"
        "forwards:\n"
        "- {host: 2022, remove: true}\n"
        "- \"2222:22\"\n"
        "boot_codes:\n"
        "    tz: CST-8\n"
    )
    path.write_text(text)
    edit = profileedit.iso_edit(path, urls=["https://c.example/b2d.iso"], sha256="ab" * 32)
    assert changed_lines(text, edit.new_text) == (
        ["    urls: [https://a.example/b2d.iso, https://b.example/b2d.iso]   # mirror first",
         "    sha256: \"UNVERIFIED\"    # fill in"],
        ["    urls: [https://c.example/b2d.iso]                              # mirror first",
         f"    sha256: \"{'ab' * 32}\" # fill in"],  # the comment's column, pushed right by the value
    )
    assert edit.changes == [
        "iso.urls: [https://a.example/b2d.iso, https://b.example/b2d.iso] -> [https://c.example/b2d.iso]",
        f"iso.sha256: UNVERIFIED -> {'ab' * 32}",
    ]


def test_an_edit_that_would_make_the_file_invalid_is_refused_before_writing(tmp_path):
    path = tmp_path / "team.yaml"
    path.write_text("iso:\n  build: guest\n")
    with pytest.raises(ProfileError, match=r"team.yaml: iso.urls\[0\]: 'ftp://x/b2d.iso' is not a URL"):
        profileedit.iso_edit(path, urls=["ftp://x/b2d.iso"], sha256="ab" * 32)
    assert path.read_text() == "iso:\n  build: guest\n"


def test_profiles_fetched_into_the_cache_are_not_edited(tmp_path, b2dkit_home):
    cached = b2dkit_home / "cache" / "profiles" / "team.yaml"
    cached.parent.mkdir(parents=True)
    cached.write_text("x: 1\n")
    with pytest.raises(ProfileError, match="only a cached copy"):
        pin.refuse_fetched(cached)
    pin.refuse_fetched(tmp_path / "team.yaml")  # anywhere else is the user's own file


# -- the new hire: a VM from the pinned profile ---------------------------------------------


def _boot_without_a_guest(machine, **kwargs):
    """Step 5 on the fake VirtualBox: it starts the VM there, but no guest answers SSH (the QEMU
    half of test_onboard.py boots a real one from a pinned profile)."""
    lifecycle.provider_for(machine).start()
    return lifecycle.Outcome(done=[f"started VM {machine.name} (fake VirtualBox: no guest to reach)"])


def test_a_new_hire_onboards_from_the_pinned_profile_and_the_iso_is_verified(
        team, mirror, isos, capfd, tmp_path, monkeypatch):
    url = mirror.url("/good.iso")
    assert b2dkit(capfd, "iso.pin", f"--url={url}")[0] == 0
    digest = sha256(isos["good"])
    # Another laptop: empty B2DKIT_HOME and HOME, the team's profiles, the fake VirtualBox.
    monkeypatch.setenv("B2DKIT_HOME", str(tmp_path / "laptop2"))
    monkeypatch.setenv("HOME", str(tmp_path / "home2"))
    os.makedirs(tmp_path / "home2")
    fake = install(tmp_path / "fv", monkeypatch)
    monkeypatch.setattr(lifecycle, "start", _boot_without_a_guest)
    (team / "small.yaml").write_text("extends: cst\nname: pinned-vm\ndisk: 1024\n"
                                     "mounts: [{guest: /mnt/sda1/dev, remove: true}]\n")  # sshfs needs a guest
    code, out, err = b2dkit(capfd, "onboard", "--profile=small", "--provider=virtualbox", "--dry-run")
    assert code == 0, err
    assert f"would: download {url} and verify sha256 {digest[:12]}" in out
    requests = len(mirror.requests)
    code, out, err = b2dkit(capfd, "onboard", "--profile=small", "--provider=virtualbox", "--yes")
    assert code == 0, err
    assert len(mirror.requests) == requests + 1  # downloaded once more, on this laptop, and checked
    assert sha256(isocache.source_path(digest)) == digest
    assert f"done: download {url} and verify sha256 {digest[:12]}" in out
    assert "done: remaster the ISO with tz=CST-8" in out and "done: created VM pinned-vm on virtualbox" in out
    assert "Your dev VM pinned-vm is ready (virtualbox)." in out
    assert fake.state()["machines"]["pinned-vm"]["state"] == "running"
    # The VM boots the remaster of exactly the pinned bytes.
    assert isocache.lookup(isocache.source_path(digest), ["tz=CST-8"]) is not None
    # A mirror that now serves other bytes is caught by the pin.
    mirror.routes["/good.iso"] = Route(payload=isos["other"].read_bytes())
    monkeypatch.setenv("B2DKIT_HOME", str(tmp_path / "laptop3"))
    code, out, err = b2dkit(capfd, "onboard", "--profile=small", "--provider=virtualbox", "--yes",
                            "--name=third")
    assert code == 3 and "checksum mismatch" in err and f"expected sha256 {digest}" in err
    assert "[3/7]" not in out and "third" not in fake.state()["machines"]


def test_an_unpinned_profile_refuses_the_download_in_one_line_naming_the_pin_command(
        team, isos, capfd, tmp_path, monkeypatch):
    install(tmp_path / "fv", monkeypatch)
    code, out, err = b2dkit(capfd, "onboard", "--profile=cst", "--provider=virtualbox", "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "step 2 (iso) failed: iso.sha256 is 'UNVERIFIED', not a verified digest" in err
    assert "`b2dkit iso.pin --profile=cst`" in err and "`b2dkit iso.pin --profile=cst --from PATH`" in err
    assert cache_files() == []
    # The command it names, as named (with the copy this laptop has), fixes it.
    code, _, err = b2dkit(capfd, "iso.pin", "--profile=cst", f"--from={isos['good']}")
    assert code == 0, err
    code, out, err = b2dkit(capfd, "onboard", "--profile=cst", "--provider=virtualbox", "--dry-run")
    assert code == 0, err
    assert f"already: ISO {sha256(isos['good'])}.iso is in the cache" in out
