"""Team profiles: one YAML file says which VM every laptop gets.

A profile names the VM, its provider and size, where its boot2docker ISO comes from, the
kernel boot codes to bake into it, NAT forwards, the directories that must survive a
reboot and the sshfs mounts.  ``extends`` layers a team's changes on another profile
(``cst`` on ``default``), so most profiles are a few lines.

Validation is strict on purpose: a typo in a shared profile would otherwise give every
new hire a subtly different VM.  Every error is one line naming the file, the key path
(``forwards[1].host``) and the bad value.

Merging rules, base first, extending file last:

* scalars (``name``, ``memory`` ...) override; ``iso`` is replaced as a whole (it names one image);
* ``boot_codes`` merge by key; ``key: null`` (or ``false``) drops an inherited code;
  ``key: true`` is a bare flag such as ``noembed``;
* ``forwards`` merge by (protocol, host port), ``mounts`` by guest dir, ``persistent_dirs``
  by value; an item with ``remove: true`` drops the inherited one.
"""

import difflib
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, Set, Tuple, Union

import yaml

from . import bootcfg, forwards, paths, remoteprofile
from .boot2docker import PERSISTENT_ROOT
from .digests import is_sha256
from .errors import InputError, ProfileError
from .forwards import Forward, ssh_forward
from .hypervisors import PROVIDERS, default_provider_name
from .hypervisors.base import CPUS, MEMORY_MB
from .paths import StrPath

ENV_PATH = "B2DKIT_PROFILES"
DEFAULT_PROFILE = "default"
SUFFIXES = (".yaml", ".yml")
PROVIDER_CHOICES = PROVIDERS + ("auto",)

# boot2docker runs from RAM; only the disk mounted at /mnt/sda1 survives a reboot.
DISK_MB = (1024, 2_000_000)
URL_SCHEMES = ("https://", "http://", "file://")
# Marks a sha256 nobody has verified yet: the profile loads (a local ``iso.path`` works),
# but downloading by URL refuses until a real digest is pinned.
SHA256_PLACEHOLDER = "UNVERIFIED"

# Guest dirs end up in the guest's shell commands (mkdir, sshfs): keep them boring.
_GUEST_PATH = re.compile(r"^/[A-Za-z0-9._@+/-]*$")

TOP_KEYS = (
    "extends",
    "description",
    "name",
    "provider",
    "memory",
    "cpus",
    "disk",
    "host_loopback",
    "iso",
    "boot_codes",
    "forwards",
    "persistent_dirs",
    "mounts",
    "docker",
    "images",
    "ports",
)
ISO_KEYS = ("urls", "sha256", "path", "build")
# Images b2dkit builds itself with guest/build.py: the boot2docker-compatible guest without Docker
# (fastest boot, for tests) or with Docker Engine from Debian packages.
ISO_BUILDS = ("guest", "guest-docker")
FORWARD_KEYS = ("host", "guest", "proto", "host_ip", "force", "remove")
MOUNT_KEYS = ("guest", "host", "cache", "remove")
# How long a mount may show the guest's old state (sshfs.py has the options and the bounds):
# fresh, the default: within 1 s; relaxed: up to 20 s, for faster warm stat walks (opt-in).
MOUNT_CACHES = ("fresh", "relaxed")
PERSISTENT_KEYS = ("path", "remove")
PORTS_MODES = ("auto", "manual")  # ports: auto | manual | {auto: true | false | {allow: [...]}}
_REMOVE = object()  # marks "drop the inherited item" inside a layer


# -- the resolved result ---------------------------------------------------------------------


@dataclass(frozen=True)
class IsoSource:
    """Where the boot2docker ISO comes from: mirrors tried in order, or a local file."""

    urls: Tuple[str, ...] = ()
    sha256: Optional[str] = None  # lower-case hex, SHA256_PLACEHOLDER, or None (local path only)
    path: Optional[Path] = None
    build: Optional[str] = None  # "guest" / "guest-docker": built locally from Debian packages (no download)

    @property
    def pinned(self) -> bool:
        return bool(self.sha256) and self.sha256 != SHA256_PLACEHOLDER

    def require_sha256(self, profile_ref: str = "") -> str:
        """The digest a download must match; refuses the unverified placeholder, naming the
        command that fixes it (``profile_ref``: how the user names the profile, see Profile.ref)."""
        if not self.pinned:
            pin = f"b2dkit iso.pin --profile={profile_ref}" if profile_ref else "b2dkit iso.pin"
            raise ProfileError(
                f"iso.sha256 is {self.sha256!r}, not a verified digest, so the download cannot be checked",
                hint=f"pin it: `{pin}` (downloads the ISO, checks it, writes its sha256), "
                f"or `{pin} --from PATH` for a boot2docker.iso you have; or set iso.path to a local file",
            )
        return str(self.sha256)

    def to_dict(self) -> dict:
        data: Dict[str, object] = {}
        if self.urls:
            data["urls"] = list(self.urls)
        if self.sha256:
            data["sha256"] = self.sha256
        if self.path:
            data["path"] = str(self.path)
        if self.build:
            data["build"] = self.build
        return data


