"""The guest's Docker daemon as the host sees it: TLS set-up, its forward, readiness, the API.

docker-machine's model: the host owns a per-VM CA (``tlscerts``), installs the server side
into the guest's ``/var/lib/boot2docker`` (where boot2docker's ``/etc/init.d/docker`` reads
it), restarts the daemon only when those files changed, and reaches TLS-only port 2376
through a loopback NAT forward. ``plan`` decides (lines a user can read) and ``apply`` acts,
over the SSH session ``vm.start`` already holds. The daemon's API is spoken with ``requests``
over that forward, with the client cert: no docker CLI is needed on the host for any of it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple, Union

from . import forwards as fw
from . import paths, tlscerts, tzif
from .changes import Change
from .errors import GuestError, InputError
from .forwards import Forward

if TYPE_CHECKING:  # guest (paramiko) is imported where it is used: `vm.env` needs none of it
    from .guest import GuestSession
    import requests

CERTS_DIR = "certs"  # <vm dir>/certs: DOCKER_CERT_PATH, and the server side + CA key
GUEST_DIR = "/var/lib/boot2docker"
INIT_SCRIPT = "/etc/init.d/docker"
READY_FILE = "/var/run/docker.ready"
GUEST_LOG = "/var/log/docker.log"
# The team's time zone for containers (``-v /etc/localtime:/etc/localtime:ro``): the guest's
# rcS copies the persistent one to /etc/localtime at every boot; b2dkit writes both.
LOCALTIME_FILES = (f"{GUEST_DIR}/etc/localtime", "/etc/localtime")
IMAGES_DIR = f"{GUEST_DIR}/images"  # the guest loads each new tarball here once (boot, or `images`)
READY_TIMEOUT = 240.0  # the daemon's own start-up wait is 180 s; a first boot loads the base image too
POLL = 0.5
_MODES = {tlscerts.SERVER_KEY: 0o600}


def cert_dir(name: str) -> Path:
    return paths.vm_dir(name) / CERTS_DIR


@dataclass
class Plan:
    """What Docker set-up will do on one start; ``lines`` is what the user reads."""

    has_docker: bool
    certs: List[tlscerts.Change] = field(default_factory=list)
    install: List[str] = field(default_factory=list)  # server file names whose guest copy differs
    forward: Optional[Forward] = None  # the rule to add; None when one is there
    current: Optional[Forward] = None  # the rule already there
    tz: Optional[str] = None
    localtime: List[str] = field(default_factory=list)  # LOCALTIME_FILES to (re)write for ``tz``
    failed: bool = False  # the daemon's last start failed (the guest logged an ERROR): start it again
    down: bool = False  # it was up, and no dockerd runs now (killed, crashed, stopped): start it again
    asked: bool = False  # the user asked for a restart (``vm.docker --restart``)

    @property
    def restart(self) -> bool:
        return bool(self.install) or self.failed or self.down or self.asked

    @property
    def lines(self) -> List[str]:
        out = [f"issue {change}" for change in self.certs]
        if self.install:
            out.append(f"install {', '.join(self.install)} into the guest's {GUEST_DIR}")
            out.append("restart the guest's Docker daemon (it reads them at start)")
        elif self.failed:
            out.append(f"restart the guest's Docker daemon (its last start failed: see {GUEST_LOG})")
        elif self.down:
            out.append(f"start the guest's Docker daemon (it is not running: see {GUEST_LOG})")
        elif self.asked:
            out.append("restart the guest's Docker daemon (asked)")
        if self.forward:
            out.append(f"forward {fw.describe(self.forward)} (the Docker daemon, TLS)")
        if self.localtime:
            out.append(f"write {', '.join(self.localtime)} for TZ={self.tz} (containers mount it)")
        return out

    @property
    def changes(self) -> List[Change]:
        """``lines`` as the changes ``apply`` makes (one Change per line)."""
        return [Change(line, "docker") for line in self.lines]

    @property
    def rule(self) -> Optional[Forward]:
        return self.forward or self.current


PIDFILE = "/var/run/docker.pid"  # dockerd's own --pidfile, as boot2docker's init passes it
LOCK_PID = "/var/run/docker.lock/pid"  # b2dkit's guest: the init script busy starting or stopping it
RUNNING, STARTING, STOPPED = "running", "starting", "not running"
# Has the guest Docker (exit status); its last docker line in the boot log (b2dkit's guest writes
# them; "ERROR" there means the daemon is down until someone starts it again); then whether a
# dockerd runs (its pidfile names a live dockerd), else whether the init script is at it.
_PROBE = (f"test -x {INIT_SCRIPT} && {{ grep 'b2dkit-guest: docker: ' /var/log/boot.log 2>/dev/null"
          f" | tail -n 1; p=$(cat {PIDFILE} 2>/dev/null); l=$(cat {LOCK_PID} 2>/dev/null);"
          f" if [ -n \"$p\" ] && [ \"$(cat /proc/$p/comm 2>/dev/null)\" = dockerd ]; then echo {RUNNING};"
          f" elif [ -n \"$l\" ] && [ -d /proc/$l ]; then echo {STARTING}; else echo {STOPPED}; fi; }}")


@dataclass(frozen=True)
class Probe:
    found: bool  # the guest has Docker
    last: str = ""  # its last boot-log line about the daemon ("" on a real boot2docker)
    state: str = ""  # RUNNING, STARTING or STOPPED

    @property
    def down(self) -> bool:
        """It came up (or was stopped) and no dockerd runs now: nobody will start it but us. A
        boot that has not reached the daemon yet logged nothing, so it is not down."""
        return self.state == STOPPED and bool(self.last) and "ERROR" not in self.last


def probe(session: GuestSession, required: Optional[bool]) -> Probe:
    """What the guest's daemon is doing; ``required`` True makes a guest without Docker an error."""
    if required is False:
        return Probe(found=False)
    result = session.run(_PROBE, check=False)
    if required and not result.ok:
        raise GuestError(
            f"the profile says docker: true, but the guest has no {INIT_SCRIPT}: its ISO has no Docker daemon",
            hint="use a boot2docker.iso (or iso: {build: guest-docker}), or set docker: false",
        )
    lines = result.stdout.strip().splitlines() if result.ok else []
    state = lines.pop() if lines and lines[-1] in (RUNNING, STARTING, STOPPED) else ""
    return Probe(found=result.ok, last=lines[-1].strip() if lines else "", state=state)


