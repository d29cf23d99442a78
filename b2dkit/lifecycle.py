"""A b2dkit VM end to end: ISO, hypervisor, guest set-up and mounts, in the right order.

The ``vm.*`` tasks and onboarding both call these functions.  Each step looks at what
already exists first, so running any of them twice changes nothing the second time, and a
run that failed half-way is finished by the next one.  Providers know their hypervisor;
this module knows the order of things and what to tell the user.
"""

import contextlib
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from . import forwards as fw
from . import atomic, machines, paths, sshkeys
from .errors import B2dkitError, InputError, PortInUse, ToolMissing
from .forwards import Forward
from .machines import Machine
from .hypervisors import get_provider
from .hypervisors.base import MachineSpec, Provider, VMState

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


# -- where things are -------------------------------------------------------------------------


def provider_for(machine: Machine) -> Provider:
    return get_provider(machine.provider, machine.name)


def key_path(name: str) -> Path:
    return paths.vm_dir(name) / sshkeys.KEY_NAME


def known_hosts_path(name: str) -> Path:
    return paths.vm_dir(name) / KNOWN_HOSTS


def machine_from_profile(profile) -> Machine:
    return Machine(
        name=profile.name,
        provider=profile.provider,
        profile=str(profile.source),
        mounts=list(profile.mounts),
        persistent_dirs=list(profile.persistent_dirs),
        boot_codes=list(profile.boot_code_args()),
        docker=profile.docker_mode,
        images=[str(path) for path in profile.images],
    )


# -- ISO ----------------------------------------------------------------------------------------


GUEST_BUILD = Path(__file__).resolve().parents[1] / "guest" / "build.py"


def guest_builder():
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


def source_iso_change(profile, iso_path=None) -> Tuple[Optional[Path], str]:
    """Decide the ISO step: (the source ISO if it is here, and what it is) or (None, what getting it takes).

    Reads only: a local path, the guest build's cache or the download cache.
    """
    local = iso_path or profile.iso.path
    if local:
        path = Path(local).expanduser()
        if not path.is_file():
            raise InputError(f"ISO {path} does not exist", hint="pass --iso PATH to a boot2docker.iso")
        return path, f"using local ISO {path}"
    if profile.iso.build:
        built = built_guest(profile.iso.build)
        if built:
            return built, f"guest ISO is built ({built})"
        return None, f"build the boot2docker-compatible guest ISO from Debian packages ({profile.iso.build})"
    from . import isocache

    sha256 = profile.iso.require_sha256()
    cached = isocache.source_path(sha256)
    if cached.is_file():
        return cached, f"ISO {cached.name} is in the cache (sha256 verified when stored)"
    return None, f"download {profile.iso.urls[0]} and verify sha256 {sha256[:12]}…"


def source_iso(profile, iso_path=None, log: Log = _quiet) -> Path:
    """The unmodified boot2docker.iso: ``--iso``, the profile's local path, a build, or a verified download."""
    found, change = source_iso_change(profile, iso_path)
    if found:
        return found
    if profile.iso.build:
        return build_guest(log, profile.iso.build)
    from . import download

    log(f"ISO: {change}")
    return download.fetch(list(profile.iso.urls), profile.iso.require_sha256())


def boot_iso_change(profile, source: Optional[Path]) -> Tuple[Optional[Path], str]:
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


def boot_iso(profile, source: Path, log: Log = _quiet) -> Path:
    """The ISO the VM boots: the source remastered with the profile's boot codes (cached)."""
    codes = profile.boot_code_args()
    hit, _ = boot_iso_change(profile, source)
    if hit:
        if codes:
            log(f"ISO: remaster with {' '.join(codes)} is cached")
        return hit
    from . import isocache

    folder = paths.ensure_dir(isocache.remastered_dir())
    with atomic.locked_dir(folder):
        hit = isocache.lookup(source, codes)  # another b2dkit made it while we waited
        if hit:
            return hit
        log(f"ISO: remastering with {' '.join(codes)}")
        key = isocache.remaster_key(isocache.source_digest(source), codes)
        _remove_leftovers(folder, f".{key}.iso.*.part")  # a killed run's temp file: 60 MB of garbage
        return isocache.cached_remaster(source, codes)



def _remove_leftovers(folder: Path, pattern: str) -> None:
    for stale in folder.glob(pattern):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def install_iso(boot: Path, name: str) -> Path:
    """Give the VM its own link to the boot ISO, so clearing the ISO cache never breaks a VM."""
    vm_dir = paths.ensure_dir(paths.vm_dir(name))
    target = vm_dir / VM_ISO
    if target.exists() and paths.same_content(target, boot):
        return target
    tmp = vm_dir / f".{VM_ISO}.part"
    tmp.unlink(missing_ok=True)
    try:
        os.link(boot, tmp)
    except OSError:
        shutil.copyfile(boot, tmp)
    os.replace(tmp, target)
    return target


# -- lifecycle ----------------------------------------------------------------------------------