@dataclass(frozen=True)
class Mount:
    """A guest dir (under /mnt/sda1) shown on the host through sshfs."""

    guest: str
    host: Path
    cache: str = "fresh"  # one of MOUNT_CACHES

    def to_dict(self) -> dict:
        data = {"guest": self.guest, "host": str(self.host)}
        if self.cache != "fresh":  # the default stays out, so older readers still take the record
            data["cache"] = self.cache
        return data


@dataclass
class Profile:
    """A fully resolved profile: every value set, validated, inherited values merged in.

    ``boot_codes`` maps key -> value, or None for a bare flag; ``chain`` lists the files
    that made it, the profile's own file first.
    """

    name: str
    provider: str
    memory: int  # MB
    cpus: int
    disk: int  # MB
    iso: IsoSource
    boot_codes: Dict[str, Optional[str]] = field(default_factory=dict)
    forwards: List[Forward] = field(default_factory=list)
    persistent_dirs: List[str] = field(default_factory=list)
    mounts: List[Mount] = field(default_factory=list)
    host_loopback: bool = False  # the guest may reach the host's 127.0.0.1 (VirtualBox 7.x: opt-in)
    description: str = ""
    # Does the guest run Docker? None: follow the ISO (guest-docker yes, guest no, any other
    # boot2docker.iso is asked at start: /etc/init.d/docker). False skips Docker set-up.
    docker: Optional[bool] = None
    # Image tarballs (`docker save`) on this computer that the guest's daemon loads at start.
    images: List[Path] = field(default_factory=list)
    # ``ports: auto``: forward what running containers publish, on this allow-list (None: off).
    auto_ports: Optional[Tuple[str, ...]] = None
    source: Optional[Path] = None
    chain: List[Path] = field(default_factory=list)

    @property
    def profile_name(self) -> str:
        """The profile's own name (``cst``), as opposed to the VM's name."""
        return _stem(self.source) if self.source else self.name

    @property
    def ref(self) -> str:
        """How to name this profile on a command line: its name when that finds this very file,
        else its path (advice such as `b2dkit iso.pin --profile=…` must work when pasted)."""
        if self.source is None:
            return self.name
        found = dict(available()).get(self.profile_name)
        if found is not None and found.resolve() == self.source.resolve():
            return self.profile_name
        return display_path(self.source)

    @property
    def ssh_forward(self) -> Forward:
        fwd = ssh_forward(self.forwards)
        if fwd:
            return fwd
        raise ProfileError(f"profile {self.profile_name!r} has no forward to guest port 22 (ssh)")

    @property
    def docker_mode(self) -> Optional[bool]:
        """True: the guest must run Docker; False: it has none; None: ask the guest when it starts."""
        if self.docker is not None:
            return self.docker
        return {"guest-docker": True, "guest": False}.get(self.iso.build or "")

    def boot_code_args(self) -> List[str]:
        """``["tz=CST-8", "noembed"]``: what goes on the kernel command line."""
        return [key if value is None else f"{key}={value}" for key, value in self.boot_codes.items()]

    def to_dict(self) -> dict:
        """Plain data in file order; itself a valid profile file (no ``extends``)."""
        data: Dict[str, object] = {}
        if self.description:
            data["description"] = self.description
        data.update(
            name=self.name,
            provider=self.provider,
            memory=self.memory,
            cpus=self.cpus,
            disk=self.disk,
        )
        if self.host_loopback:
            data["host_loopback"] = True
        data.update(
            iso=self.iso.to_dict(),
            boot_codes={key: True if value is None else value for key, value in self.boot_codes.items()},
            forwards=[_forward_dict(fwd) for fwd in self.forwards],
            persistent_dirs=list(self.persistent_dirs),
            mounts=[mount.to_dict() for mount in self.mounts],
        )
        if self.docker is not None:
            data["docker"] = self.docker
        if self.images:
            data["images"] = [str(path) for path in self.images]
        if self.auto_ports is not None:
            data["ports"] = {"auto": {"allow": list(self.auto_ports)}}
        return data


