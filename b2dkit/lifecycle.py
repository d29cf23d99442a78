"""A b2dkit VM end to end: ISO, hypervisor, guest set-up and mounts, in the right order.

The ``vm.*`` tasks and onboarding both call these functions.  Each step looks at what
already exists first, so running any of them twice changes nothing the second time, and a
run that failed half-way is finished by the next one.  Providers know their hypervisor;
this module knows the order of things and what to tell the user.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

from . import forwards as fw
from . import atomic, iso, machines, paths, sshkeys
from .changes import Change, Decision
from .boot2docker import DEFAULT_USER
from .errors import (B2dkitError, DamagedRecord, HypervisorError, InputError, InternalError, Interrupted, IsoError,
                     MountError, PortInUse, ToolMissing)
from .forwards import Forward
from .machines import Machine
from .hypervisors import PROVIDERS, get_provider
from .hypervisors.base import MachineSpec, Provider, VMState

if TYPE_CHECKING:  # imported where used: paramiko and the profile loader cost start-up time
    from . import dockerd
    from .guest import GuestSession
    from .profile import Profile

PathLike = Union[str, Path]

Log = Callable[[str], None]
VM_ISO = "boot2docker.iso"
KNOWN_HOSTS = "known_hosts"
SSH_TIMEOUT = 240.0


def _quiet(_msg: str) -> None:
    pass


@dataclass
class Outcome:
    """What a step did, for summaries: ``done`` lists changes, ``kept`` what was already there."""

    done: List[str] = field(default_factory=list)
    kept: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    running: Optional[bool] = None  # create: is the VM running afterwards (``--no-start`` keeps it as it was)


# -- where things are -------------------------------------------------------------------------


def provider_for(machine: Machine) -> Provider:
    return get_provider(machine.provider, machine.name)


def key_path(name: str) -> Path:
    return paths.vm_dir(name) / sshkeys.KEY_NAME


def known_hosts_path(name: str) -> Path:
    return paths.vm_dir(name) / KNOWN_HOSTS


def machine_from_profile(profile: Profile) -> Machine:
    return Machine(
        name=profile.name,
        provider=profile.provider,
        profile=str(profile.source),
        mounts=list(profile.mounts),
        persistent_dirs=list(profile.persistent_dirs),
        boot_codes=list(profile.boot_code_args()),
        docker=profile.docker_mode,
        images=[str(path) for path in profile.images],
        auto_ports=None if profile.auto_ports is None else list(profile.auto_ports),
    )


# -- ISO ----------------------------------------------------------------------------------------


GUEST_BUILD = Path(__file__).resolve().parents[1] / "guest" / "build.py"


def guest_builder() -> Any:
    """b2dkit's test-guest builder (guest/build.py), loaded from the source checkout."""
    if not GUEST_BUILD.is_file():
        raise InputError(
            "this profile builds the test guest, which needs the b2dkit source checkout (guest/build.py)",
            hint="run from a clone of the b2dkit repository, or set iso.path",
        )
    import importlib.util

    spec = importlib.util.spec_from_file_location("b2dkit_guest_build", GUEST_BUILD)
    if spec is None or spec.loader is None:
        raise InputError(f"cannot load {GUEST_BUILD}", hint="run from a clone of the b2dkit repository")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def built_guest(flavour: str = "guest") -> Optional[Path]:
    """The guest ISO if it is built for the current inputs; a missing build package (sudo,
    busybox...) is this machine's to fix, so it is ToolMissing, never a traceback."""
    builder = guest_builder()
    try:
        return builder.cached(flavour=flavour)
    except (builder.BuildError, OSError) as exc:
        raise ToolMissing(f"cannot build the guest ISO: {exc}") from None


def build_guest(log: Log = _quiet, flavour: str = "guest") -> Path:
    iso = built_guest(flavour)
    if iso:
        return iso
    builder = guest_builder()
    log(f"ISO: building the boot2docker-compatible guest ({flavour}) from Debian packages…")
    try:
        return builder.build(quiet=True, flavour=flavour)
    except (builder.BuildError, OSError) as exc:
        raise ToolMissing(f"building the guest ISO failed: {exc}") from None


def source_iso_change(profile: Profile, iso_path: Optional[PathLike] = None) -> Tuple[Optional[Path], str]:
    """Decide the ISO step: (the source ISO if it is here, and what it is) or (None, what getting it takes).

    Reads only: a local path, the guest build's cache or the download cache.
    """
    local = iso_path or profile.iso.path
    if local:
        path = Path(local).expanduser()
        if not path.is_file():
            what = "is not a regular file" if path.exists() else "does not exist"
            raise InputError(f"ISO {path} {what}", hint="pass --iso PATH to a boot2docker.iso")
        if not iso_path and profile.iso.pinned:  # iso.path with a sha256 (iso.pin --from): check it
            from . import isocache

            digest = isocache.source_digest(path)
            if digest != profile.iso.sha256:
                raise IsoError(
                    f"ISO {path} has sha256 {digest}, not the {profile.iso.sha256} the profile pins",
                    hint="put the pinned file there, or pin this one with `b2dkit iso.pin --from PATH`",
                )
        iso.check_bootable(path)  # also when no remaster will read it
        return path, f"using local ISO {path}"
    if profile.iso.build:
        try:
            built = built_guest(profile.iso.build)
        except ToolMissing:  # nothing to build with yet (a dry run on a bare machine): the build says why
            built = None
        if built:
            return built, f"guest ISO is built ({built})"
        return None, f"build the boot2docker-compatible guest ISO from Debian packages ({profile.iso.build})"
    from . import isocache

    sha256 = profile.iso.require_sha256(profile.ref)
    cached = isocache.source_path(sha256)
    if cached.is_file():
        iso.check_bootable(cached)
        return cached, f"ISO {cached.name} is in the cache (sha256 verified when stored)"
    return None, f"download {profile.iso.urls[0]} and verify sha256 {sha256[:12]}…"