@dataclass(frozen=True)
class Facts:
    """What the Docker step reads (host certs, the guest's copies, the VM's rules); nothing is written."""

    has_docker: bool
    last_line: str = ""  # the guest's last docker line in its boot log
    down: bool = False  # it came up and no dockerd runs now (Probe.down)
    certs: Tuple[tlscerts.Change, ...] = ()  # what tlscerts.plan would re-issue
    wanted: Dict[str, str] = field(default_factory=dict)  # server file name -> sha256 of the host's copy
    there: Dict[str, str] = field(default_factory=dict)  # guest path -> sha256 of the files that exist
    current: Optional[Forward] = None  # the rule to the daemon already there
    taken: FrozenSet[int] = frozenset()  # host ports this VM and the others forward


def facts(name: str, session: GuestSession, rules: List[Forward], taken: Callable[[], Iterable[int]] = tuple,
          required: Optional[bool] = None, tz: Optional[str] = None) -> Facts:
    """Read only: does the guest run Docker, and the state of everything ``changes`` compares.

    ``taken``: the host ports other VMs forward (asked only when a rule must be picked), so
    two VMs never get the same DOCKER_HOST.
    """
    from . import guest

    seen = probe(session, required)
    if not seen.found:
        return Facts(has_docker=False)
    certs = cert_dir(name)
    reissued = tuple(tlscerts.plan(certs))
    asked = [f"{GUEST_DIR}/{n}" for n in tlscerts.SERVER_FILES] + (list(LOCALTIME_FILES) if tz else [])
    current = fw.docker_forward(rules)
    return Facts(
        has_docker=True, last_line=seen.last, down=seen.down, certs=reissued,
        wanted=_server_digests(certs) if not reissued else {},
        there=guest.root_file_digests(session, asked),  # one command for every file
        current=current,
        taken=frozenset({f.host_port for f in rules} | (set(taken()) if current is None else set())),
    )


def changes(current: Facts, tz: Optional[str] = None, restart: bool = False) -> Plan:
    """The pure diff: what the Docker set-up must do, given ``current`` and the profile's ``tz``;
    ``restart``: the user asked for one whatever else is decided."""
    if not current.has_docker:
        return Plan(has_docker=False)
    result = Plan(has_docker=True, certs=list(current.certs), tz=tz, failed="docker: ERROR" in current.last_line,
                  down=current.down, asked=restart)
    zone = localtime(tz)
    if zone:
        digest = hashlib.sha256(zone).hexdigest()
        result.localtime = [p for p in LOCALTIME_FILES if current.there.get(p) != digest]
    for file_name in tlscerts.SERVER_FILES:
        target = f"{GUEST_DIR}/{file_name}"
        if current.certs or current.there.get(target) != current.wanted.get(file_name):
            result.install.append(file_name)
    result.current = current.current
    if result.current is None:
        result.forward = fw.new_docker_forward(taken=set(current.taken))
    return result


