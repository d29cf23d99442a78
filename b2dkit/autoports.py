"""Ports that follow the containers (``ports: auto`` in a profile).

The watcher follows the VM's Docker daemon (``GET /events`` for container start/die/stop,
re-listing ``/containers/json`` on every event and every (re)connect, so a missed event or a
watcher restart converges) and forwards each port a running container publishes to the same
port on the host's loopback — only ports on the profile's allow-list, and never over a host
program or one of the VM's own forwards: a refused port is reported with who holds it and
which container wanted it, never moved to another port (a moved port is a silent surprise).

``decide`` is the whole policy (pure: the host's ports come in as a function); ``Follower``
is the loop that feeds it and applies its changes.  Auto forwards are rules named
``auto-<proto>-<port>`` (``forwards.auto_name``), so the hypervisor itself tells them from the user's; which
container owns each is in ``autoports.json`` in the VM's folder.  ``clear`` removes them
all (``vm.stop``, and ``vm.start`` before a boot).

``vm.unforward PORT`` on an auto forward is ``dismiss``: as in VS Code, a port the user stopped
forwarding is not forwarded again for that container (by id) until it no longer publishes the
port.  The watcher's follower and that command both read-modify-write ``autoports.json``, so
every write goes through ``updating`` (an flock on ``autoports.lock``, then temp file + rename).
"""

import contextlib
import copy
import fcntl
import json
import os
import re
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from . import atomic, paths
from . import forwards as fw
from .errors import B2dkitError, InputError
from .forwards import Forward, auto_name, is_auto

if TYPE_CHECKING:
    from .hypervisors.base import Provider
    from .machines import Machine

STATE = "autoports.json"
LOCK = "autoports.lock"  # held for each read-modify-write of STATE (the follower and vm.unforward)
DEFAULT_ALLOW = ("3000-3999", "8000-8999")  # `ports: auto` alone: the usual dev-server ports
EVENTS = "/events?filters=" + urllib.parse.quote(
    json.dumps({"type": ["container"], "event": ["start", "die", "stop"]}, separators=(",", ":")))
IDLE = 30.0  # no event for this long: reconnect and re-list (also catches a forward removed by hand)
BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0)  # seconds between attempts while the daemon or the VM is away

# Why a published port is not forwarded (``Refused.reason``).
NOT_ALLOWED, FORWARDED, IN_USE, DENIED, GUEST_LOOPBACK, DISMISSED = (
    "not allowed", "forwarded", "in use", "denied", "guest loopback", "dismissed")
REASONS = (NOT_ALLOWED, FORWARDED, IN_USE, DENIED, GUEST_LOOPBACK, DISMISSED)  # the --json schema's enum

_RANGE = re.compile(r"^(?P<low>\d+)(?:-(?P<high>\d+))?(?:/(?P<proto>[a-z]+))?$")


# -- the allow-list -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortRange:
    """``3000-3999``, ``8080`` or ``5353/udp``: ports an auto forward may use (no protocol: both)."""

    low: int
    high: int
    proto: Optional[str] = None

    def covers(self, port: int, proto: str) -> bool:
        return self.low <= port <= self.high and self.proto in (None, proto)

    def __str__(self) -> str:
        text = str(self.low) if self.low == self.high else f"{self.low}-{self.high}"
        return text + (f"/{self.proto}" if self.proto else "")


