"""guest/build.py's offline base image: a `docker save` layout written by our own code, byte for
byte reproducible, whose ids are the digests Docker computes (checked here from the bytes; the
Docker test loads it into a real daemon). No hypervisor, no ISO build."""

import hashlib
import importlib.util
import io
import json
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("guest_build_for_tests", REPO / "guest" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def image(build):
    busybox = b"\x7fELF fake busybox for the layout test"
    applets = ["/bin/busybox", "/bin/sh", "/bin/ls", "/sbin/ifconfig", "/usr/bin/wget", "/usr/sbin/httpd"]
    return build.base_image(busybox, applets, "1:1.35.0-test")


def members(data: bytes):
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: (m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}


def test_reproducible(build, image):
    again = build.base_image(b"\x7fELF fake busybox for the layout test",
                             ["/bin/busybox", "/bin/sh", "/bin/ls", "/sbin/ifconfig", "/usr/bin/wget",
                              "/usr/sbin/httpd"], "1:1.35.0-test")
    assert again == image
    other = build.base_image(b"\x7fELF another busybox", ["/bin/sh"], "1:1.36")
    assert other[1] != image[1]


def test_docker_save_layout_and_digests(image):
    tarball, image_id = image
    outer = members(tarball)
    manifest = json.loads(outer["manifest.json"][1])
    assert len(manifest) == 1
    entry = manifest[0]
    assert entry["RepoTags"] == ["b2dkit/busybox:latest"]
    config_bytes = outer[entry["Config"]][1]
    assert image_id == "sha256:" + hashlib.sha256(config_bytes).hexdigest()  # Docker's image id
    config = json.loads(config_bytes)
    (layer_name,) = entry["Layers"]
    layer = outer[layer_name][1]
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}
    assert (config["os"], config["architecture"], config["config"]["Cmd"]) == ("linux", "amd64", ["sh"])
    assert json.loads(outer["repositories"][1]) == {"b2dkit/busybox": {"latest": layer_name.split("/")[0]}}


def test_layer_is_a_busybox_root(image):
    tarball, _ = image
    outer = members(tarball)
    entry = json.loads(outer["manifest.json"][1])[0]
    layer = members(outer[entry["Layers"][0]][1])
    busybox, data = layer["bin/busybox"]
    assert data.startswith(b"\x7fELF") and busybox.mode == 0o755
    for applet in ("bin/sh", "bin/ls", "sbin/ifconfig", "usr/bin/wget", "usr/sbin/httpd"):
        assert layer[applet][0].issym() and layer[applet][0].linkname == "/bin/busybox"
    assert layer["tmp"][0].mode == 0o1777
    assert layer["etc/passwd"][1].startswith(b"root:x:0:0:")
    for info, _ in layer.values():
        assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
        assert info.mtime == 1593388800


def test_flavours_have_their_own_cache_keys(build, monkeypatch):
    monkeypatch.setattr(build, "package_versions", lambda flavour="guest": f"pkgs-for-{flavour}\n")
    plain, docker = build.input_key("6.1.0-test", "guest"), build.input_key("6.1.0-test", "guest-docker")
    assert plain != docker
    assert build.input_key("6.1.0-test", "guest") == plain
    with pytest.raises(build.BuildError, match="unknown guest flavour"):
        build.check_flavour("guest-podman")