def _forward_dict(fwd: Forward) -> dict:
    data = {"host": fwd.host_port, "guest": fwd.guest_port, "proto": fwd.proto, "host_ip": fwd.host_ip}
    try:
        forwards.check_exposure(fwd)
    except InputError:
        data["force"] = True  # it loaded, so the file forced it; keep the output loadable
    return data


# -- finding profiles ------------------------------------------------------------------------


def builtin_dir() -> Path:
    """The profiles shipped with b2dkit: ``profiles/`` in a checkout, ``b2dkit/profiles/`` in a wheel.

    pyproject maps the repo's ``profiles/`` to the data-only package ``b2dkit.profiles``.
    It has no ``__init__.py``, so ``importlib.resources`` sees a namespace package and hands
    back no plain path; the installed files simply sit next to this module.
    """
    here = Path(__file__).resolve().parent
    checkout = here.parent / "profiles"
    return checkout if checkout.is_dir() else here / "profiles"


def search_dirs() -> List[Path]:
    """``$B2DKIT_PROFILES`` (os.pathsep-separated) first, so a team can shadow built-ins."""
    dirs = [Path(item).expanduser() for item in os.environ.get(ENV_PATH, "").split(os.pathsep) if item]
    dirs.append(builtin_dir())
    return dirs


def available() -> List[Tuple[str, Path]]:
    """(name, path) of every profile on the search path; the first of a name wins."""
    found: Dict[str, Path] = {}
    for directory in search_dirs():
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path.suffix in SUFFIXES and path.is_file():
                found.setdefault(path.stem, path)
    return sorted(found.items())


def is_path_like(text: str) -> bool:
    return "/" in text or os.sep in text or text.endswith(SUFFIXES)


def find(name_or_path: StrPath, base_dir: Optional[Path] = None) -> Path:
    """A path (relative to ``base_dir`` when given) or a profile name on the search path."""
    text = str(name_or_path).strip()
    if not text:
        raise ProfileError("empty profile name: give a profile name (e.g. default) or a path to a .yaml file")
    if remoteprofile.is_remote(text):  # https://…/team.yaml#sha256=…, git+URL@TAG:path.yaml
        return remoteprofile.fetch(text)
    if is_path_like(text):
        path = Path(text).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        if not path.is_file():
            raise ProfileError(f"profile file {display_path(path)} does not exist")
        return path
    for directory in search_dirs():
        for suffix in SUFFIXES:
            path = directory / f"{text}{suffix}"
            if path.is_file():
                return path
    names = [name for name, _ in available()]
    close = difflib.get_close_matches(text, names, n=1)
    guess = f"did you mean {close[0]!r}? " if close else ""
    raise ProfileError(
        f"unknown profile {text!r}: {guess}available: {', '.join(names) or 'none'}",
        hint=f"or give a path to a .yaml file, or add a directory to ${ENV_PATH}",
    )


# -- loading ---------------------------------------------------------------------------------


def load(
    name_or_path: StrPath = DEFAULT_PROFILE, provider: Optional[str] = None, name: Optional[str] = None
) -> Profile:
    """Find, read, merge and validate a profile; ``provider``/``name`` override its values."""
    return _resolve(find(name_or_path), provider=provider, name=name)


def check_file(path: StrPath) -> Profile:
    """Validate one file (``profile.check``): always a path, even without a slash."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ProfileError(f"profile file {display_path(path)} does not exist")
    return _resolve(path)


def check_layer(path: StrPath, text: str) -> None:
    """Validate ``text`` as the content of the file ``path`` on its own, ``extends`` not followed.

    An in-place edit (``iso.pin``) checks its result with this before the rename, so an
    edit that would break the file never replaces it.
    """
    path = Path(path)
    _check_layer(path, _parse(path, text))


def layer_images(path: StrPath) -> List[Path]:
    """The image tarballs one file lists itself (resolved next to it), its extends chain aside."""
    path = Path(path)
    return list(_check_layer(path, _read(path)).values.get("images", {}))


def _resolve(path: Path, provider: Optional[str] = None, name: Optional[str] = None) -> Profile:
    layers = _load_chain(path, [])
    merged: dict = {}
    for layer in layers:
        _merge(merged, layer)
    return _finish(merged, path, [layer.path for layer in reversed(layers)], provider, name)


class _Layer:
    """One file's checked settings, values already normalised."""

    def __init__(self, path: Path, values: dict) -> None:
        self.path = path
        self.values = values


MAX_EXTENDS = 32  # a chain longer than this is a mistake, and Python's stack would give out first