def parse_range(value: object) -> PortRange:
    """One allow-list item; InputError (one line) for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InputError(f"expected a port or a range such as 3000-3999, got {value!r}")
    text = str(value).strip().lower()
    match = _RANGE.match(text)
    if not match:
        raise InputError(f"{value!r} is not a port or a range: use PORT, LOW-HIGH, optionally /tcp or /udp")
    proto = match.group("proto")
    if proto is not None and proto not in fw.PROTOCOLS:
        raise InputError(f"{value!r}: unknown protocol {proto!r} (use tcp or udp)")
    low = fw.parse_port(match.group("low"))
    high = fw.parse_port(match.group("high")) if match.group("high") else low
    if high < low:
        raise InputError(f"{value!r}: the range ends below its start (write {high}-{low})")
    return PortRange(low, high, proto)


def parse_allow(items: Iterable[object]) -> Tuple[PortRange, ...]:
    return tuple(parse_range(item) for item in items)


def allowed(port: int, proto: str, allow: Sequence[PortRange]) -> bool:
    return any(r.covers(port, proto) for r in allow)


# -- what the daemon publishes ---------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Published:
    """One port a running container publishes on the guest (``docker run -p PORT:…``)."""

    port: int
    proto: str
    container: str  # its name, as `docker ps` shows it
    id: str  # 12 hex digits
    guest_ip: str = "0.0.0.0"


def published(containers: object) -> List[Published]:
    """``GET /containers/json`` → the published ports, one per (port, protocol), sorted.

    Docker lists a port once per address family (``0.0.0.0`` and ``::``): that is one port.
    A port bound to the guest's loopback only stays (``decide`` says why it is not forwarded).
    """
    out: Dict[Tuple[int, str], Published] = {}
    for item in containers if isinstance(containers, list) else []:
        if not isinstance(item, dict):
            continue
        names = item.get("Names") or []
        name = str(names[0]).lstrip("/") if names else str(item.get("Id", ""))[:12]
        for port in item.get("Ports") or []:
            public, proto = port.get("PublicPort"), port.get("Type", "tcp")
            if not isinstance(public, int) or proto not in fw.PROTOCOLS:
                continue  # exposed but not published
            found = Published(public, proto, name, str(item.get("Id", ""))[:12], str(port.get("IP") or "0.0.0.0"))
            key = (public, proto)
            if key not in out or (_loopback(out[key].guest_ip) and not _loopback(found.guest_ip)):
                out[key] = found
    return sorted(out.values())


def _loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"


# -- the policy ------------------------------------------------------------------------------------


def rule_for(pub: Published) -> Forward:
    """Same port on the host's loopback as on the guest: what ``docker run -p`` promised."""
    return Forward(host_port=pub.port, guest_port=pub.port, proto=pub.proto, name=auto_name(pub.proto, pub.port))


@dataclass(frozen=True)
class Owned:
    """An auto forward and the container it is for."""

    rule: Forward
    container: str
    id: str

    @property
    def line(self) -> str:
        return f"{fw.describe(self.rule)} for container {self.container}"


@dataclass(frozen=True)
class Refused:
    """A published port that is not forwarded, and why (``detail`` says it in words)."""

    port: int
    proto: str
    container: str
    id: str
    reason: str
    detail: str
    owner: Optional[str] = None  # the host process (or VM rule) holding the port, when known

    @property
    def line(self) -> str:
        return f"{self.port}/{self.proto} of container {self.container} not forwarded: {self.detail}"

    def to_dict(self) -> dict:
        return asdict(self)


def dismissed_detail(port: int, proto: str) -> str:
    spec = fw.port_spec(port, proto)
    return (f"dismissed with `b2dkit vm.unforward {spec}`: not forwarded again while this container publishes it; "
            f"`b2dkit vm.forward {spec}` brings it back")


@dataclass
class Changes:
    """What one look at the daemon changes: removals first, then additions; ``dismissed`` is the
    dismissals still in effect (rule name → container), the record's next value."""

    add: List[Owned] = field(default_factory=list)
    remove: List[Forward] = field(default_factory=list)
    keep: List[Owned] = field(default_factory=list)
    refused: List[Refused] = field(default_factory=list)
    dismissed: Dict[str, dict] = field(default_factory=dict)

    @property
    def lines(self) -> List[str]:
        return ([f"remove auto forward {fw.describe(r)} (its container stopped)" for r in self.remove]
                + [f"add auto forward {o.line}" for o in self.add])


HostCheck = Callable[[Forward], Optional[Tuple[str, Optional[str]]]]  # None: free; else (reason, owner)