def plan(name: str, session: GuestSession, rules: List[Forward], taken: Callable[[], Iterable[int]] = tuple,
         required: Optional[bool] = None, tz: Optional[str] = None, restart: bool = False) -> Plan:
    """Decide only: ``changes(facts(...))`` (reads the host's certs, the guest's copies and the
    VM's rules; writes nothing); ``restart``: the user asked for one."""
    return changes(facts(name, session, rules, taken, required, tz), tz, restart)


def localtime(tz: Optional[str]) -> Optional[bytes]:
    """The TZif bytes for the profile's ``tz`` boot code, or None without one (the guest stays UTC)."""
    return tzif.build(tz) if tz else None


def _server_digests(certs: Path) -> Dict[str, str]:
    return {n: hashlib.sha256(data).hexdigest() for n, data in tlscerts.server_files(certs).items()}


def apply(name: str, session: GuestSession, decided: Plan, add_forward: Callable[[Forward], None]) -> List[str]:
    """Act on ``decided``: certs, guest files + one daemon restart, the forward. Returns its lines."""
    from . import guest

    if not decided.has_docker:
        return []
    certs = cert_dir(name)
    if decided.certs:
        tlscerts.ensure(certs, name)
    files: Dict[str, Tuple[bytes, int]] = {}
    if decided.install:
        server = tlscerts.server_files(certs)
        files.update({f"{GUEST_DIR}/{n}": (server[n], _MODES.get(n, 0o644)) for n in decided.install})
    zone = localtime(decided.tz)
    if zone and decided.localtime:
        files.update({path: (zone, 0o644) for path in decided.localtime})
    if files:
        guest.install_root_files(session, files)  # one SFTP session, one sudo
    if decided.forward:  # before the restart: a daemon that fails to come up keeps its DOCKER_HOST
        add_forward(decided.forward)
    if decided.restart:
        result = session.run(["sudo", INIT_SCRIPT, "restart"], check=False, timeout=READY_TIMEOUT)
        if not result.ok:
            raise GuestError(_not_up(name, "failed to restart"))
    return decided.lines


def _not_up(name: str, what: str) -> str:
    return (f"the Docker daemon of VM {name!r} {what}; see the guest's {GUEST_LOG} "
            f"(`b2dkit vm.ssh -c 'tail -n 30 {GUEST_LOG}'`)")


# -- the daemon's API over TLS --------------------------------------------------------------------


def client_files(name: str) -> Tuple[str, str, str]:
    """(ca.pem, cert.pem, key.pem) paths for ``requests``: the DOCKER_CERT_PATH files."""
    certs = cert_dir(name)
    return tuple(str(certs / n) for n in tlscerts.CLIENT_FILES)  # type: ignore[return-value]


def api(name: str, rule: Forward, path: str, timeout: float = 5.0) -> Any:
    """GET ``path`` from the VM's daemon over its TLS forward; the decoded answer (JSON or text).

    Raises OSError-like ``requests`` errors to the caller, which decides what they mean.
    """
    import requests

    host, port = fw.connect_address(rule)
    ca, cert, key = client_files(name)
    response = requests.get(f"https://{host}:{port}{path}", cert=(cert, key), verify=ca, timeout=timeout)
    response.raise_for_status()
    kind = response.headers.get("Content-Type", "")
    return response.json() if kind.startswith("application/json") else response.text


def stream(name: str, rule: Forward, path: str, idle: float) -> "requests.Response":
    """GET ``path`` as a stream (``/events``): the open ``requests`` response, to read line by
    line and close; a read that waits ``idle`` seconds for the next line raises."""
    import requests

    host, port = fw.connect_address(rule)
    ca, cert, key = client_files(name)
    response = requests.get(f"https://{host}:{port}{path}", cert=(cert, key), verify=ca, timeout=(10.0, idle),
                            stream=True)
    response.raise_for_status()
    return response


# One SSH round trip per poll: the ready file's version, else the guest's last docker boot line
# (``b2dkit-guest: docker: ERROR: … see /var/log/docker.log`` means it will not come up).
_READY_PROBE = (
    f"if [ -s {READY_FILE} ]; then echo ready $(cat {READY_FILE}); "
    "else echo waiting $(grep 'b2dkit-guest: docker: ' /var/log/boot.log 2>/dev/null | tail -n 1); fi"
)