def _load_chain(path: Path, seen: List[Path]) -> List[_Layer]:
    """Layers base first; ``seen`` is the chain walked so far, for the cycle message."""
    key = path.resolve()
    if key in seen:
        loop = " -> ".join(display_path(p) for p in seen + [key])
        raise ProfileError(f"profile cycle: {loop} (extends must not loop back)")
    if len(seen) >= MAX_EXTENDS:
        raise ProfileError(
            f"{display_path(seen[0])}: extends chain is deeper than {MAX_EXTENDS} profiles (at {display_path(path)});"
            " a team needs a few layers, not hundreds"
        )
    layer = _check_layer(path, _read(path))
    parent = layer.values.pop("extends", None)
    if parent is None:
        return [layer]
    try:
        parent_path = remoteprofile.resolve_extends(parent, path) or find(parent, base_dir=path.parent)
    except ProfileError as exc:
        raise ProfileError(f"{display_path(path)}: extends: {exc.message}", hint=exc.hint) from None
    return _load_chain(parent_path, seen + [key]) + [layer]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (YAML would silently keep the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Hashable, Any]:
        seen: Set[Any] = set()  # scalar key values: parsed YAML
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def _read(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ProfileError(f"{display_path(path)}: not a text file (expected UTF-8 YAML)") from None
    except OSError as exc:
        raise ProfileError(f"{display_path(path)}: cannot read: {exc.strerror}") from None
    return _parse(path, text)


def _parse(path: Path, text: str) -> dict:
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{display_path(path)}:{mark.line + 1}" if mark else display_path(path)
        problem = " ".join(str(exc.problem or exc.context or "cannot parse").split())
        raise ProfileError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{display_path(path)}: invalid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:  # PyYAML descends once per nesting level
        raise ProfileError(
            f"{display_path(path)}: invalid YAML: nested too deeply to be a profile"
        ) from None
    if data is None:
        raise ProfileError(f"{display_path(path)}: the file is empty; a profile needs at least one setting")
    if not isinstance(data, dict):
        raise ProfileError(
            f"{display_path(path)}: the top level must be a mapping of settings (name: ..., memory: ...), "
            f"not a {_kind(data)}"
        )
    return data


# -- checking one file -----------------------------------------------------------------------


class _Checker:
    """Validates one file's raw mapping; every error names the file and key path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, where: str, message: str, hint: Optional[str] = None) -> ProfileError:
        return ProfileError(f"{display_path(self.path)}: {where}: {message}", hint=hint)

    def wrap(self, where: str, exc: InputError, hint: Optional[str] = None) -> ProfileError:
        return self.error(where, exc.message, hint=hint or exc.hint)

    def keys(self, where: str, data: dict, allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        for key in data:
            if not isinstance(key, str):
                raise self.error(_join(where, str(key)), f"keys must be words, got {key!r}")
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                tip = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(allowed)}"
                raise self.error(_join(where, key), f"unknown key {key!r}; {tip}")

    def mapping(self, where: str, value: object) -> dict:
        if not isinstance(value, dict):
            raise self.error(where, f"expected a mapping, got {value!r} ({_kind(value)})")
        return value

    def items(self, where: str, value: object) -> list:
        if not isinstance(value, list):
            raise self.error(where, f"expected a list, got {value!r} ({_kind(value)})")
        return value

    def text(self, where: str, value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(where, f"expected a non-empty string, got {value!r} ({_kind(value)})")
        return value.strip()

    def flag(self, where: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.error(where, f"expected true or false, got {value!r} ({_kind(value)})")
        return value

    def integer(self, where: str, value: object, bounds: Tuple[int, int], unit: str = "") -> int:
        # bool is an int in Python; "memory: yes" must not mean 1 MB.
        if isinstance(value, bool) or not isinstance(value, int):
            what = f"a whole number of {unit}" if unit else "a whole number"
            raise self.error(where, f"expected {what}, got {value!r} ({_kind(value)})")
        low, high = bounds
        if not low <= value <= high:
            raise self.error(where, f"{value} is out of range: use {low} to {high}{unit and ' ' + unit}")
        return value

    def port(self, where: str, value: object, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(where, f"expected a port number from 1 to 65535, got {value!r} ({_kind(value)})")
        try:
            return forwards.parse_port(value, what)
        except InputError as exc:
            raise self.wrap(where, exc) from None

    def guest_dir(self, where: str, value: object, why: str) -> str:
        text = self.text(where, value)
        if not _GUEST_PATH.match(text):
            raise self.error(
                where, f"{text!r} is not a plain absolute guest path (use letters, digits and . _ - /)"
            )
        norm = posixpath.normpath(text)
        if norm != PERSISTENT_ROOT and not norm.startswith(PERSISTENT_ROOT + "/"):
            raise self.error(
                where,
                f"{text!r} is outside {PERSISTENT_ROOT}: {why}",
                hint=f"boot2docker keeps only {PERSISTENT_ROOT} across reboots; e.g. {PERSISTENT_ROOT}/dev",
            )
        return norm


def _check_layer(path: Path, data: dict) -> _Layer:
    check = _Checker(path)
    check.keys("", data, TOP_KEYS)
    out = {}
    for key, value in data.items():
        out[key] = _CHECKS[key](check, key, value)
    return _Layer(path, out)


def _check_extends(check: _Checker, where: str, value: object) -> str:
    return check.text(where, value)


def _check_description(check: _Checker, where: str, value: object) -> str:
    return check.text(where, value)


def _check_name(check: _Checker, where: str, value: object) -> str:
    text = check.text(where, value)
    try:
        return paths.check_vm_name(text)
    except InputError as exc:
        raise check.wrap(where, exc) from None


def _check_provider(check: _Checker, where: str, value: object) -> str:
    text = check.text(where, value)
    if text not in PROVIDER_CHOICES:
        close = difflib.get_close_matches(text, PROVIDER_CHOICES, n=1)
        tip = f" (did you mean {close[0]!r}?)" if close else ""
        raise check.error(where, f"unknown provider {text!r}{tip}: use one of {', '.join(PROVIDER_CHOICES)}")
    return text


def _check_memory(check: _Checker, where: str, value: object) -> int:
    return check.integer(where, value, MEMORY_MB, "MB")


def _check_cpus(check: _Checker, where: str, value: object) -> int:
    return check.integer(where, value, CPUS)


def _check_disk(check: _Checker, where: str, value: object) -> int:
    return check.integer(where, value, DISK_MB, "MB")


def _check_host_loopback(check: _Checker, where: str, value: object) -> bool:
    return check.flag(where, value)


def _check_iso(check: _Checker, where: str, value: object) -> IsoSource:
    data = check.mapping(where, value)
    check.keys(where, data, ISO_KEYS)
    urls: Tuple[str, ...] = ()
    if "urls" in data:
        items = check.items(_join(where, "urls"), data["urls"])
        if not items:
            raise check.error(_join(where, "urls"), "the list is empty: give at least one URL")
        found: List[str] = []
        for index, item in enumerate(items):
            at = f"{where}.urls[{index}]"
            url = check.text(at, item)
            if not url.startswith(URL_SCHEMES) or any(ch.isspace() for ch in url):
                raise check.error(at, f"{url!r} is not a URL: use https://..., http://... or file://...")
            found.append(url)
        urls = tuple(found)
    sha256 = None
    if "sha256" in data:
        at = _join(where, "sha256")
        sha256 = check.text(at, data["sha256"])
        if sha256 != SHA256_PLACEHOLDER and not is_sha256(sha256):
            raise check.error(at, f"{sha256!r} is not a sha256 digest: expected 64 hex characters")
        if sha256 != SHA256_PLACEHOLDER:
            sha256 = sha256.lower()
    path = None
    if "path" in data:
        at = _join(where, "path")
        path = Path(check.text(at, data["path"])).expanduser()
        if not path.is_absolute():
            path = check.path.parent.resolve() / path  # a team can ship an ISO next to its profile
    build = None
    if "build" in data:
        at = _join(where, "build")
        build = check.text(at, data["build"])
        if build not in ISO_BUILDS:
            raise check.error(at, f"{build!r} is not something b2dkit builds: use {', '.join(ISO_BUILDS)}")
    if sum(map(bool, (urls, path, build))) > 1:
        raise check.error(where, "set one of iso.urls (with iso.sha256), iso.path or iso.build")
    if not urls and not path and not build:
        raise check.error(where, "no image: set iso.urls (with iso.sha256), iso.path or iso.build")
    if urls and not sha256:
        raise check.error(
            _join(where, "sha256"),
            "missing: a download by URL must be checked against a sha256",
            hint="copy it from the release notes, e.g. sha256: <64 hex characters>",
        )
    return IsoSource(urls=urls, sha256=sha256, path=path, build=build)


def _check_boot_codes(check: _Checker, where: str, value: object) -> Dict[str, object]:
    data = check.mapping(where, value)
    codes: Dict[str, object] = {}  # key -> value, None (a bare flag) or _REMOVE
    for key, raw in data.items():
        at = _join(where, str(key))
        if not isinstance(key, str):
            raise check.error(at, f"boot code names must be words, got {key!r}")
        if raw is None or raw is False:
            codes[key] = _REMOVE
            continue
        if raw is True:
            text = key
        elif isinstance(raw, (str, int)):
            text = f"{key}={raw}"
        else:
            kind = _kind(raw)
            raise check.error(at, f"expected a word, a number or true (a bare flag), got {raw!r} ({kind})")
        try:
            code_key, code_value = bootcfg.parse_code(bootcfg.check_code(text))  # check_code knows tz
        except InputError as exc:
            raise check.wrap(at, exc) from None
        codes[code_key] = code_value
    return codes


def _check_forwards(check: _Checker, where: str, value: object) -> Dict[Tuple[str, int], object]:
    result: Dict[Tuple[str, int], object] = {}  # (proto, host port) -> Forward | _REMOVE
    for index, item in enumerate(check.items(where, value)):
        at = f"{where}[{index}]"
        fwd = _check_forward(check, at, item)
        key = (fwd[0], fwd[1]) if isinstance(fwd, tuple) else (fwd.proto, fwd.host_port)
        if key in result:
            raise check.error(
                at, f"duplicate host port {key[1]}/{key[0]}: each host port can be forwarded only once"
            )
        result[key] = _REMOVE if isinstance(fwd, tuple) else fwd
    return result


def _check_forward(check: _Checker, at: str, item: object) -> Union[Forward, Tuple[str, int]]:
    """A Forward, or (proto, host port) for ``remove: true``."""
    if isinstance(item, (str, int)) and not isinstance(item, bool):
        try:
            fwd = forwards.parse_spec(item)
        except InputError as exc:
            raise check.wrap(at, exc) from None
        _check_exposure(check, at, fwd, force=False)
        return fwd
    data = check.mapping(at, item)
    check.keys(at, data, FORWARD_KEYS)
    if "host" not in data:
        raise check.error(at, "missing key 'host' (the port on this computer)")
    host = check.port(f"{at}.host", data["host"], "host port")
    proto = str(data.get("proto", "tcp"))
    if proto not in forwards.PROTOCOLS:
        raise check.error(f"{at}.proto", f"unknown protocol {data.get('proto')!r}: use tcp or udp")
    if "remove" in data and check.flag(f"{at}.remove", data["remove"]):
        extra = sorted(set(data) - {"host", "proto", "remove"})
        if extra:
            raise check.error(f"{at}.{extra[0]}", "a forward with remove: true takes only host and proto")
        return (proto, host)
    guest = check.port(f"{at}.guest", data["guest"], "guest port") if "guest" in data else host
    try:
        host_ip = forwards.check_host_ip(data.get("host_ip", forwards.LOOPBACK))
    except InputError as exc:
        raise check.wrap(f"{at}.host_ip", exc) from None
    force = check.flag(f"{at}.force", data["force"]) if "force" in data else False
    fwd = Forward(host_port=host, guest_port=guest, proto=proto, host_ip=host_ip)
    _check_exposure(check, at, fwd, force)
    return fwd


def _check_exposure(check: _Checker, at: str, fwd: Forward, force: bool) -> None:
    try:
        forwards.check_exposure(fwd, force=force)
    except InputError as exc:
        reason = exc.message.rsplit(" (", 1)[0]  # swap the CLI advice for the profile's own
        hint = "set host_ip: 127.0.0.1, or add force: true to this forward"
        raise check.error(at, reason, hint=hint) from None


def _check_persistent_dirs(check: _Checker, where: str, value: object) -> Dict[str, object]:
    result: Dict[str, object] = {}  # dir -> True | _REMOVE
    why = "it would be lost at reboot"
    for index, item in enumerate(check.items(where, value)):
        at = f"{where}[{index}]"
        remove = False
        if isinstance(item, dict):
            check.keys(at, item, PERSISTENT_KEYS)
            if "path" not in item:
                raise check.error(at, "missing key 'path'")
            remove = check.flag(f"{at}.remove", item["remove"]) if "remove" in item else False
            directory = check.guest_dir(f"{at}.path", item["path"], why)
        else:
            directory = check.guest_dir(at, item, why)
        if directory in result:
            raise check.error(at, f"duplicate persistent dir {directory!r}")
        result[directory] = _REMOVE if remove else True
    return result


def _check_mounts(check: _Checker, where: str, value: object) -> Dict[str, object]:
    result: Dict[str, object] = {}  # guest dir -> Mount | _REMOVE
    why = "files there live in RAM and would be lost at reboot"
    for index, item in enumerate(check.items(where, value)):
        at = f"{where}[{index}]"
        data = check.mapping(at, item)
        check.keys(at, data, MOUNT_KEYS)
        if "guest" not in data:
            raise check.error(at, "missing key 'guest' (the VM directory to mount)")
        guest = check.guest_dir(f"{at}.guest", data["guest"], why)
        if guest in result:
            raise check.error(f"{at}.guest", f"duplicate mount of guest dir {guest!r}")
        remove = check.flag(f"{at}.remove", data["remove"]) if "remove" in data else False
        if remove:
            for extra in ("host", "cache"):
                if extra in data:
                    raise check.error(f"{at}.{extra}", "a mount with remove: true takes only guest")
            result[guest] = _REMOVE
            continue
        if "host" not in data:
            raise check.error(at, "missing key 'host' (the directory on this computer)")
        host_text = check.text(f"{at}.host", data["host"])
        host = Path(host_text).expanduser()
        if not host.is_absolute():
            raise check.error(f"{at}.host", f"{host_text!r} is relative: use an absolute path or ~/...")
        cache = _check_cache(check, f"{at}.cache", data["cache"]) if "cache" in data else "fresh"
        result[guest] = Mount(guest=guest, host=host, cache=cache)
    return result


def _check_cache(check: _Checker, where: str, value: object) -> str:
    text = check.text(where, value)
    if text not in MOUNT_CACHES:
        close = difflib.get_close_matches(text, MOUNT_CACHES, n=1)
        tip = f" (did you mean {close[0]!r}?)" if close else ""
        raise check.error(where, f"unknown cache mode {text!r}{tip}: use fresh (changes in the VM seen within 1 s, "
                                 "the default) or relaxed (up to 20 s, faster repeated stat walks)")
    return text


def _inside(a: PurePath, b: PurePath) -> bool:
    return a == b or b in a.parents


def _check_mount_overlap(path: Path, mounts: List[Mount]) -> None:
    """No mount inside another, on either side: a host dir under another sshfs mount makes that
    one "busy" at every unmount, and a guest dir inside another is the same files twice."""
    for i, a in enumerate(mounts):
        for b in mounts[i + 1:]:
            for side, x, y in (("host", Path(os.path.normpath(a.host)), Path(os.path.normpath(b.host))),
                               ("guest", PurePosixPath(posixpath.normpath(a.guest)),
                                PurePosixPath(posixpath.normpath(b.guest)))):
                if _inside(x, y) or _inside(y, x):
                    same = "is used by both" if x == y else "overlaps between"
                    raise ProfileError(
                        f"{display_path(path)}: mounts: {side} dir {str(x)!r} {same} {a.guest!r} and "
                        f"{b.guest!r} ({str(y)!r}); give each mount its own {side} dir, none inside another"
                    )

def _check_images(check: _Checker, where: str, value: object) -> Dict[Path, bool]:
    """Host paths of image tarballs; a relative one is taken next to the profile file."""
    result: Dict[Path, bool] = {}
    for index, item in enumerate(check.items(where, value)):
        text = check.text(f"{where}[{index}]", item)
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = Path(os.path.normpath(check.path.parent / path))  # ../images/x.tar: named plainly
        result[path] = True
    return result


def _check_ports(check: _Checker, where: str, value: object) -> Optional[Tuple[str, ...]]:
    """``auto`` (the default allow-list), ``manual`` (off, the default), or
    ``{auto: true | false | {allow: [3000-3999, 8080, 5353/udp]}}``; the allow-list as text, or None."""
    from . import autoports

    if isinstance(value, str) and value.strip() in PORTS_MODES:
        return autoports.DEFAULT_ALLOW if value.strip() == "auto" else None
    if not isinstance(value, dict):
        raise check.error(where, f"expected auto, manual or {{auto: {{allow: [...]}}}}, got {value!r} ({_kind(value)})")
    check.keys(where, value, ("auto",))
    at = f"{where}.auto"
    if "auto" not in value:
        raise check.error(where, "missing key 'auto' (true, false or {allow: [...]})")
    auto = value["auto"]
    if isinstance(auto, bool):
        return autoports.DEFAULT_ALLOW if auto else None
    check.keys(at, check.mapping(at, auto), ("allow",))
    if "allow" not in auto:
        raise check.error(at, "missing key 'allow' (the ports containers may publish to the host, e.g. [3000-3999])")
    items = check.items(f"{at}.allow", auto["allow"])
    if not items:
        raise check.error(f"{at}.allow", "the allow-list is empty: list ports or ranges, or set ports: manual")
    allow: List[str] = []
    for index, item in enumerate(items):
        try:
            allow.append(str(autoports.parse_range(item)))
        except InputError as exc:
            raise check.wrap(f"{at}.allow[{index}]", exc) from None
    return tuple(allow)


# Each check takes the parsed YAML value of one top-level key and returns it normalised.
_CHECKS: Dict[str, Callable[[_Checker, str, object], object]] = {
    "extends": _check_extends,
    "description": _check_description,
    "name": _check_name,
    "provider": _check_provider,
    "memory": _check_memory,
    "cpus": _check_cpus,
    "disk": _check_disk,
    "host_loopback": _check_host_loopback,
    "iso": _check_iso,
    "boot_codes": _check_boot_codes,
    "forwards": _check_forwards,
    "persistent_dirs": _check_persistent_dirs,
    "mounts": _check_mounts,
    "docker": lambda check, where, value: check.flag(where, value),
    "images": _check_images,
    "ports": _check_ports,
}
_KEYED = ("boot_codes", "forwards", "persistent_dirs", "mounts", "images")


# -- merging and finishing -------------------------------------------------------------------


def _merge(merged: dict, layer: _Layer) -> None:
    for key, value in layer.values.items():
        if key not in _KEYED:
            merged[key] = value
            continue
        target = merged.setdefault(key, {})
        for item_key, item in value.items():
            if item is not _REMOVE:
                target[item_key] = item
            elif item_key in target:
                del target[item_key]
            else:
                raise ProfileError(
                    f"{display_path(layer.path)}: {key}: cannot remove {_item_label(key, item_key)}: "
                    "no profile it extends sets it"
                )


def _item_label(key: str, item_key: Any) -> str:  # item_key: a key of merged[key], (proto, port) for forwards
    if key == "forwards":
        proto, port = item_key
        return f"forward of host port {port}/{proto}"
    return repr(item_key)


def _finish(merged: dict, path: Path, chain: List[Path], provider: Optional[str], name: Optional[str]) -> Profile:
    if name is not None:
        try:
            merged["name"] = paths.check_vm_name(str(name).strip())
        except InputError as exc:
            raise InputError(f"--name: {exc.message}") from None
    missing = [key for key in ("name", "memory", "cpus", "disk", "iso") if key not in merged]
    if missing:
        raise ProfileError(
            f"{display_path(path)}: missing {', '.join(missing)}: set them, or extend a profile that does",
            hint="e.g. extends: default",
        )
    if provider is not None:
        choice = str(provider).strip()
        if choice not in PROVIDER_CHOICES:
            choices = ", ".join(PROVIDER_CHOICES)
            raise InputError(f"--provider: unknown provider {choice!r}: use one of {choices}")
        merged["provider"] = choice
    chosen = merged.get("provider", "auto")
    fwds = list(merged.get("forwards", {}).values())
    if ssh_forward(fwds) is None:
        raise ProfileError(
            f"{display_path(path)}: forwards: no forward to guest port 22: b2dkit reaches the VM over ssh",
            hint="add e.g. {host: 2022, guest: 22}",
        )
    mounts = list(merged.get("mounts", {}).values())
    _check_mount_overlap(path, mounts)
    return Profile(
        name=merged["name"],
        provider=_auto_provider() if chosen == "auto" else chosen,
        memory=merged["memory"],
        cpus=merged["cpus"],
        disk=merged["disk"],
        iso=merged["iso"],
        boot_codes=dict(merged.get("boot_codes", {})),
        forwards=fwds,
        persistent_dirs=list(merged.get("persistent_dirs", {})),
        mounts=mounts,
        host_loopback=merged.get("host_loopback", False),
        description=merged.get("description", ""),
        docker=merged.get("docker"),
        images=list(merged.get("images", {})),
        auto_ports=merged.get("ports"),
        source=path,
        chain=chain,
    )


# -- small helpers ---------------------------------------------------------------------------


def _auto_provider() -> str:
    """Only ``provider: auto`` looks for VBoxManage (on PATH); a named provider touches no hypervisor."""
    return default_provider_name()


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "mapping"}
    return names.get(type(value), type(value).__name__)


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix in SUFFIXES else path.name


def display_path(path: StrPath) -> str:
    """Paths in messages: relative when under the current directory, else as absolute."""
    path = Path(path)
    remote = remoteprofile.display(path)  # a fetched profile: its URL, not its cache path
    if remote:
        return remote
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)