def source_iso(profile: Profile, iso_path: Optional[PathLike] = None, log: Log = _quiet) -> Path:
    """The unmodified boot2docker.iso: ``--iso``, the profile's local path, a build, or a verified download."""
    found, change = source_iso_change(profile, iso_path)
    if found:
        return found
    if profile.iso.build:
        return build_guest(log, profile.iso.build)
    from . import download

    log(f"ISO: {change}")
    return download.fetch(list(profile.iso.urls), profile.iso.require_sha256(profile.ref))


def boot_iso_change(profile: Profile, source: Optional[Path]) -> Tuple[Optional[Path], str]:
    """Decide the remaster step: (the boot ISO if it exists, and what it is) or (None, what making it takes)."""
    codes = " ".join(profile.boot_code_args())
    if not codes:
        return source, "no boot codes to add; the VM boots the ISO as it is"
    if source is not None:
        from . import isocache

        hit = isocache.lookup(source, profile.boot_code_args())
        if hit:
            return hit, f"remastered ISO with {codes} is cached"
    return None, f"remaster the ISO with {codes}"


def present_or_made(found: Optional[Path], text: str, kind: str) -> Decision:
    """The ISO and remaster steps' pure diff: what is there is kept, what is not is one change."""
    return Decision(kept=[text]) if found is not None else Decision(changes=[Change(text, kind)])


def boot_iso(profile: Profile, source: Path, log: Log = _quiet) -> Path:
    """The ISO the VM boots: the source remastered with the profile's boot codes (cached)."""
    codes = profile.boot_code_args()
    hit, _ = boot_iso_change(profile, source)
    if hit:
        if codes:
            log(f"ISO: remaster with {' '.join(codes)} is cached")
        return hit
    from . import isocache

    log(f"ISO: remastering with {' '.join(codes)}")
    return isocache.cached_remaster(source, codes)  # under the cache's lock



def install_iso(boot: Path, name: str) -> Path:
    """Give the VM its own link to the boot ISO, so clearing the ISO cache never breaks a VM."""
    vm_dir = paths.ensure_dir(paths.vm_dir(name))
    target = vm_dir / VM_ISO
    if target.exists() and paths.same_content(target, boot):
        return target
    with atomic.atomic_path(target) as tmp:  # a full disk names the VM's copy, never the source
        tmp.unlink()
        try:
            os.link(boot, tmp)
        except OSError:
            shutil.copyfile(boot, tmp)
    return target


# -- lifecycle ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VMFacts:
    """What the create step reads: the VM's state and, for an existing VM, the provider's diff
    against the profile (``changes`` None when there is nothing to diff against yet)."""

    name: str
    provider: str
    state: VMState
    changes: Optional[List[Change]] = None
    pending: Tuple[str, ...] = ()  # recorded settings the running VM does not have yet


def vm_facts(profile: Profile) -> VMFacts:
    """Read only: the existing VM (if any) and what converging it to ``profile`` would change."""
    existing = _existing(profile.name)
    if existing is not None:
        _check_provider(existing, profile)
    provider = provider_for(machine_from_profile(profile))
    state = provider.state()
    vm_dir = paths.vm_dir(profile.name)
    public_key = sshkeys.public_line(vm_dir)
    if existing is None or state == VMState.ABSENT or public_key is None or not (vm_dir / VM_ISO).is_file():
        return VMFacts(profile.name, profile.provider, state)
    spec = MachineSpec.from_profile(profile, vm_dir / VM_ISO, public_key)
    return VMFacts(profile.name, profile.provider, state, provider.changes(spec, defer=True),
                   tuple(provider.pending()))


def create_changes(facts: VMFacts, memory: int, cpus: int, disk: int) -> Decision:
    """The create step's pure diff: a new VM is one change; an existing one, the provider's changes
    (memory, CPUs and ISO of a running VM are recorded for its next start: ``OFFLINE_KINDS``)."""
    if facts.changes is None:
        size = f"{memory} MB, {cpus} CPU, {disk} MB persistent disk"
        return Decision(changes=[Change(f"create VM {facts.name} on {facts.provider} ({size})", "create",
                                        past=f"created VM {facts.name} on {facts.provider} ({size})")])
    kept = [f"VM {facts.name} exists ({facts.state})", *facts.pending]
    if not facts.changes:
        kept.append(f"VM {facts.name} already matches the profile")
    return Decision(changes=list(facts.changes), kept=kept)


def _check_provider(existing: Machine, profile: Profile) -> None:
    if existing.provider != profile.provider:
        raise InputError(
            f"VM {profile.name!r} already exists on {existing.provider}, not {profile.provider}",
            hint="destroy it first (`b2dkit vm.destroy`), or pass --name to create another",
        )