def wait_ready(name: str, session: GuestSession, rule: Forward, timeout: float = READY_TIMEOUT) -> str:
    """Wait until the guest wrote its ready file (the daemon answers on its socket and the images
    are loaded) and the daemon answers ``/_ping`` over TLS through the forward; returns the
    server version. A daemon that failed says so at once instead of after the timeout."""
    import requests

    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        state, _, detail = session.run(_READY_PROBE, check=False).stdout.strip().partition(" ")
        # A real boot2docker writes neither the ready file nor these log lines: /_ping alone says it.
        if state == "ready" or not detail:
            try:
                if api(name, rule, "/_ping") == "OK":
                    return detail if state == "ready" else str(api(name, rule, "/version").get("Version"))
                last = "/_ping did not answer OK"
            except requests.RequestException as exc:
                last = f"TLS on {fw.describe(rule)}: {type(exc).__name__}"
        else:
            if "ERROR" in detail:
                raise GuestError(_not_up(name, "failed to start"))
            last = detail.split("docker: ", 1)[-1]
        if time.monotonic() >= deadline:
            raise GuestError(_not_up(name, f"was not ready within {timeout:g} s (last: {last})"))
        time.sleep(POLL)


# -- the profile's image tarballs -----------------------------------------------------------------


def check_images(images: Iterable[Union[str, Path]]) -> List[Path]:
    """Every profile image is a whole ``docker save`` tarball on this computer, read through here
    first: a missing, truncated or foreign one is one line naming it, before the VM is touched."""
    import tarfile

    checked: List[Path] = []
    names: Dict[str, Path] = {}
    for text in images:
        path = Path(text).expanduser()
        if path.name in names:
            raise InputError(f"profile images {names[path.name]} and {path} have the same file name {path.name!r}; "
                             "the guest keeps them in one folder: rename one")
        names[path.name] = path
        try:
            with tarfile.open(path, "r:*") as archive:
                members = [member.name.lstrip("./") for member in archive]  # reads to the end: truncation shows
        except FileNotFoundError:
            raise InputError(f"profile image {path} does not exist", hint="fix the profile's images:") from None
        except (OSError, tarfile.TarError, EOFError, ValueError) as exc:
            reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            if reason.startswith("file could not be opened successfully"):  # tarfile's r:* tried them all
                reason = "neither tar nor gzip, bzip2 or xz"
            raise InputError(f"profile image {path} is not a readable tar archive ({reason.rstrip(':')}); "
                             f"export it again with `docker save -o {path} IMAGE`") from None
        if "manifest.json" not in members:
            raise InputError(f"profile image {path} has no manifest.json: not a `docker save` tarball")
        checked.append(path)
    return checked


def images_to_copy(session: GuestSession, images: List[Path]) -> List[Path]:
    """Those of ``images`` whose copy in the guest's IMAGES_DIR differs (one command asks)."""
    from . import digests, guest

    if not images:
        return []
    there = guest.root_file_digests(session, [f"{IMAGES_DIR}/{p.name}" for p in images])
    return [p for p in images if there.get(f"{IMAGES_DIR}/{p.name}") != digests.file_sha256(p)]


def load_images(name: str, session: GuestSession, todo: List[Path]) -> List[str]:
    """Copy ``todo`` into the guest and have its daemon load them (``/etc/init.d/docker images``);
    returns what it did. The guest names any tarball it could not load."""
    from . import guest

    if not todo:
        return []
    guest.install_root_files(session, {f"{IMAGES_DIR}/{p.name}": (p, 0o644) for p in todo})
    result = session.run(["sudo", INIT_SCRIPT, "images"], check=False, timeout=READY_TIMEOUT)
    failed = [line for line in result.stdout.splitlines() if "ERROR" in line]
    if failed or not result.ok:
        detail = failed[0].split("docker: ", 1)[-1] if failed else f"exit code {result.exit_code}"
        raise GuestError(f"the Docker daemon of VM {name!r} did not load a profile image: {detail}")
    return [f"copied {p.name} into the guest's {IMAGES_DIR} and loaded it" for p in todo]


# -- what vm.status shows ---------------------------------------------------------------------------


def summary(name: str, rule: Optional[Forward]) -> dict:
    """The daemon in one ``/info`` call: version, reachable, image and container counts."""
    import requests

    if rule is None:
        return {"reachable": False, "error": "no forward to the daemon's TLS port 2376", "log": GUEST_LOG}
    address = "tcp://%s:%d" % fw.connect_address(rule)
    try:
        info = api(name, rule, "/info")
    except (requests.RequestException, OSError, ValueError) as exc:
        return {"reachable": False, "host": address, "error": type(exc).__name__, "log": GUEST_LOG}
    return {"reachable": True, "host": address, "version": info.get("ServerVersion"),
            "images": info.get("Images"), "containers": info.get("Containers"),
            "running": info.get("ContainersRunning"), "log": GUEST_LOG}


def daemon_state(session: GuestSession) -> str:
    """RUNNING, STARTING or STOPPED as the guest sees it (why the TLS port did not answer), or
    "unknown" on a guest that keeps no pidfile."""
    return probe(session, None).state or "unknown"
