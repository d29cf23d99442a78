"""``onboard --bundle`` / ``--from-bundle``: a team lead bundles a pinned profile chain and its ISO
(served by a local mirror), a new hire onboards from the archive with the mirror gone (fake
VBoxManage; the boot is replaced by Ctrl-C, as in test_onboard.py).  Tampered archives are refused.
"""

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from httpmirror import Mirror, Route
from isofixtures import build_iso, sha256, tools_available

from b2dkit import bundle, isocache, lifecycle
from b2dkit import profile as profiles
from cli import outputs
from fakevbox import install

REPO = Path(__file__).resolve().parents[1]


b2dkit = outputs  # (exit code, stdout, stderr) of one command


@pytest.fixture
def made(tmp_path, monkeypatch, capfd):
    """The team lead's machine: profiles pinned to a mirror's ISO, then bundled."""
    missing = tools_available()
    if missing:
        pytest.skip(missing)
    iso = build_iso(tmp_path / "boot2docker.iso")
    mirror = Mirror()
    mirror.routes["/b2d.iso"] = Route(payload=iso.read_bytes())
    team = tmp_path / "team"
    team.mkdir()
    shutil.copy(REPO / "profiles" / "default.yaml", team / "default.yaml")
    shutil.copy(REPO / "profiles" / "cst.yaml", team / "cst.yaml")
    (team / "backend.yaml").write_text("# the backend team\nextends: cst\nname: backend-vm\ndisk: 1024\n")
    monkeypatch.setenv("B2DKIT_PROFILES", str(team))
    assert b2dkit(capfd, "iso.pin", f"--url={mirror.url('/b2d.iso')}")[0] == 0
    out = tmp_path / "backend-bundle.tar"
    code, said, err = b2dkit(capfd, "onboard", "--profile=backend", f"--bundle={out}")
    assert code == 0, err
    mirror.close()  # from here on there is no network
    yield {"tar": out, "iso": iso, "said": said, "sha256": sha256(iso), "team": team}


def test_the_bundle_holds_the_chain_with_its_extends_rewritten_and_the_iso(made):
    with tarfile.open(made["tar"]) as tar:
        names = sorted(tar.getnames())
        manifest = json.loads(tar.extractfile(bundle.MANIFEST).read())
        bundled = {n: tar.extractfile(n).read().decode() for n in names if n.startswith("profiles/")}
    assert names == [bundle.MANIFEST, f"iso/{made['sha256']}.iso", "profiles/backend.yaml", "profiles/cst.yaml",
                     "profiles/default.yaml"]
    assert manifest["profile"] == "profiles/backend.yaml" and manifest["iso"]["sha256"] == made["sha256"]
    assert bundled["profiles/backend.yaml"].startswith("# the backend team\nextends: cst.yaml\n")
    assert "extends: default.yaml\n" in bundled["profiles/cst.yaml"]
    original = (made["team"] / "default.yaml").read_text()
    assert bundled["profiles/default.yaml"] == original  # the base: unchanged, comments and all
    assert f"sha256 {sha256(made['tar'])}" in made["said"]  # to compare on the receiving side


def test_a_new_hire_onboards_from_the_bundle_with_no_network(made, tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("B2DKIT_PROFILES")
    monkeypatch.setenv("B2DKIT_HOME", str(tmp_path / "laptop2"))
    monkeypatch.setenv("HOME", str(tmp_path / "home2"))
    (tmp_path / "home2").mkdir()
    fake = install(tmp_path / "fv", monkeypatch)
    code, out, err = b2dkit(capfd, "onboard", f"--from-bundle={made['tar']}", "--provider=virtualbox", "--dry-run")
    assert code == 0, err
    assert f"already: ISO {made['sha256']}.iso is in the cache" in out
    assert sha256(isocache.source_path(made["sha256"])) == made["sha256"]

    def interrupted(machine, **kwargs):
        raise KeyboardInterrupt  # the boot needs a real guest (test_onboard.py's QEMU half)

    monkeypatch.setattr(lifecycle, "start", interrupted)
    code, out, err = b2dkit(capfd, "onboard", f"--from-bundle={made['tar']}", "--provider=virtualbox", "--yes")
    assert code == 130 and "interrupted during step 5 (start)" in err
    assert "done: created VM backend-vm on virtualbox" in out
    assert list(fake.state()["machines"]) == ["backend-vm"]
    prof = profiles.load(str(next((tmp_path / "laptop2" / "cache" / "bundles").rglob("backend.yaml"))))
    assert prof.boot_codes == {"tz": "CST-8"} and prof.iso.sha256 == made["sha256"]


def _rewrite(src: Path, dst: Path, change):
    """Copy the tar, passing each (TarInfo, bytes) through ``change``."""
    with tarfile.open(src) as tar, tarfile.open(dst, "w") as out:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            member, data = change(member, data)
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    return dst


def test_a_tampered_iso_is_refused_and_nothing_is_installed(made, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("B2DKIT_HOME", str(tmp_path / "laptop2"))  # (the lead's cache has the good ISO)

    def flip(member, data):
        if member.name.startswith("iso/"):
            data = data[:40000] + bytes([data[40000] ^ 1]) + data[40001:]
        return member, data

    bad = _rewrite(made["tar"], tmp_path / "bad.tar", flip)
    code, _, err = b2dkit(capfd, "onboard", f"--from-bundle={bad}", "--dry-run")
    assert code == 2 and len(err.splitlines()) == 1
    assert f"iso/{made['sha256']}.iso has sha256 " in err and "not the " in err
    assert isocache.sources() == [] and not list(isocache.sources_dir().glob("*.part"))


def test_members_outside_the_bundle_and_non_archives_are_refused(made, tmp_path, capfd):
    def escape(member, data):
        if member.name == bundle.MANIFEST:
            manifest = json.loads(data)
            manifest["members"]["../evil.yaml"] = {"sha256": "0" * 64, "size": 1}
            data = json.dumps(manifest).encode()
        return member, data

    bad = _rewrite(made["tar"], tmp_path / "escape.tar", escape)
    code, _, err = b2dkit(capfd, "onboard", f"--from-bundle={bad}", "--dry-run")
    assert code == 2 and "refusing member '../evil.yaml'" in err
    junk = tmp_path / "junk.tar"
    junk.write_text("not an archive\n")
    code, _, err = b2dkit(capfd, "onboard", f"--from-bundle={junk}", "--dry-run")
    assert code == 2 and err.startswith(f"b2dkit: error: --from-bundle: {junk} is not a b2dkit bundle")
    code, _, err = b2dkit(capfd, "onboard", f"--bundle={tmp_path / 'x.tar'}", f"--from-bundle={made['tar']}")
    assert code == 2 and "not both" in err
