"""Profiles: finding, extends chains, merge rules, and one-line errors for every bad value."""

import textwrap
from pathlib import Path

import pytest
import yaml

from b2dkit import profile
from b2dkit.hypervisors.base import MachineSpec
from b2dkit.errors import InputError, ProfileError
from b2dkit.forwards import Forward

SHA = "ab" * 32

# A complete profile without extends; tests add or replace one thing at a time.
CORE = """\
name: base-vm
provider: qemu
memory: 1024
cpus: 1
disk: 4096
iso:
  urls: [https://mirror.example/b2d.iso]
  sha256: {sha}
""".format(sha=SHA)
BASE = CORE + "forwards:\n  - {host: 2022, guest: 22}\n"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_for(path: Path) -> str:
    with pytest.raises(ProfileError) as excinfo:
        profile.check_file(path)
    message = str(excinfo.value)
    assert "\n" not in message, message
    assert profile.display_path(path) in message, message
    return message


@pytest.fixture
def no_vboxmanage(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


# -- the shipped profiles ----------------------------------------------------------------


def test_default_profile_loads_with_ssh_forward_and_pinned_upstream_last():
    p = profile.load("default")
    assert p.name == "b2dkit"
    assert p.source == profile.builtin_dir() / "default.yaml"
    assert p.ssh_forward == Forward(host_port=2022, guest_port=22)
    assert p.iso.urls[-1] == "https://github.com/boot2docker/boot2docker/releases/download/v19.03.12/boot2docker.iso"
    assert p.provider in ("virtualbox", "qemu")
    assert p.boot_codes == {}
    assert all(d.startswith("/mnt/sda1") for d in p.persistent_dirs)


def test_cst_reproduces_the_seed_setup():
    p = profile.load("cst")
    default = profile.load("default")
    assert p.boot_codes == {"tz": "CST-8"}
    assert p.boot_code_args() == ["tz=CST-8"]
    assert p.persistent_dirs == ["/mnt/sda1/dev"]
    assert p.mounts == [profile.Mount(guest="/mnt/sda1/dev", host=Path.home() / "workspace" / "dev")]
    assert [(f.host_ip, f.host_port, f.guest_port, f.proto) for f in p.forwards] == [
        ("127.0.0.1", 2022, 22, "tcp"),
        ("127.0.0.1", 8000, 8000, "tcp"),
    ]
    assert [path.name for path in p.chain] == ["cst.yaml", "default.yaml"]
    # everything cst does not mention comes from default
    assert (p.name, p.memory, p.cpus, p.disk, p.iso) == (
        default.name, default.memory, default.cpus, default.disk, default.iso)


# Stated by the v19.03.12 release notes (`sha256sum boot2docker.iso`),
# https://github.com/boot2docker/boot2docker/releases/tag/v19.03.12
V19_03_12_SHA256 = "33d2db9b78f8e90d0998a1ab34d957c7cb1f8ad2893aad480f13d063f019d95b"
V19_03_12_URL = "https://github.com/boot2docker/boot2docker/releases/download/v19.03.12/boot2docker.iso"


def test_the_shipped_default_pins_the_published_v19_03_12_digest():
    iso = profile.load("default").iso
    assert iso.urls[-1] == V19_03_12_URL and iso.require_sha256() == V19_03_12_SHA256


def test_the_placeholder_loads_but_refuses_downloads_naming_the_command_that_pins_it(tmp_path, monkeypatch):
    write(tmp_path / "team", "team.yaml", BASE.replace(SHA, profile.SHA256_PLACEHOLDER))
    monkeypatch.setenv(profile.ENV_PATH, str(tmp_path / "team"))
    prof = profile.load("team")
    assert prof.iso.sha256 == profile.SHA256_PLACEHOLDER and not prof.iso.pinned
    with pytest.raises(ProfileError) as caught:
        prof.iso.require_sha256(prof.ref)
    message = str(caught.value)
    assert "\n" not in message and "not a verified digest" in message
    assert "`b2dkit iso.pin --profile=team`" in message and "`b2dkit iso.pin --profile=team --from PATH`" in message
    # A file outside the search path is named by its path, so the advice works when pasted.
    assert profile.load(str(tmp_path / "team" / "team.yaml")).ref == "team"  # the same file: its name
    other = write(tmp_path / "elsewhere", "team.yaml", BASE)
    assert profile.load(str(other)).ref == profile.display_path(other)


def test_pinned_sha256_is_normalised_to_lower_case(tmp_path):
    path = write(tmp_path, "p.yaml", BASE.replace(SHA, SHA.upper()))
    assert profile.check_file(path).iso.require_sha256() == SHA


def test_available_lists_builtins_and_env_dirs_shadow_them(tmp_path, monkeypatch):
    write(tmp_path / "team", "default.yaml", BASE)
    write(tmp_path / "team", "extra.yml", BASE)
    monkeypatch.setenv("B2DKIT_PROFILES", f"{tmp_path / 'nowhere'}:{tmp_path / 'team'}")
    found = dict(profile.available())
    assert found["default"] == tmp_path / "team" / "default.yaml"
    assert found["extra"] == tmp_path / "team" / "extra.yml"
    assert found["cst"] == profile.builtin_dir() / "cst.yaml"
    assert profile.load("default").name == "base-vm"
    assert profile.load("extra").name == "base-vm"


def test_unknown_name_lists_the_available_ones_with_a_guess():
    with pytest.raises(ProfileError) as excinfo:
        profile.load("cts")
    message = str(excinfo.value)
    assert "'cts'" in message and "did you mean 'cst'" in message and "cst, default" in message
    assert "\n" not in message


def test_path_with_slash_or_yaml_suffix_is_a_path(tmp_path, monkeypatch):
    write(tmp_path, "mine.yaml", BASE)
    monkeypatch.chdir(tmp_path)
    assert profile.load("mine.yaml").name == "base-vm"
    assert profile.load("./mine.yaml").name == "base-vm"
    with pytest.raises(ProfileError, match="does not exist"):
        profile.load("./default")  # a path, so not the built-in profile


# -- extends -----------------------------------------------------------------------------


def test_extends_chain_by_name_and_relative_path(tmp_path, monkeypatch):
    write(tmp_path / "base", "base.yaml", BASE)
    write(tmp_path / "team", "middle.yaml", "extends: ../base/base.yaml\nmemory: 2048\n")
    top = write(tmp_path / "mine", "top.yaml", "extends: middle\ncpus: 4\n")
    monkeypatch.setenv("B2DKIT_PROFILES", str(tmp_path / "team"))
    monkeypatch.chdir(tmp_path / "mine")  # the relative extends is from the file, not the cwd
    p = profile.check_file(top)
    assert (p.name, p.memory, p.cpus, p.disk) == ("base-vm", 2048, 4, 4096)
    team = tmp_path / "team"
    assert p.chain == [top, team / "middle.yaml", team / ".." / "base" / "base.yaml"]


def test_extends_cycle_names_the_chain(tmp_path):
    a = write(tmp_path, "a.yaml", "extends: b.yaml\nmemory: 1024\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\ncpus: 2\n")
    message = error_for(a)
    assert "cycle" in message
    assert "a.yaml -> " in message and "b.yaml -> " in message


def test_extends_itself_is_a_cycle(tmp_path):
    path = write(tmp_path, "self.yaml", "extends: self.yaml\n")
    assert "cycle" in error_for(path)


def test_a_very_long_extends_chain_is_one_line_not_a_recursion_error(tmp_path):
    for i in range(1200):
        write(tmp_path, f"c{i}.yaml", f"extends: c{i + 1}.yaml\n" if i < 1199 else "extends: default\n")
    message = error_for(tmp_path / "c0.yaml")
    assert "deeper than 32" in message and "c0.yaml" in message and "\n" not in message


def test_yaml_nested_thousands_of_levels_is_one_line(tmp_path):
    path = write(tmp_path, "deep.yaml", "extends: default\nmemory: " + "[" * 5000 + "]" * 5000 + "\n")
    message = error_for(path)
    assert "deep.yaml" in message and "nested too deeply" in message


def test_extends_unknown_profile_names_the_extending_file(tmp_path):
    message = error_for(write(tmp_path, "p.yaml", "extends: nosuch\n"))
    assert "extends" in message and "'nosuch'" in message


def test_error_in_parent_names_the_parent_file(tmp_path):
    parent = write(tmp_path, "parent.yaml", BASE + "cpus: 0\n".replace("cpus", "memroy"))
    child = write(tmp_path, "child.yaml", "extends: parent.yaml\n")
    with pytest.raises(ProfileError) as excinfo:
        profile.check_file(child)
    assert str(excinfo.value).startswith(profile.display_path(parent) + ": memroy:")


def test_missing_settings_without_extends(tmp_path):
    message = error_for(write(tmp_path, "p.yaml", "memory: 1024\n"))
    assert "missing name, cpus, disk, iso" in message


# -- merge rules -------------------------------------------------------------------------


@pytest.fixture
def parent(tmp_path):
    return write(tmp_path, "parent.yaml", CORE + """\
boot_codes: {tz: UTC0, loglevel: 3}
forwards:
  - {host: 2022, guest: 22}
  - {host: 8000, guest: 8000}
  - {host: 5353, guest: 53, proto: udp}
persistent_dirs: [/mnt/sda1/dev, /mnt/sda1/cache]
mounts:
  - {guest: /mnt/sda1/dev, host: /srv/dev}
  - {guest: /mnt/sda1/cache, host: /srv/cache}
""")


def child(tmp_path, text):
    return profile.check_file(write(tmp_path, "child.yaml", "extends: parent.yaml\n" + textwrap.dedent(text)))


def test_scalars_override_and_the_rest_is_inherited(tmp_path, parent):
    p = child(tmp_path, "memory: 4096\nname: other\n")
    assert (p.name, p.memory, p.cpus) == ("other", 4096, 1)
    assert p.forwards == profile.check_file(parent).forwards


def test_boot_codes_merge_by_key_and_null_drops(tmp_path, parent):
    p = child(tmp_path, "boot_codes: {tz: CST-8, noembed: true, loglevel: null}\n")
    assert p.boot_codes == {"tz": "CST-8", "noembed": None}
    assert p.boot_code_args() == ["tz=CST-8", "noembed"]


def test_dropping_a_code_nobody_set_is_an_error(tmp_path, parent):
    with pytest.raises(ProfileError, match=r"child.yaml: boot_codes: cannot remove 'nosuch'"):
        child(tmp_path, "boot_codes: {nosuch: null}\n")


def test_forwards_merge_by_protocol_and_host_port(tmp_path, parent):
    p = child(tmp_path, """\
        forwards:
          - {host: 8000, guest: 80}
          - {host: 8000, guest: 8000, proto: udp}
          - {host: 5353, proto: udp, remove: true}
          - "9000:90"
        """)
    assert [(f.host_port, f.guest_port, f.proto) for f in p.forwards] == [
        (2022, 22, "tcp"), (8000, 80, "tcp"), (8000, 8000, "udp"), (9000, 90, "tcp")]


def test_mounts_merge_by_guest_dir_and_persistent_dirs_by_value(tmp_path, parent):
    p = child(tmp_path, """\
        persistent_dirs: [/mnt/sda1/dev, /mnt/sda1/new, {path: /mnt/sda1/cache, remove: true}]
        mounts:
          - {guest: /mnt/sda1/dev, host: ~/code}
          - {guest: /mnt/sda1/cache, remove: true}
        """)
    assert p.persistent_dirs == ["/mnt/sda1/dev", "/mnt/sda1/new"]
    assert p.mounts == [profile.Mount("/mnt/sda1/dev", Path.home() / "code")]


def test_a_mount_is_fresh_unless_it_asks_for_relaxed_caching_and_an_override_can_change_it(tmp_path, parent):
    base = child(tmp_path, "mounts: [{guest: /mnt/sda1/dev, host: /srv/dev, cache: relaxed}]\n")
    assert base.mounts == [profile.Mount("/mnt/sda1/dev", Path("/srv/dev"), cache="relaxed"),
                           profile.Mount("/mnt/sda1/cache", Path("/srv/cache"))]
    assert base.to_dict()["mounts"] == [{"guest": "/mnt/sda1/dev", "host": "/srv/dev", "cache": "relaxed"},
                                        {"guest": "/mnt/sda1/cache", "host": "/srv/cache"}]  # the default unsaid
    again = tmp_path / "again.yaml"  # mounts merge by guest dir: the extending file's item wins whole
    again.write_text(f"extends: {tmp_path / 'child.yaml'}\nmounts: [{{guest: /mnt/sda1/dev, host: /srv/dev}}]\n")
    assert profile.check_file(again).mounts[0] == profile.Mount("/mnt/sda1/dev", Path("/srv/dev"), cache="fresh")


def test_iso_is_replaced_as_a_whole(tmp_path, parent):
    p = child(tmp_path, "iso: {path: images/b2d.iso}\n")
    assert p.iso == profile.IsoSource(path=tmp_path.resolve() / "images" / "b2d.iso")


@pytest.mark.parametrize("flavour", ["guest", "guest-docker"])
def test_iso_build_names_a_guest_flavour(tmp_path, parent, flavour):
    p = child(tmp_path, f"iso: {{build: {flavour}}}\n")
    assert p.iso == profile.IsoSource(build=flavour)


def test_an_unknown_iso_build_lists_the_flavours(tmp_path):
    path = write(tmp_path, "p.yaml", CORE.split("iso:")[0] + "iso: {build: guest-podman}\n"
                 "forwards:\n  - {host: 2022, guest: 22}\n")
    message = error_for(path)
    assert "'guest-podman' is not something b2dkit builds: use guest, guest-docker" in message


def test_removing_the_ssh_forward_is_refused(tmp_path, parent):
    with pytest.raises(ProfileError, match="no forward to guest port 22"):
        child(tmp_path, "forwards: [{host: 2022, remove: true}]\n")


def test_two_mounts_on_one_host_dir_are_refused(tmp_path, parent):
    with pytest.raises(ProfileError, match="host dir '/srv/dev' is used by both"):
        child(tmp_path, "mounts: [{guest: /mnt/sda1/cache, host: /srv/dev}]\n")


# -- overrides ---------------------------------------------------------------------------


def test_provider_and_name_overrides(no_vboxmanage):
    p = profile.load("cst", provider="virtualbox", name="dev-2")
    assert (p.provider, p.name) == ("virtualbox", "dev-2")
    assert profile.load("cst", provider="auto").provider == "qemu"


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"provider": "vmware"}, "--provider: unknown provider 'vmware'"),
        ({"name": "my vm"}, "--name: invalid VM name 'my vm'"),
    ],
)
def test_bad_overrides_are_input_errors(kwargs, fragment):
    with pytest.raises(InputError) as excinfo:
        profile.load("cst", **kwargs)
    assert fragment in str(excinfo.value)