def decide(pubs: Iterable[Published], rules: Iterable[Forward], allow: Sequence[PortRange],
           host_busy: HostCheck, dismissed: Optional[Mapping[str, dict]] = None) -> Changes:
    """The forward changes that make the VM's auto forwards match the running containers.

    ``rules`` are the VM's forwards now (auto and its own); any of its own on the same host
    port wins, whoever made it (the profile, ``vm.forward``, b2dkit's SSH or Docker route).
    ``host_busy`` is asked only about a port that is not forwarded yet (our own forward holds
    the ones we keep).  A refused port is never moved to another one.  ``dismissed`` (rule
    name → its container's ``id``, None for whichever publishes it) are ports ``vm.unforward``
    took away: refused while that container publishes the port, forgotten once it does not.
    """
    current = list(rules)
    pubs = list(pubs)
    auto = {r.name: r for r in current if is_auto(r)}
    own = [r for r in current if not is_auto(r)]
    out = Changes()
    for pub in pubs:  # a dismissal lasts while its container publishes the port, whatever else decides
        name = auto_name(pub.proto, pub.port)
        gone = (dismissed or {}).get(name)
        if gone is not None and gone.get("id") in (None, pub.id):
            out.dismissed[name] = {"container": pub.container, "id": pub.id}
    wanted = set()
    for pub in pubs:
        def refuse(reason: str, detail: str, owner: Optional[str] = None, pub: Published = pub) -> None:
            out.refused.append(Refused(pub.port, pub.proto, pub.container, pub.id, reason, detail, owner))

        if _loopback(pub.guest_ip):
            refuse(GUEST_LOOPBACK, f"published on the guest's {pub.guest_ip} only, which the VM's NAT cannot reach "
                                   f"(publish it as -p {pub.port}:…)")
            continue
        if not allowed(pub.port, pub.proto, allow):
            refuse(NOT_ALLOWED, f"not on the profile's allow-list ({', '.join(map(str, allow)) or 'empty'})")
            continue
        rule = rule_for(pub)
        theirs = next((r for r in own if r.proto == rule.proto and r.host_port == rule.host_port), None)
        if theirs is not None:
            refuse(FORWARDED, f"the VM's own forward {theirs.name} ({fw.describe(theirs)}) has that host port "
                              "and wins over an auto forward", owner=f"forward {theirs.name}")
            continue
        if out.dismissed.get(rule.name, {}).get("id") == pub.id:  # an auto rule still there goes below
            refuse(DISMISSED, dismissed_detail(pub.port, pub.proto))
            continue
        wanted.add(rule.name)
        owned = Owned(rule, pub.container, pub.id)
        there = auto.get(rule.name)
        if there == rule:
            out.keep.append(owned)
            continue
        if there is not None:  # the same name, another rule (edited by hand): put ours back
            out.remove.append(there)
        else:
            busy = host_busy(rule)
            if busy is not None:
                reason, owner = busy
                what = "may not be bound by this user" if reason == DENIED else "is in use"
                refuse(reason, f"host port 127.0.0.1:{pub.port}/{pub.proto} {what}"
                               + (f" by {owner}" if owner else "") + "; it is not moved to another port", owner)
                wanted.discard(rule.name)
                continue
        out.add.append(owned)
    out.remove += [r for name, r in sorted(auto.items()) if name not in wanted]
    return out


def host_check(rule: Forward) -> Optional[Tuple[str, Optional[str]]]:
    """The real ``HostCheck``: forwards.probe (IPv4 and the [::1]/[::] listeners), then who holds it."""
    state = fw.probe(rule.host_port, rule.host_ip, rule.proto)
    if state == fw.FREE:
        return None
    if state == fw.DENIED:
        return DENIED, None
    return IN_USE, fw.owner(rule)


# -- the record (autoports.json) -------------------------------------------------------------------


def _state_path(name: str) -> Path:
    return paths.vm_dir(name) / STATE