def create(profile: Profile, iso_path: Optional[PathLike] = None, start_vm: bool = True, log: Log = _quiet,
           remaster: bool = True) -> Outcome:
    """``vm.create``: converge the VM to the profile, then (unless told not to) start and set it up.

    ``remaster=False`` means ``iso_path`` is already the boot ISO (onboarding remasters first).
    """
    out = Outcome()
    existing = _existing(profile.name)
    if existing:
        _check_provider(existing, profile)
    machine = machine_from_profile(profile)
    provider = provider_for(machine)
    if iso_path and not remaster:
        boot = Path(iso_path)
    else:
        boot = boot_iso(profile, source_iso(profile, iso_path, log), log)
    with atomic.locked_dir(paths.ensure_dir(paths.vm_dir(machine.name))):
        atomic.remove_stale_temps(paths.vm_dir(machine.name), older_than=0)  # a killed create's, under the lock
        _create_locked(profile, machine, provider, boot, out)
    for line in out.done + out.kept:
        log(line)
    if start_vm:
        sub = start(machine, log=log)
        out.done += sub.done
        out.kept += sub.kept
        out.warnings += sub.warnings
    return out


def _create_locked(profile: Profile, machine: Machine, provider: Provider, boot: Path, out: Outcome) -> None:
    vm_iso = install_iso(boot, machine.name)
    _, public_key = sshkeys.ensure_keypair(paths.vm_dir(machine.name), comment=f"b2dkit@{machine.name}")
    spec = MachineSpec.from_profile(profile, vm_iso, public_key)
    spec.check(machine.name)  # decide and check first: a create refused here leaves no record behind
    _check_other_vms(machine.name, spec.forwards)
    previous = _existing(machine.name)
    # Before the hypervisor: a half-made VM (a killed run) is still ours to finish or destroy.
    # Written only when different, so a re-run with nothing to do writes nothing.
    if previous != machine:
        machines.save(machine)
    try:
        report = provider.create(spec, defer=True)  # a running VM's memory: at its next start
    except BaseException:
        if previous is None and _absent(provider):  # nothing was made: the record would name a ghost
            machines.forget(machine.name)
        raise
    if machines.active_name() != machine.name:  # only a VM that exists becomes the active one
        machines.set_active(machine.name)
    out.running = report.running
    if report.created:
        (made,) = create_changes(VMFacts(machine.name, machine.provider, VMState.ABSENT),
                                 spec.memory_mb, spec.cpus, spec.disk_mb).changes
        out.done.append(made.done)
    elif report.changes:
        out.done.extend(report.changes)
        if report.running:
            _poke_watcher(machine)  # a forward added live gets its [::1] relay now
    else:
        out.kept.append(f"VM {machine.name} already matches the profile")


def _absent(provider: Provider) -> bool:
    try:
        return provider.state() == VMState.ABSENT
    except B2dkitError:
        return False


def _existing(name: str) -> Optional[Machine]:
    try:
        return machines.load(name)
    except B2dkitError:
        return None


def start(machine: Machine, log: Log = _quiet, mount: bool = True) -> Outcome:
    """``vm.start``: boot if needed, wait for SSH, create persistent dirs, set the clock, mount."""
    booted: List[bool] = []
    try:
        return _start(machine, log, mount, booted)
    except KeyboardInterrupt:
        if not booted:
            raise
        raise Interrupted(  # the truth: the VM runs on, half set up
            f"interrupted; VM {machine.name} was started and keeps running, not fully set up",
            hint="run `b2dkit vm.start` again to finish, or `b2dkit vm.stop` to stop it",
        ) from None


def _start(machine: Machine, log: Log, mount: bool, booted: List[bool]) -> Outcome:
    from . import guest

    from . import dockerd

    out = Outcome()
    images = dockerd.check_images(machine.images)  # a corrupt tarball is named before the VM is touched
    provider = provider_for(machine)
    snap = provider.status()  # one hypervisor query answers state, forwards and the SSH endpoint
    if snap.state == VMState.ABSENT:
        raise InputError(f"VM {machine.name!r} does not exist on {machine.provider}; run `b2dkit vm.create`")
    rules = snap.forwards
    if snap.state == VMState.RUNNING:
        booted.append(True)
        out.kept.append(f"VM {machine.name} is already running")
    else:
        _stop_watcher(machine, Outcome())  # one left by a VM stopped outside b2dkit holds its [::1] relays
        out.done += _clear_auto_forwards(machine, provider, log)  # left by a VM stopped outside b2dkit
        rules = _move_docker_forward(machine, provider, snap.forwards, out, log)
        _check_other_vms(machine.name, [f for f in rules if not fw.is_auto(f)])
        log(f"starting {machine.name} ({machine.provider})…")
        booted.append(True)  # from here on an interrupt leaves a running VM behind
        provider.start()
        out.done.append(f"started VM {machine.name}")
    ssh = fw.ssh_forward(snap.forwards)
    host, port = fw.connect_address(ssh) if ssh else provider.ssh_endpoint()  # the latter says what is wrong
    log(f"waiting for SSH on {host}:{port}…")
    began = time.monotonic()
    with guest.wait_for_session(
        host, port, key_path(machine.name), known_hosts_path(machine.name),
        timeout=SSH_TIMEOUT, log_path=provider.log_path(), check=lambda: _not_halted(machine, provider),
    ) as session:  # set-up reuses the connection that proved SSH ready: one handshake, not two
        stages = [("SSH", time.monotonic() - began)]
        report = guest.setup(session, machine.persistent_dirs)
        stages.append(("set-up", time.monotonic() - began - stages[0][1]))
        docker_began = time.monotonic()
        if _docker(machine, provider, session, rules, images, out, log):
            stages.append(("docker", time.monotonic() - docker_began))
    log("ready: " + ", ".join(f"{what} {seconds:.1f} s" for what, seconds in stages))
    out.done += [f"created {d}" for d in report.created] + [f"fixed owner of {d}" for d in report.fixed]
    out.kept += [f"{d} already there" for d in report.present]
    if report.clock_set:
        drift = f" (drift now {report.drift:+.2f} s)" if report.drift is not None else ""
        out.done.append(f"set the guest clock from the host{drift}")
    if mount and (machine.mounts or machines.made_mounts(machine.name)):
        try:  # a wanted mount that was not made is a failure (exit 3), as in onboarding
            sub = mount_all(machine, log=log, endpoint=(host, port), strict=True)
        except MountError as exc:
            raise MountError(f"VM {machine.name} is running, but {exc.message}",
                             hint="fix that, then run `b2dkit vm.mount`") from None
        out.done += sub.done
        out.kept += sub.kept
        out.warnings += sub.warnings
    _start_watcher(machine, out)
    for line in out.warnings:
        log(f"warning: {line}")
    return out