def test_auto_provider_is_qemu_without_vboxmanage(tmp_path, no_vboxmanage):
    assert profile.check_file(write(tmp_path, "p.yaml", BASE.replace("qemu", "auto"))).provider == "qemu"


# -- resolved output ---------------------------------------------------------------------


def test_to_dict_is_itself_a_profile_that_resolves_the_same(tmp_path, parent):
    original = child(tmp_path, """\
        boot_codes: {noembed: true}
        forwards: [{host: 2375, guest: 2375, host_ip: 0.0.0.0, force: true}]
        """)
    again = profile.check_file(write(tmp_path, "flat.yaml", yaml.safe_dump(original.to_dict())))
    assert again.to_dict() == original.to_dict()
    assert list(original.to_dict())[:2] == ["name", "provider"]


def test_host_loopback_is_off_unless_a_profile_says_true_and_reaches_the_spec(tmp_path, parent):
    assert profile.check_file(parent).host_loopback is False
    on = child(tmp_path, "host_loopback: true\n")
    assert on.host_loopback is True and on.to_dict()["host_loopback"] is True
    assert "host_loopback" not in profile.check_file(parent).to_dict()  # the shipped shape stays
    spec = MachineSpec.from_profile(on, tmp_path / "b2d.iso", public_key="ssh-ed25519 AAAA test")
    assert spec.host_loopback is True
    with pytest.raises(ProfileError, match=r"host_loopback: expected true or false, got 'yes'"):
        child(tmp_path, "host_loopback: 'yes'\n")