def state(name: str) -> dict:
    """What the follower last wrote: ``owners`` (rule name → container), ``refused``, ``daemon``,
    ``dismissed`` (rule name → container; ``vm.unforward``).  An unreadable record counts as
    empty: the next look at the daemon rewrites it."""
    try:
        data = json.loads(_state_path(name).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(name: str, data: dict) -> None:
    atomic.write_bytes(_state_path(name), (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """One writer of the VM's record at a time, across processes and threads (each open is its
    own flock); the kernel drops a killed holder's lock.  The VM's folder is not made here: a
    destroyed VM's gets no new lock file."""
    fd = os.open(paths.vm_dir(name) / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def updating(name: str) -> Iterator[dict]:
    """Read-modify-write of ``autoports.json`` under its lock: the block edits the record it is
    given (and may change forwards meanwhile); it is written, atomically, if it changed and the
    block did not fail."""
    with locked(name):
        data = state(name)
        before = copy.deepcopy(data)
        yield data
        if data != before:
            _save(name, data)


def _table(data: dict, key: str) -> Dict[str, dict]:
    found = data.get(key)
    return {k: v for k, v in found.items() if isinstance(v, dict)} if isinstance(found, dict) else {}


def owners(name: str) -> Dict[str, dict]:
    return _table(state(name), "owners")


def forward_rows(name: str, rules: Iterable[Forward]) -> List[dict]:
    """The VM's rules as vm.forwards/vm.status print them: an auto one names its container."""
    known = owners(name)
    rows = []
    for rule in sorted(rules):
        row = rule.to_dict()
        if is_auto(rule):
            owner = known.get(rule.name) or {}
            row["auto"] = {"container": owner.get("container"), "id": owner.get("id")}
        rows.append(row)
    return rows


def rule_line(row: dict) -> str:
    """One forward in text (vm.forwards, vm.status)."""
    auto = row.get("auto")
    text = f"{row['name']:<14} {row['host_ip']}:{row['host_port']} -> {row['guest_port']}/{row['proto']}"
    return text + (f"  (auto: container {auto['container'] or 'unknown'})" if auto else "")


def report(machine: "Machine") -> Optional[dict]:
    """For vm.forwards/vm.status: the allow-list, whether the daemon is followed, refused ports."""
    allow = getattr(machine, "auto_ports", None)
    if allow is None:
        return None
    data = state(machine.name)
    refused = data.get("refused") if isinstance(data.get("refused"), list) else []
    return {"allow": list(allow), "daemon": data.get("daemon") or "not followed yet", "refused": refused}


def render(info: Optional[dict]) -> List[str]:
    if not info:
        return []
    lines = [f"auto ports: allow {', '.join(info['allow'])}; daemon {info['daemon']}"]
    for row in info["refused"]:
        lines.append(f"  {row['port']}/{row['proto']} of container {row['container']} not forwarded: {row['detail']}")
    return lines


def clear(name: str, provider: "Provider") -> List[str]:
    """Remove every auto forward of the VM (``vm.stop``; ``vm.start`` before a boot): they follow
    containers, and a stopped VM has none; its dismissals go with the record."""
    with locked(name):
        try:
            rules = [r for r in provider.forwards() if is_auto(r)]
        except B2dkitError:
            rules = []
        known = owners(name)
        done = []
        for rule in rules:
            try:
                provider.remove_forward(rule.name)
            except B2dkitError:
                continue
            owner = (known.get(rule.name) or {}).get("container")
            done.append(f"removed auto forward {fw.describe(rule)}" + (f" (container {owner})" if owner else ""))
        _state_path(name).unlink(missing_ok=True)
    return done


def dismiss(name: str, provider: "Provider", rule: Forward) -> str:
    """``vm.unforward PORT`` on an auto forward: remove it now and record it as dismissed for its
    container, so the follower does not add it back (``decide``) until that container no longer
    publishes the port.  The record says so at once (vm.forwards), before the follower looks."""
    with updating(name) as data:
        known = _table(data, "owners")
        owner = known.pop(rule.name, {})
        provider.remove_forward(rule.name)
        container, ident = owner.get("container"), owner.get("id")
        data["owners"] = known
        dismissed = _table(data, "dismissed")
        dismissed[rule.name] = {"container": container, "id": ident}  # no id known: whichever publishes it
        data["dismissed"] = dismissed
        refused = [r for r in data.get("refused") or [] if isinstance(r, dict)
                   and (r.get("port"), r.get("proto")) != (rule.host_port, rule.proto)]
        data["refused"] = refused + [Refused(rule.host_port, rule.proto, container or "unknown", ident or "",
                                             DISMISSED, dismissed_detail(rule.host_port, rule.proto)).to_dict()]
    spec = fw.port_spec(rule.host_port, rule.proto)
    return (f"removed auto forward {fw.describe(rule)}" + (f" of container {container}" if container else "")
            + f"; not forwarded again while {'that' if container else 'its'} container publishes it "
              f"(`b2dkit vm.forward {spec}` brings it back)")


# -- following the daemon --------------------------------------------------------------------------


class Follower:
    """Follows one VM's daemon in a thread of the watcher; ``stop`` ends it promptly."""

    def __init__(self, name: str, provider: "Provider", allow: Sequence[PortRange], log: Callable[[str], None],
                 on_change: Callable[[], None] = lambda: None, host_busy: HostCheck = host_check):
        self.name = name
        self.provider = provider
        self.allow = tuple(allow)
        self.log = log
        self.on_change = on_change
        self.host_busy = host_busy
        self.stopping = threading.Event()
        self.applying = threading.Lock()  # held while forwards change: stop waits for it
        self.thread = threading.Thread(target=self._run, name=f"autoports-{name}", daemon=True)
        self.last: Optional[str] = None  # last daemon state written, so a steady outage logs once
        self.refused_before: List[dict] = []

    def start(self) -> "Follower":
        self.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Returns once no change is half-applied: a thread blocked on the stream just ends with
        the process (a read blocked in another thread cannot be woken portably)."""
        self.stopping.set()
        if self.applying.acquire(timeout=timeout):
            self.applying.release()

    def _run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                self._follow()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the daemon or the VM went away: retry, never die
                if self.stopping.is_set():
                    break
                self._daemon_state(f"unreachable ({_why(exc)}); retrying")
                self.stopping.wait(BACKOFF[min(failures, len(BACKOFF) - 1)])
                failures += 1

    def _follow(self) -> None:
        """One connection: open the event stream, then list (nothing falls between), then each event."""
        from . import dockerd

        rule = fw.docker_forward(self.provider.forwards())
        if rule is None:
            raise LookupError("the VM has no forward to its Docker daemon yet")
        response = dockerd.stream(self.name, rule, EVENTS, idle=IDLE)
        try:
            self._daemon_state("followed")
            self.reconcile(rule, "connected to the Docker daemon")
            for line in response.iter_lines(chunk_size=None):
                if self.stopping.is_set():
                    return
                if line:
                    event = json.loads(line)
                    actor = (event.get("Actor") or {}).get("Attributes") or {}
                    self.reconcile(rule, f"container {actor.get('name', event.get('id', '?'))} {event.get('Action')}")
            if not self.stopping.is_set():
                raise ConnectionError("the daemon ended its event stream")  # restarting: back off, then list
        except Exception as exc:  # noqa: BLE001
            if _idle(exc):  # nothing happened for IDLE seconds: list again on a new stream
                return
            raise
        finally:
            response.close()

    def reconcile(self, rule: Forward, why: str) -> Changes:
        """Look at the daemon once and apply what ``decide`` says; logs only what changed.  The
        forwards are read, decided on and changed under the record's lock, so a ``vm.unforward``
        (``dismiss``) lands wholly before or after."""
        from . import dockerd

        began = time.monotonic()
        pubs = published(dockerd.api(self.name, rule, "/containers/json"))
        applied = False
        with updating(self.name) as data:
            changes = decide(pubs, self.provider.forwards(), self.allow, self.host_busy, _table(data, "dismissed"))
            with self.applying:
                if not self.stopping.is_set():
                    self._apply(changes, why, began, data)
                    applied = True
        if applied and (changes.add or changes.remove):  # once the record says who owns them
            self.on_change()
        return changes

    def _apply(self, changes: Changes, why: str, began: float, data: dict) -> None:
        known = _table(data, "owners")
        for old in changes.remove:
            try:
                self.provider.remove_forward(old.name)
            except B2dkitError as exc:
                self.log(f"auto ports: cannot remove {old.name}: {exc}")
                continue
            owner = (known.get(old.name) or {}).get("container")
            self.log(f"auto ports: removed {fw.describe(old)}" + (f" (container {owner} stopped)" if owner else ""))
        for new in changes.add:
            try:
                self.provider.add_forward(new.rule)
            except B2dkitError as exc:  # taken between the check and the add: reported, not moved
                changes.refused.append(Refused(new.rule.host_port, new.rule.proto, new.container, new.id, IN_USE,
                                               f"{exc.message}; it is not moved to another port"))
                continue
            changes.keep.append(new)
            self.log(f"auto ports: forwarding {new.line} ({why}; {time.monotonic() - began:.2f} s)")
        known = {kept.rule.name: {"container": kept.container, "id": kept.id} for kept in changes.keep}
        refused = [r.to_dict() for r in changes.refused]
        for row in changes.refused:
            if row.to_dict() not in self.refused_before:
                self.log(f"auto ports: {row.line}")
        self.refused_before = refused
        data.update(owners=known, refused=refused, allow=[str(r) for r in self.allow], dismissed=changes.dismissed)

    def _daemon_state(self, text: str) -> None:
        if text == self.last:
            return
        self.last = text
        self.log(f"auto ports: Docker daemon {text}")
        with updating(self.name) as data:
            data["daemon"] = text


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__


def _idle(exc: BaseException) -> bool:
    """A read timeout on the event stream (requests wraps urllib3's in a ConnectionError)."""
    seen: Optional[BaseException] = exc
    while seen is not None:
        if "ReadTimeout" in type(seen).__name__ or "timed out" in str(seen):
            return True
        seen = seen.__context__ or seen.__cause__
    return False


def follow(machine: "Machine", log: Callable[[str], None], on_change: Callable[[], None]) -> Optional[Follower]:
    """The watcher's hook: a running Follower when the VM's profile says ``ports: auto``."""
    from . import lifecycle

    allow = getattr(machine, "auto_ports", None)
    if allow is None or machine.docker is False:
        return None
    ranges = parse_allow(allow)
    log(f"auto ports: following the Docker daemon for ports {', '.join(map(str, ranges))}")
    return Follower(machine.name, lifecycle.provider_for(machine), ranges, log, on_change).start()