def _start_watcher(machine: Machine, out: Outcome) -> None:
    """The watcher repairs clock and mounts after a sleep (watcher.py); its failure is a warning."""
    from . import watcher

    before = watcher.running_pid(machine.name)
    try:
        pid = watcher.start(machine.name)
    except B2dkitError as exc:
        out.warnings.append(str(exc))
        return
    if pid and pid == before:
        out.kept.append(f"watcher already running (pid {pid})")
    elif pid:
        out.done.append(f"started the watcher (pid {pid}, log {paths.vm_dir(machine.name) / watcher.LOGFILE})")


def _stop_watcher(machine: Machine, out: Outcome) -> None:
    """First, so it does not remount what we are about to unmount."""
    from . import watcher

    if watcher.stop(machine.name):
        out.done.append("stopped the watcher")


def _follows_containers(machine: Machine) -> bool:
    """``ports: auto`` now, or a record left from when it was: the VM may hold auto forwards."""
    from . import autoports

    return machine.auto_ports is not None or bool(autoports.state(machine.name))


def _clear_auto_forwards(machine: Machine, provider: Provider, log: Log) -> List[str]:
    """Auto forwards follow running containers (autoports.py): a stopped VM keeps none."""
    from . import autoports

    if not _follows_containers(machine):
        return []  # never followed: no hypervisor call (benchmarks/vbox_calls.py counts them)
    done = autoports.clear(machine.name, provider)
    for line in done:
        log(line)
    return done


def _not_halted(machine: Machine, provider: Provider) -> None:
    """Stop waiting for SSH at once when the hypervisor has halted the guest (a full host disk)."""
    why = provider.halted()
    if why:
        raise HypervisorError(f"VM {machine.name} is halted: {why}")

def _move_docker_forward(machine: Machine, provider: Provider, rules: List[Forward], out: Outcome,
                         log: Log) -> List[Forward]:
    """A stopped VM whose Docker forward's host port something else took meanwhile: move the rule
    to a free port and say so in one line (``vm.env`` then prints it); the VM's rules after that."""
    moved = fw.moved_docker_forward(rules, taken=_other_vm_ports(machine.name))
    if moved is None:
        return rules
    old, new = moved
    holder = fw.owner(old)
    provider.remove_forward(old.name)
    provider.add_forward(new)
    line = (f"docker: host port {old.host_ip}:{old.host_port} is in use{' by ' + holder if holder else ''}; "
            f"the Docker daemon's forward moves to {fw.describe(new)} (run `eval \"$(b2dkit vm.env)\"` again)")
    log(line)
    out.done.append(line)
    return [new if f == old else f for f in rules]


def _docker(machine: Machine, provider: Provider, session: GuestSession, rules: List[Forward], images: List[Path],
            out: Outcome, log: Log, restart: bool = False) -> bool:
    """Docker set-up on a guest that has it (decide, then act), then wait for the daemon.
    ``restart``: restart it even when nothing else needs that (``vm.docker --restart``).

    False when the guest has no Docker (or the profile says docker: false)."""
    from . import dockerd

    decided = _docker_plan(machine, session, rules, restart=restart)
    if not decided.has_docker:
        return False
    for line in decided.lines:
        log(f"docker: {line}")
    out.done += dockerd.apply(machine.name, session, decided, provider.add_forward)
    rule = decided.rule
    assert rule is not None  # plan always has one for a guest with Docker
    address = "tcp://%s:%d" % fw.connect_address(rule)
    log(f"waiting for the Docker daemon on {address} (TLS)…")
    version = dockerd.wait_ready(machine.name, session, rule)
    log(f"Docker {version} is ready on {address} (TLS)")
    out.kept.append(f"Docker {version} answers on {address} with TLS")
    loaded = dockerd.load_images(machine.name, session, dockerd.images_to_copy(session, images))
    for line in loaded:
        log(f"docker: {line}")
    out.done += loaded
    return True


def _docker_plan(machine: Machine, session: GuestSession, rules: List[Forward],
                 restart: bool = False) -> "dockerd.Plan":
    """The Docker step's decision (``dockerd.plan``: facts, then the pure diff), for a start and a dry run."""
    from . import dockerd

    tz = next((code.split("=", 1)[1] for code in machine.boot_codes if code.startswith("tz=")), None)
    return dockerd.plan(machine.name, session, rules, taken=lambda: _other_vm_ports(machine.name),
                        required=machine.docker, tz=tz, restart=restart)