def test_machine_spec_carries_size_and_forwards(tmp_path):
    p = profile.load("cst")
    spec = MachineSpec.from_profile(p, tmp_path / "b2d.iso", public_key="ssh-ed25519 AAAA test")
    assert (spec.name, spec.memory_mb, spec.cpus, spec.disk_mb) == (p.name, p.memory, p.cpus, p.disk)
    assert spec.forwards == p.forwards and spec.iso == tmp_path / "b2d.iso"


# -- one-line errors for every bad value -------------------------------------------------

BAD = [
    # (what the file says, fragments the message must contain)
    ("memroy: 2048", ["memroy", "did you mean 'memory'"]),
    ("forwards: [{host: 2022, guest: 22, hots: 1}]", ["forwards[0].hots", "did you mean 'host'"]),
    ("iso: {url: https://x/y.iso, sha256: " + SHA + "}", ["iso.url", "did you mean 'urls'"]),
    ("memory: lots", ["memory", "'lots'", "whole number"]),
    ("memory: true", ["memory", "True", "boolean"]),
    ("cpus: 2.5", ["cpus", "2.5"]),
    ("memory: 128", ["memory", "128", "256 to 65536"]),
    ("memory: 100000", ["memory", "100000"]),
    ("disk: 10", ["disk", "10", "1024 to 2000000"]),
    ("disk: 3000000", ["disk", "3000000"]),
    ("cpus: 0", ["cpus", "0", "1 to 64"]),
    ("cpus: 65", ["cpus", "65"]),
    ("name: my vm", ["name", "'my vm'"]),
    ("provider: vbox", ["provider", "'vbox'", "virtualbox, qemu, auto"]),
    ("description: [a]", ["description", "['a']"]),
    ("forwards: [{host: 70000, guest: 22}]", ["forwards[0].host", "70000", "1 to 65535"]),
    ("forwards: [{host: 2022, guest: 0}]", ["forwards[0].guest", "0", "1 to 65535"]),
    ("forwards: [{host: '2022', guest: 22}]", ["forwards[0].host", "'2022'"]),
    ("forwards: [{host: 2022, guest: 22}, {host: 2022, guest: 23}]",
     ["forwards[1]", "duplicate host port 2022"]),
    ("forwards: ['2022:22', '99999:1']", ["forwards[1]", "99999"]),
    ("forwards: [{host: 2022, guest: 22, proto: icmp}]", ["forwards[0].proto", "'icmp'"]),
    ("forwards: [{host: 2022, guest: 22, host_ip: localhost}]", ["forwards[0].host_ip", "'localhost'"]),
    ("forwards: [{host: 2022, guest: 22}, {host: 2375, guest: 2375, host_ip: 0.0.0.0}]",
     ["forwards[1]", "2375", "0.0.0.0", "force: true"]),
    ("forwards: [{host: 2022, guest: 22}, {host: 2376, guest: 2376, host_ip: 0.0.0.0, force: 1}]",
     ["forwards[1].force", "1", "true or false"]),
    ("forwards: {host: 2022}", ["forwards", "expected a list"]),
    ("boot_codes: {tz: Asia/Shanghai}", ["boot_codes.tz", "'Asia/Shanghai'", "POSIX", "CST-8"]),
    ("boot_codes: {tz: shanghai}", ["boot_codes.tz", "'shanghai'"]),
    ("boot_codes: {tz: true}", ["boot_codes.tz", "tz needs a value"]),
    ("boot_codes: {loglevel: '3 4'}", ["boot_codes.loglevel", "'loglevel=3 4'", "space"]),
    ("boot_codes: {user: '\"docker\"'}", ["boot_codes.user", "quotes"]),
    ("boot_codes: {console: [ttyS0]}", ["boot_codes.console", "['ttyS0']"]),
    ("boot_codes: [tz=CST-8]", ["boot_codes", "expected a mapping", "['tz=CST-8']"]),
    ("persistent_dirs: [/home/docker/dev]", ["persistent_dirs[0]", "'/home/docker/dev'", "lost at reboot"]),
    ("persistent_dirs: [/mnt/sda1/../etc]",
     ["persistent_dirs[0]", "'/mnt/sda1/../etc'", "outside /mnt/sda1"]),
    ("persistent_dirs: [/mnt/sda10/x]", ["persistent_dirs[0]", "'/mnt/sda10/x'"]),
    ("persistent_dirs: ['/mnt/sda1/my dir']", ["persistent_dirs[0]", "'/mnt/sda1/my dir'"]),
    ("persistent_dirs: [/mnt/sda1/a, /mnt/sda1/a/]", ["persistent_dirs[1]", "duplicate", "/mnt/sda1/a"]),
    ("mounts: [{guest: /home/docker/src, host: /src}]", ["mounts[0].guest", "'/home/docker/src'", "reboot"]),
    ("mounts: [{guest: /mnt/sda1/src, host: src}]", ["mounts[0].host", "'src'", "relative"]),
    ("mounts: [{guest: /mnt/sda1/src}]", ["mounts[0]", "missing key 'host'"]),
    ("mounts: [{guest: /mnt/sda1/src, host: /src, cache: relax}]",
     ["mounts[0].cache", "'relax'", "did you mean 'relaxed'", "fresh", "within 1 s"]),
    ("mounts: [{guest: /mnt/sda1/src, host: /src, cache: true}]", ["mounts[0].cache", "True (boolean)"]),
    ("mounts: [{guest: /mnt/sda1/src, cache: relaxed, remove: true}]", ["mounts[0].cache", "only guest"]),
    ("mounts: [{guest: /mnt/sda1/src, host: /src, caching: relaxed}]", ["mounts[0].caching", "did you mean 'cache'"]),
    ("iso: {urls: [https://x/b2d.iso], sha256: abc123}", ["iso.sha256", "'abc123'", "64 hex"]),
    ("iso: {urls: [https://x/b2d.iso], sha256: " + "g" * 64 + "}", ["iso.sha256", "g" * 64]),
    ("iso: {urls: [https://x/b2d.iso]}", ["iso.sha256", "missing"]),
    ("iso: {urls: [ftp://x/b2d.iso], sha256: " + SHA + "}", ["iso.urls[0]", "'ftp://x/b2d.iso'"]),
    ("iso: {urls: [https://x/b2d.iso], sha256: " + SHA + ", path: /b2d.iso}", ["iso", "set one of"]),
    ("iso: {}", ["iso", "no image"]),
]