def create_changes(profile) -> Optional[List[str]]:
    """Decide the create step for a dry run: what ``create`` would change on the existing VM
    (the same lines a real run reports), or None when there is no VM yet."""
    existing = _existing(profile.name)
    if existing is None:
        return None
    _check_provider(existing, profile)
    provider = provider_for(machine_from_profile(profile))
    vm_dir = paths.vm_dir(profile.name)
    public_key = sshkeys.public_line(vm_dir)
    if provider.state() == VMState.ABSENT or public_key is None or not (vm_dir / VM_ISO).is_file():
        return None
    return provider.changes(MachineSpec.from_profile(profile, vm_dir / VM_ISO, public_key))


def _check_provider(existing: Machine, profile) -> None:
    if existing.provider != profile.provider:
        raise InputError(
            f"VM {profile.name!r} already exists on {existing.provider}, not {profile.provider}",
            hint="destroy it first (`b2dkit vm.destroy`), or pass --name to create another",
        )


def create(profile, iso_path=None, start_vm=True, log: Log = _quiet, remaster=True) -> Outcome:
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
        _remove_leftovers(paths.vm_dir(machine.name), ".*.part")  # temp files of a killed create
        _create_locked(profile, machine, provider, boot, out)
    for line in out.done + out.kept:
        log(line)
    if start_vm:
        sub = start(machine, log=log)
        out.done += sub.done
        out.kept += sub.kept
        out.warnings += sub.warnings
    return out


def _create_locked(profile, machine: Machine, provider: Provider, boot: Path, out: Outcome) -> None:
    vm_iso = install_iso(boot, machine.name)
    _, public_key = sshkeys.ensure_keypair(paths.vm_dir(machine.name), comment=f"b2dkit@{machine.name}")
    # Before the hypervisor: a half-made VM is still ours to finish or destroy.  Written only
    # when different, so a re-run with nothing to do writes nothing.
    if _existing(machine.name) != machine:
        machines.save(machine)
    if machines.active_name() != machine.name:
        machines.set_active(machine.name)
    spec = MachineSpec.from_profile(profile, vm_iso, public_key)
    _check_other_vms(machine.name, spec.forwards)
    report = provider.create(spec)
    if report.created:
        out.done.append(f"created VM {machine.name} on {machine.provider}")
    elif report.changes:
        out.done.extend(report.changes)
    else:
        out.kept.append(f"VM {machine.name} already matches the profile")


def _existing(name: str) -> Optional[Machine]:
    try:
        return machines.load(name)
    except B2dkitError:
        return None


def start(machine: Machine, log: Log = _quiet, mount: bool = True) -> Outcome:
    """``vm.start``: boot if needed, wait for SSH, create persistent dirs, set the clock, mount."""
    from . import guest

    from . import dockerd

    out = Outcome()
    images = dockerd.check_images(machine.images)  # a corrupt tarball is named before the VM is touched
    provider = provider_for(machine)
    snap = provider.status()  # one hypervisor query answers state, forwards and the SSH endpoint
    if snap.state == VMState.ABSENT:
        raise InputError(f"VM {machine.name!r} does not exist on {machine.provider}; run `b2dkit vm.create`")
    if snap.state == VMState.RUNNING:
        out.kept.append(f"VM {machine.name} is already running")
    else:
        _check_other_vms(machine.name, snap.forwards)
        log(f"starting {machine.name} ({machine.provider})…")
        provider.start()
        out.done.append(f"started VM {machine.name}")
    ssh = fw.ssh_forward(snap.forwards)
    host, port = fw.connect_address(ssh) if ssh else provider.ssh_endpoint()  # the latter says what is wrong
    log(f"waiting for SSH on {host}:{port}…")
    began = time.monotonic()
    with guest.wait_for_session(
        host, port, key_path(machine.name), known_hosts_path(machine.name),
        timeout=SSH_TIMEOUT, log_path=provider.log_path(),
    ) as session:  # set-up reuses the connection that proved SSH ready: one handshake, not two
        stages = [("SSH", time.monotonic() - began)]
        report = guest.setup(session, machine.persistent_dirs)
        stages.append(("set-up", time.monotonic() - began - stages[0][1]))
        docker_began = time.monotonic()
        if _docker(machine, provider, session, snap.forwards, images, out, log):
            stages.append(("docker", time.monotonic() - docker_began))
    log("ready: " + ", ".join(f"{what} {seconds:.1f} s" for what, seconds in stages))
    out.done += [f"created {d}" for d in report.created] + [f"fixed owner of {d}" for d in report.fixed]
    out.kept += [f"{d} already there" for d in report.present]
    if report.clock_set:
        drift = f" (drift now {report.drift:+.2f} s)" if report.drift is not None else ""
        out.done.append(f"set the guest clock from the host{drift}")
    if mount and machine.mounts:
        sub = mount_all(machine, log=log, endpoint=(host, port))
        out.done += sub.done
        out.kept += sub.kept
        out.warnings += sub.warnings
    for line in out.warnings:
        log(f"warning: {line}")
    return out