def start_changes(machine: Machine) -> Decision:
    """Decide the start step without changing anything: what ``start`` would do.

    A VM that does not run is one change (its guest cannot be asked before it boots); a running
    one is asked over SSH, with the same facts and diffs ``start`` uses: persistent dirs and clock
    (``guest.setup_facts``/``setup_changes``), Docker (certs, the 2376 forward, localtime:
    ``dockerd.plan``), profile images, and the watcher."""
    from . import dockerd, guest, watcher

    provider = provider_for(machine)
    snap = provider.status()
    if snap.state == VMState.ABSENT:
        raise InputError(f"VM {machine.name!r} does not exist on {machine.provider}; run `b2dkit vm.create`")
    if snap.state != VMState.RUNNING:
        dirs = ", ".join(machine.persistent_dirs) or "no persistent dirs"
        return Decision(changes=[Change(f"start VM {machine.name}, wait for SSH, create {dirs} and set the clock",
                                        "start", past=f"started VM {machine.name}")])
    out = Decision(kept=[f"VM {machine.name} is already running"])
    images = dockerd.check_images(machine.images)
    ssh = fw.ssh_forward(snap.forwards)
    host, port = fw.connect_address(ssh) if ssh else provider.ssh_endpoint()
    with guest.connect(host, port, key_path(machine.name), known_hosts_path(machine.name)) as session:
        facts = guest.setup_facts(session, machine.persistent_dirs)
        out.changes += guest.setup_changes(facts)
        done = {c.value for c in out.changes}
        out.kept += [f"{d} already there" for d in facts.dirs if d not in done]
        decided = _docker_plan(machine, session, snap.forwards)
        if decided.has_docker:
            out.changes += decided.changes
            if not decided.lines:
                out.kept.append("Docker is set up (certs, TLS forward, localtime)")
            out.changes += [Change(f"copy {p.name} into the guest's {dockerd.IMAGES_DIR} and load it", "image", p)
                            for p in dockerd.images_to_copy(session, images)]
    pid = watcher.running_pid(machine.name)
    if pid:
        out.kept.append(f"watcher already running (pid {pid})")
    elif watcher.enabled():  # B2DKIT_WATCHER=0: a real start starts none, so neither may a dry run say so
        out.changes.append(Change("start the watcher", "watcher"))
    return out


def restart_docker(machine: Machine, log: Log = _quiet) -> Outcome:
    """``vm.docker --restart``: the running VM's daemon restarted (with whatever set-up ``vm.start``
    would redo: certs, forward, localtime), then waited for until ``/_ping`` answers over TLS."""
    from . import dockerd

    images = dockerd.check_images(machine.images)
    provider = provider_for(machine)
    snap = provider.status()
    if snap.state != VMState.RUNNING:
        raise InputError(f"VM {machine.name!r} is {snap.state}, so is its Docker daemon",
                         hint=f"`b2dkit vm.start --name {machine.name}` starts both")
    ssh = fw.ssh_forward(snap.forwards)
    out = Outcome()
    with connect(machine, endpoint=fw.connect_address(ssh) if ssh else None, by="vm.docker", log=log) as session:
        if not _docker(machine, provider, session, snap.forwards, images, out, log, restart=True):
            raise InputError(f"VM {machine.name!r} runs no Docker daemon (its guest has none, or the profile "
                             "says docker: false)")
    return out


def _other_vm_ports(name: str) -> List[int]:
    ports = []
    for other in machines.all_machines():
        if other.name != name:
            try:
                ports += [f.host_port for f in provider_for(other).forwards()]
            except B2dkitError:
                continue
    return ports


STOP_TIMEOUT = 30.0


def stop_timeout(value: Union[None, str, float]) -> float:
    """``--timeout`` as seconds > 0: zero or less would skip the guest's own shutdown and lose writes."""
    if value is None:
        return STOP_TIMEOUT
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InputError(f"--timeout must be a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise InputError(
            f"--timeout must be more than 0 seconds, got {value!r}: the guest needs time to shut down"
            " without losing files"
        )
    return seconds


def flush_guest(machine: Machine, provider: Provider, log: Log = _quiet) -> bool:
    """``sync`` in the guest over SSH, so a power-off that may follow loses nothing already saved.

    False (and a warning) when the guest cannot be reached: the caller then depends on ACPI alone.
    """
    from . import guest

    try:
        host, port = provider.ssh_endpoint()
        with guest.connect(host, port, key_path(machine.name), known_hosts_path(machine.name)) as session:
            session.run(["sync"], timeout=60.0)
        return True
    except B2dkitError as exc:
        log(f"warning: could not flush the guest's disks before stopping it ({exc.message})")
        return False


def _powered_off(machine: Machine, timeout: float, synced: bool) -> str:
    why = f"VM {machine.name} did not shut down within {timeout:g} s, so it was powered off"
    if synced:
        return why + "; its disks were synced first, so files saved before the stop are kept"
    return why + ("; its disks could not be synced first, so files saved in its last seconds may be lost"
                  " (next time give it longer: `b2dkit vm.stop --timeout=120`)")


def stop_target(name: Optional[str]) -> Machine:
    """The VM ``vm.stop`` acts on: a known VM, or a QEMU still running after its folder was deleted."""
    try:
        return machines.resolve(name)
    except B2dkitError:
        from .hypervisors.qemu.provider import running_qemus

        if name and str(name).strip() in running_qemus():
            return Machine(name=str(name).strip(), provider="qemu")
        raise


def stop(machine: Machine, log: Log = _quiet, timeout: Union[None, str, float] = STOP_TIMEOUT) -> Outcome:
    """``vm.stop``: unmount b2dkit's sshfs mounts first (a dead server wedges them), flush, then shut down."""
    seconds = stop_timeout(timeout)  # bad input fails before anything is touched
    out = Outcome()
    _stop_watcher(machine, out)
    out.done += unmount_all(machine, log=log).done
    provider = provider_for(machine)
    out.done += _clear_auto_forwards(machine, provider, log)
    state = provider.state()
    if state in (VMState.STOPPED, VMState.ABSENT):
        out.kept.append(f"VM {machine.name} is already stopped")
        return out
    log(f"stopping {machine.name}…")
    synced = flush_guest(machine, provider, log) if state == VMState.RUNNING else False
    if provider.stop(timeout=seconds):
        out.done.append(f"stopped VM {machine.name}")
    else:
        out.done.append(f"stopped VM {machine.name} (powered off)")
        out.warnings.append(_powered_off(machine, seconds, synced))
    return out