@pytest.mark.parametrize("line, fragments", BAD, ids=[line[:40] for line, _ in BAD])
def test_bad_values_give_one_line_naming_file_key_and_value(tmp_path, line, fragments):
    # The bad line goes last: for a key BASE already has, YAML would reject the
    # duplicate, so replace it instead.
    key = line.split(":", 1)[0]
    lines = BASE.splitlines(keepends=True)
    text, skipping = "", False
    for current in lines:
        if current.startswith(f"{key}:"):
            skipping = True
            continue
        if skipping and current.startswith(" "):
            continue
        skipping = False
        text += current
    message = error_for(write(tmp_path, "bad.yaml", text + line + "\n"))
    for fragment in fragments:
        assert fragment in message, message


def test_forced_docker_port_is_accepted(tmp_path):
    path = write(tmp_path, "p.yaml", BASE + "  - {host: 2375, guest: 2375, host_ip: 0.0.0.0, force: true}\n")
    assert profile.check_file(path).forwards[1].host_ip == "0.0.0.0"


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "broken.yaml", "name: b2dkit\nmemory: [1024\ncpus: 1\n")
    message = error_for(path)
    assert f"{profile.display_path(path)}:3: invalid YAML" in message or \
        f"{profile.display_path(path)}:4: invalid YAML" in message, message