def _docker(machine: Machine, provider: Provider, session, rules: List[Forward], images: List[Path],
            out: Outcome, log: Log) -> bool:
    """Docker set-up on a guest that has it (decide, then act), then wait for the daemon.

    False when the guest has no Docker (or the profile says docker: false)."""
    from . import dockerd

    tz = next((code.split("=", 1)[1] for code in machine.boot_codes if code.startswith("tz=")), None)
    decided = dockerd.plan(machine.name, session, rules, taken=lambda: _other_vm_ports(machine.name),
                           required=machine.docker, tz=tz)
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


def stop_timeout(value) -> float:
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


def stop(machine: Machine, log: Log = _quiet, timeout=STOP_TIMEOUT) -> Outcome:
    """``vm.stop``: unmount b2dkit's sshfs mounts first (a dead server wedges them), flush, then shut down."""
    seconds = stop_timeout(timeout)  # bad input fails before anything is touched
    out = Outcome()
    out.done += unmount_all(machine, log=log).done
    provider = provider_for(machine)
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


def destroy(machine: Machine, purge: bool = False, log: Log = _quiet) -> Outcome:
    """``vm.destroy``: the VM goes; its persistent disk stays unless ``purge``."""
    from . import guest

    out = Outcome()
    unmount_all(machine, log=log)
    provider = provider_for(machine)
    disk = provider.disk_path()
    if not purge and provider.state() == VMState.RUNNING:
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
        out.done.append(f"destroyed VM {machine.name}; kept its disk {disk} (use --purge to delete it)")
    for line in out.done:
        log(line)
    return out


def _ssh_port_or_none(machine: Machine) -> Optional[int]:
    try:
        return provider_for(machine).ssh_endpoint()[1]
    except B2dkitError:
        return None


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
    ours?), which keeps the common case at two VBoxManage calls.
    """
    fw.check_exposure(rule, force=force)
    provider = provider_for(machine)
    try:
        _check_other_vms(machine.name, [rule])
        if not fw.host_port_free(rule.host_port, rule.host_ip, rule.proto):
            current = provider.forwards()
            if rule in current:
                log(f"forward {rule.host_ip}:{rule.host_port} -> {rule.guest_port}/{rule.proto} already in place")
                return rule
            if not any(f.name == rule.name for f in current):  # busy, and not because of us
                fw.require_free(rule, neighbours=lambda: [(f"VM {machine.name!r}", current)])
    except PortInUse:
        if not auto_correct:
            raise
        port = fw.pick_free_port(rule.host_ip, rule.proto)
        log(f"Fixed port collision for {rule.guest_port} => {rule.host_port}. Now on port {port}.")
        rule = Forward(host_port=port, guest_port=rule.guest_port, proto=rule.proto, host_ip=rule.host_ip)
    provider.add_forward(rule)
    log(f"forwarding {rule.host_ip}:{rule.host_port} -> guest {rule.guest_port}/{rule.proto}")
    return rule


def unforward(machine: Machine, name: str, log: Log = _quiet) -> str:
    """``vm.unforward 8000``: remove the rule (named by ``unforward_name``)."""
    provider_for(machine).remove_forward(name)
    log(f"removed forward {name}")
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


def mount_all(machine: Machine, log: Log = _quiet, remount: bool = False, endpoint=None) -> Outcome:
    """Mount each profile mount with sshfs; problems become warnings so a running VM stays usable.

    ``endpoint``: the guest's (host, port) when the caller already knows it (saves a hypervisor query).
    """
    from . import sshfs

    out = Outcome()
    host, port = endpoint or provider_for(machine).ssh_endpoint()
    live = {str(m.local_dir): m for m in sshfs.list_mounts()}
    for m in machine.mounts:
        local = m.host.expanduser()
        current = live.get(str(local))
        try:
            if current and current.alive and not remount:
                out.kept.append(f"{m.guest} already mounted on {local}")
                continue
            if current and (remount or not current.alive):
                sshfs.remount(host, port, key_path(machine.name), known_hosts_path(machine.name),
                              m.guest, local)
                out.done.append(f"remounted {m.guest} on {local}")
                continue
            sshfs.mount(host, port, key_path(machine.name), known_hosts_path(machine.name), m.guest, local)
            out.done.append(f"mounted {m.guest} on {local}")
        except B2dkitError as exc:
            out.warnings.append(f"{m.guest} not mounted on {local}: {exc}")
    for line in out.done:
        log(line)
    return out


def unmount_all(machine: Machine, log: Log = _quiet) -> Outcome:
    from . import sshfs

    out = Outcome()
    wanted = {str(m.host.expanduser()) for m in machine.mounts}
    try:
        live = sshfs.list_mounts()
    except B2dkitError:
        return out
    for m in live:
        if str(m.local_dir) in wanted:
            sshfs.unmount(m.local_dir)
            out.done.append(f"unmounted {m.local_dir}")
            log(f"unmounted {m.local_dir}")
    return out