def kept_disk(name: str) -> Optional[Machine]:
    """A VM ``vm.destroy`` removed but whose persistent disk it kept: no record any more, but
    its folder still holds the disk of one provider. ``vm.destroy --purge --name NAME``
    deletes it (#12 item 1); without this the only way was ``rm`` by hand."""
    for provider_name in PROVIDERS:
        try:
            if get_provider(provider_name, name).disk_path() is not None:
                return Machine(name=name, provider=provider_name)
        except B2dkitError:
            continue  # a provider that cannot run here (VirtualBox on an arm64 Mac) kept nothing
    return None


def destroy(machine: Machine, purge: bool = False, log: Log = _quiet) -> Outcome:
    """``vm.destroy``: the VM goes; its persistent disk stays unless ``purge``."""
    from . import guest

    out = Outcome()
    _stop_watcher(machine, Outcome())
    unmount_all(machine, log=log)
    provider = provider_for(machine)
    disk = provider.disk_path()
    try:
        running = provider.state() == VMState.RUNNING
    except DamagedRecord:  # a damaged definition of a VM that does not run: destroy must still work
        running = False
    if not purge and running:
        flush_guest(machine, provider, log)  # the kept disk must hold what was saved before the power-off
    provider.destroy(purge=purge)
    host_port = _ssh_port_or_none(machine)
    if host_port:
        guest.forget_host_key(known_hosts_path(machine.name), "127.0.0.1", host_port)
    machines.forget(machine.name)
    if purge:
        shutil.rmtree(paths.vm_dir(machine.name), ignore_errors=True)
        out.done.append(f"destroyed VM {machine.name} and deleted its disk")
    else:
        out.done.append(f"destroyed VM {machine.name}; kept its disk {disk} (use --purge to delete it)" if disk
                        else f"destroyed VM {machine.name} (it had no persistent disk)")
    for line in out.done:
        log(line)
    return out


def _ssh_port_or_none(machine: Machine) -> Optional[int]:
    try:
        return provider_for(machine).ssh_endpoint()[1]
    except B2dkitError:
        return None


# -- talking to a running VM ------------------------------------------------------------------


def connect(machine: Machine, endpoint: Optional[Tuple[str, int]] = None, by: str = "command",
            log: Log = _quiet) -> GuestSession:
    """The one way b2dkit commands open a session to a running VM: it repairs as it connects.

    Whatever a sleep broke (clock off by more than a second, stale sshfs mounts) is fixed
    here, so the watcher only makes that happen sooner. Returns the open ``GuestSession``.
    """
    from . import guest, repair

    host, port = endpoint or provider_for(machine).ssh_endpoint()
    session = guest.connect(host, port, key_path(machine.name), known_hosts_path(machine.name))
    try:
        repair.repair(machine, session, (host, port), by=by, reason="a command connected", log=log)
    except TimeoutError as exc:  # the watcher is mid-repair; the command still gets its session
        log(f"warning: {exc}")
    return session


def shell(machine: Machine, command: Optional[str] = None) -> int:
    """``vm.ssh``: repair what a sleep broke (``connect``), then OpenSSH in the foreground."""
    from . import guest

    endpoint = provider_for(machine).ssh_endpoint()
    connect(machine, endpoint=endpoint, by="vm.ssh").close()  # also pins the host key for ssh
    return guest.interactive_shell(*endpoint, key_path(machine.name), known_hosts_path(machine.name),
                                   command=command)  # fmt: skip


# -- forwards -----------------------------------------------------------------------------------


def _check_other_vms(name: str, wanted: List[Forward]) -> None:
    """No two b2dkit VMs may claim the same host socket (one of them would silently lose it)."""
    for other in machines.all_machines() if wanted else ():
        if other.name == name:
            continue
        try:
            theirs = provider_for(other).forwards()
        except B2dkitError:
            continue
        for fwd in wanted:
            taken = next((f for f in theirs if fw.same_socket(fwd, f)), None)
            if taken:
                raise PortInUse(
                    f"host port {taken.host_port}/{taken.proto} is already forwarded by VM {other.name!r}",
                    hint="pick another host port (HOST:GUEST) or remove it there with `b2dkit vm.unforward`",
                )


def forward(machine: Machine, rule: Forward, auto_correct: bool = False, force: bool = False,
            log: Log = _quiet) -> Forward:
    """``vm.forward``: add one rule, live if the VM runs; a re-run with the same rule is a no-op.

    The hypervisor is asked for the current rules only when the host port is busy (is it
    ours?) or the VM follows containers, which keeps the common case at two VBoxManage calls.
    An auto forward binds nothing on a stopped VM, so its port looks free: it is looked for,
    under the lock the watcher's follower takes (it cannot add it back in between).
    """
    from . import autoports

    fw.check_exposure(rule, force=force)
    provider = provider_for(machine)
    follows = _follows_containers(machine)
    with autoports.locked(machine.name) if follows else contextlib.nullcontext():
        added = _add_forward(machine, provider, rule, follows, auto_correct, log)
    if added is not None:
        log(f"forwarding {added.host_ip}:{added.host_port} -> guest {added.guest_port}/{added.proto}")
        _poke_watcher(machine)
    return added or rule