def test_duplicate_keys_are_refused_with_their_line(tmp_path):
    path = write(tmp_path, "dup.yaml", BASE + "memory: 2048\n")
    message = error_for(path)
    assert f"{profile.display_path(path)}:11: invalid YAML: duplicate key 'memory'" in message


@pytest.mark.parametrize(
    "text, fragment",
    [("- name: b2dkit\n", "not a list"), ("just words\n", "not a string"), ("", "empty"), ("# x\n", "empty")],
)
def test_top_level_must_be_a_mapping(tmp_path, text, fragment):
    message = error_for(write(tmp_path, "p.yaml", text))
    assert fragment in message


def test_not_utf8_is_a_clear_error(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    assert "not a text file" in error_for(path)


def test_check_layer_validates_one_file_on_its_own_without_following_extends(tmp_path):
    path = tmp_path / "team.yaml"  # need not exist: an edit checks its text before writing it
    profile.check_layer(path, "extends: nowhere\nmemory: 1024\n")  # a layer alone, parent unresolved
    with pytest.raises(ProfileError) as excinfo:
        profile.check_layer(path, "extends: nowhere\niso:\n  sha256: nothex\n")
    assert str(excinfo.value).endswith("iso.sha256: 'nothex' is not a sha256 digest: expected 64 hex characters")
    with pytest.raises(ProfileError, match=r"team.yaml:2: invalid YAML"):
        profile.check_layer(path, "memory: 1\n  bad: [\n")


def test_host_ip_ipv6_loopback_is_accepted(tmp_path):
    # QEMU and VirtualBox NAT bind IPv4 only; the watcher's relay serves the forward on [::1] too.
    forwards = 'forwards:\n  - {host: 2022, guest: 22}\n  - {host: 8000, guest: 8000, host_ip: "::1"}\n'
    path = write(tmp_path, "v6.yaml", CORE + forwards)
    p = profile.load(str(path))
    assert [(f.host_ip, f.host_port) for f in p.forwards] == [("127.0.0.1", 2022), ("127.0.0.1", 8000)]


@pytest.mark.parametrize("second", [
    "{guest: /mnt/sda1/other, host: /srv/dev/inner}",   # host dir inside another mount's host dir
    "{guest: /mnt/sda1/dev/sub, host: /srv/elsewhere}",  # guest dir inside another mount's guest dir
    "{guest: /mnt/sda1/other, host: /srv/x/../dev/inner}",  # the same, spelt with ..
])
def test_overlapping_mounts_are_refused(tmp_path, second):
    path = tmp_path / "nested.yaml"
    path.write_text("extends: default\nmounts:\n  - {guest: /mnt/sda1/dev, host: /srv/dev}\n"
                    f"  - {second}\n")
    with pytest.raises(ProfileError, match="overlaps"):
        profile.load(str(path))


@pytest.mark.parametrize("iso, setting, mode", [
    ("iso: {build: guest-docker}\n", "", True),
    ("iso: {build: guest}\n", "", False),
    ("iso: {path: /b2d.iso}\n", "", None),  # a boot2docker.iso: asked at start (/etc/init.d/docker)
    ("iso: {build: guest}\n", "docker: true\n", True),
    ("iso: {build: guest-docker}\n", "docker: false\n", False),
])
def test_docker_follows_the_iso_unless_the_profile_says(tmp_path, iso, setting, mode):
    no_iso = BASE.replace("iso:\n  urls: [https://mirror.example/b2d.iso]\n  sha256: " + SHA + "\n", "")
    loaded = profile.check_file(write(tmp_path, "p.yaml", no_iso + iso + setting))
    assert loaded.docker_mode is mode
    assert ("docker" in loaded.to_dict()) is bool(setting)


def test_docker_must_be_a_boolean(tmp_path):
    message = error_for(write(tmp_path, "p.yaml", BASE + "docker: yes-please\n"))
    assert "docker" in message and "expected true or false" in message


def test_images_are_host_paths_next_to_the_profile_and_merge_by_path(tmp_path):
    base = write(tmp_path, "base.yaml", BASE + "images: [team/base.tar]\n")
    mine = write(tmp_path, "sub/mine.yaml", f"extends: {base}\nimages: [/abs/app.tar.gz, ~/x.tar]\n")
    loaded = profile.check_file(mine)
    assert loaded.images == [tmp_path / "team" / "base.tar", Path("/abs/app.tar.gz"), Path.home() / "x.tar"]
    assert "images" in error_for(write(tmp_path, "bad.yaml", BASE + "images: [3]\n"))


# -- ports: auto (autoports.py) -----------------------------------------------------------------------


@pytest.mark.parametrize("setting, allow", [
    ("", None), ("ports: manual\n", None), ("ports: auto\n", ("3000-3999", "8000-8999")),
    ("ports: {auto: true}\n", ("3000-3999", "8000-8999")), ("ports: {auto: false}\n", None),
    ("ports:\n  auto: {allow: [3000-3999, 8080, 5353/udp]}\n", ("3000-3999", "8080", "5353/udp")),
])
def test_ports_auto_is_off_unless_the_profile_says(tmp_path, setting, allow):
    loaded = profile.check_file(write(tmp_path, "p.yaml", BASE + setting))
    assert loaded.auto_ports == allow
    shown = loaded.to_dict()
    assert shown.get("ports") == (None if allow is None else {"auto": {"allow": list(allow)}})
    again = profile.check_file(write(tmp_path, "again.yaml", yaml.safe_dump(shown)))  # to_dict is a profile
    assert again.auto_ports == allow


@pytest.mark.parametrize("setting, where, said", [
    ("ports: everything\n", "ports", "expected auto, manual or {auto: {allow: [...]}}"),
    ("ports: {automatic: true}\n", "ports.automatic", "did you mean 'auto'?"),
    ("ports: {}\n", "ports", "missing key 'auto'"),
    ("ports: {auto: {}}\n", "ports.auto", "missing key 'allow'"),
    ("ports: {auto: {allow: [], deny: [22]}}\n", "ports.auto.deny", "unknown key 'deny'"),
    ("ports: {auto: {allow: []}}\n", "ports.auto.allow", "the allow-list is empty"),
    ("ports: {auto: {allow: 3000-3999}}\n", "ports.auto.allow", "expected a list"),
    ("ports: {auto: {allow: [3000-3999, 9000-8000]}}\n", "ports.auto.allow[1]", "ends below its start"),
    ("ports: {auto: {allow: [70000]}}\n", "ports.auto.allow[0]", "expected a number from 1 to 65535"),
    ("ports: {auto: {allow: [53/sctp]}}\n", "ports.auto.allow[0]", "unknown protocol 'sctp'"),
    ("ports: {auto: yes-please}\n", "ports.auto", "expected a mapping"),
])
def test_bad_ports_settings_are_one_line_naming_the_key(tmp_path, setting, where, said):
    message = error_for(write(tmp_path, "p.yaml", BASE + setting))
    assert f": {where}: " in message and said in message


def test_ports_is_replaced_as_a_whole_by_an_extending_profile(tmp_path):
    base = write(tmp_path, "base.yaml", BASE + "ports: {auto: {allow: [3000]}}\n")
    assert profile.check_file(write(tmp_path, "on.yaml", f"extends: {base}\n")).auto_ports == ("3000",)
    off = write(tmp_path, "off.yaml", f"extends: {base}\nports: manual\n")
    assert profile.check_file(off).auto_ports is None
