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


BACKEND = "# the backend team\nextends: cst\nname: backend-vm\ndisk: 1024\n"


def lead(tmp_path, monkeypatch, capfd, backend=BACKEND, prepare=lambda team: None):
    """The team lead's machine: profiles pinned to a mirror's ISO, then bundled; the mirror is then gone."""
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
    (team / "backend.yaml").write_text(backend)
    prepare(team)
    monkeypatch.setenv("B2DKIT_PROFILES", str(team))
    assert b2dkit(capfd, "iso.pin", f"--url={mirror.url('/b2d.iso')}")[0] == 0
    out = tmp_path / "backend-bundle.tar"
    code, said, err = b2dkit(capfd, "onboard", "--profile=backend", f"--bundle={out}")
    assert code == 0, err
    mirror.close()  # from here on there is no network
    return {"tar": out, "iso": iso, "said": said, "sha256": sha256(iso), "team": team}


@pytest.fixture
def made(tmp_path, monkeypatch, capfd):
    return lead(tmp_path, monkeypatch, capfd)


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


# -- the profile's Docker images travel in the bundle -------------------------------------------

IMAGES_BACKEND = BACKEND + """images:
  - images/base.tar          # the team's base image, beside this file
  - {tools}
"""


def docker_save(path: Path, tag: str) -> Path:
    """A tarball shaped like `docker save` output (what dockerd.check_images accepts)."""
    with tarfile.open(path, "w") as tar:
        members = {"manifest.json": json.dumps([{"RepoTags": [tag]}]).encode(), "layer.tar": tag.encode()}
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def made_with_images(tmp_path, monkeypatch, capfd):
    tools = docker_save(tmp_path / "elsewhere-tools.tar", "team/tools:2")  # an absolute path, outside the team dir

    def add_images(team):
        (team / "images").mkdir()
        docker_save(team / "images" / "base.tar", "team/base:1")

    made = lead(tmp_path, monkeypatch, capfd, IMAGES_BACKEND.format(tools=tools), add_images)
    made["images"] = {"base.tar": sha256(made["team"] / "images" / "base.tar"), tools.name: sha256(tools)}
    made["originals"] = [made["team"] / "images" / "base.tar", tools]
    return made


def test_the_bundle_carries_the_profiles_images_and_names_them_in_the_profile(made_with_images):
    made = made_with_images
    with tarfile.open(made["tar"]) as tar:
        names = sorted(tar.getnames())
        manifest = json.loads(tar.extractfile(bundle.MANIFEST).read())
        backend = tar.extractfile("profiles/backend.yaml").read().decode()
        carried = {n[len("images/"):]: sha256_of(tar.extractfile(n).read()) for n in names if n.startswith("images/")}
    assert carried == made["images"]  # both, byte for byte
    assert sorted(manifest["images"]) == ["images/base.tar", "images/elsewhere-tools.tar"]
    assert {n: manifest["members"][f"images/{n}"]["sha256"] for n in carried} == made["images"]
    listed = backend[backend.index("images:\n"):].splitlines()
    assert [" ".join(line.split()) for line in listed] == [  # in place, its comment kept
        "images:", "- ../images/base.tar # the team's base image, beside this file", "- ../images/elsewhere-tools.tar"]
    assert "2 image(s)" in made["said"]


def test_a_new_hire_onboards_with_the_bundled_images_and_no_network(made_with_images, tmp_path, monkeypatch, capfd):
    from b2dkit import dockerd, machines

    made = made_with_images
    for original in made["originals"]:
        original.unlink()  # not on the new hire's laptop
    monkeypatch.delenv("B2DKIT_PROFILES")
    monkeypatch.setenv("B2DKIT_HOME", str(tmp_path / "laptop2"))
    monkeypatch.setenv("HOME", str(tmp_path / "home2"))
    (tmp_path / "home2").mkdir()
    install(tmp_path / "fv", monkeypatch)
    started = []

    def boot(machine, **kwargs):  # what vm.start reads first: the images it will copy into the guest
        started.append(dockerd.check_images(machine.images))
        raise KeyboardInterrupt  # the guest's side: test_docker_e2e.py loads profile images for real

    monkeypatch.setattr(lifecycle, "start", boot)
    code, out, err = b2dkit(capfd, "onboard", f"--from-bundle={made['tar']}", "--provider=virtualbox", "--yes")
    assert code == 130 and "interrupted during step 5 (start)" in err
    assert "2 image(s)" in out
    (images,) = started
    bundles = tmp_path / "laptop2" / "cache" / "bundles"
    assert all(p.parent.parent.parent == bundles and p.parent.name == "images" for p in images)  # plainly named
    assert {p.name: sha256(p) for p in images} == made["images"]
    assert sorted(machines.load("backend-vm").images) == sorted(str(p) for p in images)


def test_a_tampered_image_is_refused_and_a_missing_one_is_named_before_bundling(
        made_with_images, tmp_path, monkeypatch, capfd):
    made = made_with_images
    monkeypatch.setenv("B2DKIT_HOME", str(tmp_path / "laptop2"))

    def flip(member, data):
        if member.name == "images/base.tar":
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        return member, data

    bad = _rewrite(made["tar"], tmp_path / "bad.tar", flip)
    code, _, err = b2dkit(capfd, "onboard", f"--from-bundle={bad}", "--dry-run")
    assert code == 2 and len(err.splitlines()) == 1
    assert "images/base.tar has sha256 " in err and "nothing was installed from it" in err
    assert not list((tmp_path / "laptop2").rglob("base.tar"))
    # On the lead's side, a tarball that is not there is one line, and no archive is written.
    made["originals"][0].unlink()
    again = tmp_path / "again.tar"
    code, _, err = b2dkit(capfd, "onboard", "--profile=backend", f"--bundle={again}")
    assert code == 2 and err.splitlines() == [f"b2dkit: error: profile image {made['originals'][0]} does not exist "
                                              "(fix the profile's images:)"]
    assert not again.exists()  # named before the ISO was even looked for (this laptop has no mirror)


def sha256_of(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