def _add_forward(machine: Machine, provider: Provider, rule: Forward, follows: bool, auto_correct: bool,
                 log: Log) -> Optional[Forward]:
    """The rule added (maybe moved by ``auto_correct``), or None when it was in place."""
    try:
        _check_other_vms(machine.name, [rule])
        busy = not fw.host_port_free(rule.host_port, rule.host_ip, rule.proto)
        if busy or follows:
            current = provider.forwards()
            if rule in current:
                log(f"forward {rule.host_ip}:{rule.host_port} -> {rule.guest_port}/{rule.proto} already in place")
                return None
            held = fw.holder(rule, current)
            if held and fw.is_auto(held):  # a container's auto forward: the user's own forward wins
                provider.remove_forward(held.name)
                log(f"replacing the auto forward {fw.describe(held)} (a forward of your own wins)")
                current, held = [r for r in current if r != held], None
            if held:  # this VM's own rule (maybe its SSH route): a clash, never a replace
                fw.refuse_clash(rule, held, machine.name)
            if busy:
                fw.require_free(rule, neighbours=lambda: [(f"VM {machine.name!r}", current)])
        provider.add_forward(rule)
    except PortInUse as exc:
        if not auto_correct:  # only vm.forward has the flag, so only its hint names it
            raise PortInUse(exc.message, hint=f"{exc.hint or 'pick another host port'}, or pass --auto-correct") \
                from None
        port = fw.pick_free_port(rule.host_ip, rule.proto, taken={f.host_port for f in provider.forwards()})
        log(f"Fixed port collision for {rule.guest_port} => {rule.host_port}. Now on port {port}.")
        rule = Forward(host_port=port, guest_port=rule.guest_port, proto=rule.proto, host_ip=rule.host_ip)
        provider.add_forward(rule)
    return rule


def _poke_watcher(machine: Machine) -> None:
    """The watcher's [::1] relays follow the forwards: tell it to look now, not in 3 s."""
    from . import watcher

    watcher.poke(machine.name)


def unforward(machine: Machine, name: str, force: bool = False, log: Log = _quiet) -> str:
    """``vm.unforward 8000``: remove the rule (named by ``unforward_name``); the SSH route only
    with ``force``, since without it b2dkit can no longer reach, set up or flush the guest.

    When that host port's rule is a container's auto forward (``auto-tcp-8000``), it is
    dismissed (``autoports.dismiss``): removed, and not forwarded again for that container."""
    from . import autoports

    provider = provider_for(machine)
    current = provider.forwards()
    if not force:
        ssh = fw.ssh_forward(current)
        if ssh is not None and ssh.name == name:
            raise InputError(
                f"refusing to remove {name}: it is the SSH route of VM {machine.name!r} (without it b2dkit "
                "could no longer reach, mount or cleanly stop the guest)",
                hint="pass --force to remove it anyway; `b2dkit vm.create` adds it back",
            )
    auto = next((r for r in current if r.name == fw.AUTO_PREFIX + name), None)
    if auto is not None and not any(r.name == name for r in current):
        line = autoports.dismiss(machine.name, provider, auto)
        name = auto.name
    else:
        provider.remove_forward(name)
        line = f"removed forward {name}"
    _poke_watcher(machine)
    log(line)
    return name


def unforward_name(spec: str) -> str:
    """``8000`` | ``8000/udp`` | ``8080:80`` → the rule name for that host port."""
    text = str(spec).strip()
    proto = "tcp"
    if "/" in text:
        text, proto = text.split("/", 1)
        proto = proto.lower()
        if proto not in fw.PROTOCOLS:
            raise InputError(f"invalid forward {spec!r}: unknown protocol {proto!r} (use tcp or udp)")
    host = text.split(":", 1)[0] if ":" in text else text
    return fw.rule_name(proto, fw.parse_port(host, "host port"))


# -- mounts -------------------------------------------------------------------------------------


GUEST_USER = DEFAULT_USER


def mount_dir(host_dir: Path) -> str:
    """A profile's host dir as the mount table shows it (absolute, symlinks resolved)."""
    return os.path.realpath(Path(host_dir).expanduser())


@dataclass(frozen=True)
class MountFacts:
    """What the mounts step reads: the host's live sshfs mounts, the ones b2dkit made for this VM,
    and the guest's SSH endpoint (``port`` None when the VM does not exist yet)."""

    live: Dict[str, Any]  # local dir -> sshfs.MountInfo
    mine: Dict[str, machines.MadeMount]  # local dir -> what b2dkit made for this VM
    owners: Dict[str, Optional[machines.MadeMount]]  # local dir -> the VM whose mount holds it
    host: str
    port: Optional[int]


def mount_facts(machine: Machine, endpoint: Optional[Tuple[str, Optional[int]]] = None) -> MountFacts:
    """Read only. ``endpoint``: the guest's (host, port) when the caller knows it (saves a hypervisor
    query); (host, None) for a VM that does not exist yet."""
    from . import sshfs

    live = {str(m.local_dir): m for m in sshfs.list_mounts()}
    mine = {r.local_dir: r for r in machines.made_mounts(machine.name)}
    owners = {local: machines.mount_owner(local, m.source) for local, m in live.items() if local not in mine}
    host, port = endpoint or provider_for(machine).ssh_endpoint()
    return MountFacts(live, mine, owners, host, None if port is None else int(port))


def mount_changes(mounts: List[Any], facts: MountFacts, remount: bool = False) -> Decision:
    """The mounts step's pure diff: each profile mount mounted (or remounted when stale, moved or
    asked), what b2dkit mounted that the profile dropped unmounted; a host dir that holds another
    VM's (or a foreign) mount is a warning, never adopted."""
    from . import sshfs

    out = Decision()
    wanted = {mount_dir(m.host) for m in mounts}
    for local, made in facts.mine.items():
        current = facts.live.get(local)
        if current is not None and current.source == made.source and local not in wanted:
            out.changes.append(Change(f"unmount {local} (no longer in the profile)", "unmount", local,
                                      past=f"unmounted {local} (no longer in the profile)"))
    for m in mounts:
        local = mount_dir(m.host)
        current = facts.live.get(local)
        here = facts.mine.get(local)
        ours = current is not None and here is not None and current.source == here.source
        if current is not None and not ours:
            owner = facts.owners.get(local)
            who = f"VM {owner.vm!r}'s mount" if owner else f"a mount of {current.source} b2dkit did not make"
            fix = f"`b2dkit vm.unmount --name={owner.vm}`" if owner else f"`fusermount -u {local}`"
            out.warnings.append(f"{m.guest} not mounted on {local}: {local} already holds {who}; free it with "
                                f"{fix} or change the profile's host dir")
            continue
        source = sshfs.source_of(facts.host, m.guest, GUEST_USER)
        if ours and current is not None and here is not None and current.alive and not remount \
                and facts.port in (None, here.port) and here.source == source and here.cache == m.cache:
            out.kept.append(f"{m.guest} already mounted on {local}" + sshfs.cache_note(m.cache))
        elif ours and here is not None and here.cache != m.cache:  # sshfs takes its caching at mount only
            mode = f" (cache {here.cache} → {m.cache})"
            out.changes.append(Change(f"remount {m.guest} on {local}{mode}", "remount", m,
                                      past=f"remounted {m.guest} on {local}{mode}"))
        elif ours:
            out.changes.append(Change(f"remount {m.guest} on {local}", "remount", m,
                                      past=f"remounted {m.guest} on {local}"))
        else:
            note = sshfs.cache_note(m.cache)
            out.changes.append(Change(f"mount {m.guest} on {local} with sshfs{note}", "mount", m,
                                      past=f"mounted {m.guest} on {local}{note}"))
    return out


def mount_all(machine: Machine, log: Log = _quiet, remount: bool = False,
              endpoint: Optional[Tuple[str, int]] = None,
              strict: bool = False) -> Outcome:
    """Mount each profile mount with sshfs, and unmount what b2dkit mounted that the profile dropped.

    ``mount_facts``, the pure ``mount_changes``, then ``apply_mounts``: only this VM's own mounts
    (``machines.made_mounts``) count as mounted: another VM's mount of the same host dir is
    reported, never adopted.  Problems become warnings so a running VM stays usable; ``strict``
    raises MountError once every mount was tried (``vm.start``, ``vm.mount``).
    """
    facts = mount_facts(machine, endpoint)
    out = apply_mounts(machine, facts, mount_changes(machine.mounts, facts, remount))
    for line in out.done:
        log(line)
    if strict and out.warnings:
        raise MountError("; ".join(out.warnings))
    return out


def apply_mounts(machine: Machine, facts: MountFacts, decided: Decision) -> Outcome:
    """Make ``decided`` (from ``mount_changes``); records of mounts that are gone are dropped first."""
    from . import sshfs

    out = Outcome(kept=list(decided.kept), warnings=list(decided.warnings))
    for local, made in facts.mine.items():
        current = facts.live.get(local)
        if current is None or current.source != made.source:
            machines.forget_mount(machine.name, local)  # gone: the mount table is the truth
    if facts.port is None:
        if decided.changes:
            raise InternalError(f"VM {machine.name} has no SSH endpoint to mount from")
        return out
    for change in decided.changes:
        try:
            if change.kind == "unmount":
                try:
                    sshfs.unmount(change.value)
                except B2dkitError as exc:
                    out.warnings.append(f"{change.value} is no longer in the profile but could not be unmounted: {exc}")
                    continue
                machines.forget_mount(machine.name, change.value)
            else:
                m = change.value
                local = mount_dir(m.host)
                if change.kind == "remount":  # stale, moved port or asked to remount: mount afresh
                    sshfs.unmount(local, lazy=True)
                    machines.forget_mount(machine.name, local)
                source = sshfs.source_of(facts.host, m.guest, GUEST_USER)
                sshfs.mount(facts.host, facts.port, key_path(machine.name), known_hosts_path(machine.name),
                            m.guest, local, user=GUEST_USER, cache=m.cache)
                machines.record_mount(machines.MadeMount(machine.name, source, facts.port, local, m.guest, m.cache))
            out.done.append(change.done)
        except B2dkitError as exc:
            out.warnings.append(f"{change.value.guest} not mounted on {mount_dir(change.value.host)}: {exc}")
    return out


def unmount_all(machine: Machine, log: Log = _quiet) -> Outcome:
    """Unmount what b2dkit mounted for this VM, and nothing else (another VM may use the same dir)."""
    from . import sshfs

    out = Outcome()
    try:
        live = {str(m.local_dir): m for m in sshfs.list_mounts(check=False)}
    except B2dkitError:
        return out
    for made in machines.made_mounts(machine.name):
        current = live.get(made.local_dir)
        if current is not None and current.source == made.source:
            sshfs.unmount(made.local_dir)
            out.done.append(f"unmounted {made.local_dir}")
            log(f"unmounted {made.local_dir}")
        machines.forget_mount(machine.name, made.local_dir)
    return out
