"""First day: from a bare laptop to a working dev VM in one re-runnable command.

Seven steps in order.  Each first looks at whether its result already exists and skips
the work if so, so a second run changes nothing and a run that failed (or was
interrupted) at step N picks up at step N.  Nothing a step finished is ever undone.
"""

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

from . import doctor, lifecycle, machines, status
from .errors import B2dkitError, GuestError
from .providers import VMState

Log = Callable[[str], None]
STEPS = ("doctor", "iso", "remaster", "create", "start", "mounts", "summary")


class Interrupted(B2dkitError):
    exit_code = 130


class DoctorFailed(B2dkitError):
    exit_code = 3


@dataclass
class Plan:
    """One line per step: what was (or would be) done, and what was already in place."""

    done: List[str] = field(default_factory=list)
    kept: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)


@dataclass
class _Run:
    profile: object
    iso_path: Optional[str]
    dry_run: bool
    log: Log
    plan: Plan = field(default_factory=Plan)
    source: Optional[Path] = None
    boot: Optional[Path] = None

    def did(self, text):
        self.plan.done.append(text)
        self.log(("would: " if self.dry_run else "done: ") + text)

    def had(self, text):
        self.plan.kept.append(text)
        self.log("already: " + text)


def onboard(profile, iso_path=None, dry_run=False, log: Log = print) -> Plan:
    run = _Run(profile=profile, iso_path=iso_path, dry_run=dry_run, log=log)
    steps = [_doctor, _iso, _remaster, _create, _start, _mounts, _summary]
    for number, (name, step) in enumerate(zip(STEPS, steps), start=1):
        log(f"[{number}/{len(STEPS)}] {name}")
        try:
            step(run)
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted during step {number} ({name}); everything finished before it is kept",
                hint="re-run the same command to continue",
            ) from None
        except B2dkitError as exc:
            if isinstance(exc, (Interrupted, DoctorFailed)):
                raise
            exc.message = f"step {number} ({name}) failed: {exc.message}"
            exc.hint = (exc.hint + "; " if exc.hint else "") + "fix it and re-run: finished steps are kept"
            raise
    return run.plan


# -- the steps ----------------------------------------------------------------------------------


def _doctor(run: _Run):
    checks = doctor.run(run.profile)
    for check in checks:
        run.log("  " + check.line().replace("\n", "\n  "))
    failed = [c for c in checks if not c.ok]
    if failed and not run.dry_run:
        raise DoctorFailed(
            f"{len(failed)} check(s) failed: {', '.join(c.name for c in failed)}",
            hint="install what is listed above, then re-run",
        )


def _iso(run: _Run):
    prof = run.profile
    local = run.iso_path or prof.iso.path
    if local:
        run.source = lifecycle.source_iso(prof, run.iso_path)
        run.had(f"using local ISO {run.source}")
        return
    if getattr(prof.iso, "build", None):
        _build_guest(run)
        return
    from . import download

    sha256 = prof.iso.require_sha256()
    cached = download.cache_path(sha256)
    if cached.is_file():
        run.source = cached
        run.had(f"ISO {cached.name} is in the cache (sha256 verified when stored)")
        return
    if run.dry_run:
        run.did(f"download {prof.iso.urls[0]} and verify sha256 {sha256[:12]}…")
        return
    result = download.Downloader().fetch(list(prof.iso.urls), sha256)
    run.source = result.path
    run.did(f"downloaded and verified {result.path.name} ({result.bytes_fetched >> 20} MB fetched)")


def _build_guest(run: _Run):
    """The demo profile boots b2dkit's own boot2docker-compatible guest, built from Debian packages."""
    flavour = run.profile.iso.build
    iso = lifecycle.guest_builder().cached(flavour=flavour)
    if iso:
        run.source = iso
        run.had(f"guest ISO is built ({iso})")
        return
    if run.dry_run:
        run.did("build the boot2docker-compatible guest ISO from Debian packages")
        return
    run.source = lifecycle.build_guest(flavour=flavour)
    run.did(f"built the guest ISO {run.source}")


def _remaster(run: _Run):
    codes = run.profile.boot_code_args()
    if not codes:
        run.had("no boot codes to add; the VM boots the ISO as it is")
        run.boot = run.source
        return
    if run.source is None:  # dry run before the download
        run.did(f"remaster the ISO with {' '.join(codes)}")
        return
    from . import isocache

    hit = isocache.lookup(run.source, codes)
    if hit:
        run.boot = hit
        run.had(f"remastered ISO with {' '.join(codes)} is cached")
        return
    if run.dry_run:
        run.did(f"remaster the ISO with {' '.join(codes)}")
        return
    run.boot = lifecycle.boot_iso(run.profile, run.source)
    run.did(f"remastered the ISO with {' '.join(codes)}")


def _create(run: _Run):
    prof = run.profile
    machine = _machine_or_none(prof.name)
    state = lifecycle.provider_for(machine).state() if machine else VMState.ABSENT
    if run.dry_run:
        if state == VMState.ABSENT:
            run.did(f"create VM {prof.name} on {prof.provider} ({prof.memory} MB, {prof.cpus} CPU, "
                    f"{prof.disk} MB persistent disk)")
        else:
            run.had(f"VM {prof.name} exists ({state}); settings would be converged to the profile")
        return
    out = lifecycle.create(prof, iso_path=run.boot, start_vm=False, log=lambda _m: None, remaster=False)
    for line in out.done:
        run.did(line)
    for line in out.kept:
        run.had(line)


def _start(run: _Run):
    machine = _machine_or_none(run.profile.name)
    if run.dry_run:
        running = machine and lifecycle.provider_for(machine).state() == VMState.RUNNING
        if running:
            run.had(f"VM {run.profile.name} is running; SSH, persistent dirs and clock would be checked")
        else:
            run.did(f"start VM {run.profile.name}, wait for SSH, create {', '.join(run.profile.persistent_dirs)}"
                    " and set the clock")
        return
    started = time.monotonic()
    out = lifecycle.start(machine, log=lambda _m: None, mount=False)
    for line in out.done:
        run.did(line)
    for line in out.kept:
        run.had(line)
    if out.done:
        run.log(f"  (up in {time.monotonic() - started:.1f} s)")


def _mounts(run: _Run):
    if not run.profile.mounts:
        run.had("no mounts in this profile")
        return
    machine = _machine_or_none(run.profile.name)
    if run.dry_run:
        from . import sshfs

        for m in run.profile.mounts:
            current = sshfs.find_mount(m.host)
            if current and current.alive:
                run.had(f"{m.guest} is mounted on {m.host}")
            else:
                run.did(f"mount {m.guest} on {m.host} with sshfs")
        return
    out = lifecycle.mount_all(machine, log=lambda _m: None)
    for line in out.done:
        run.did(line)
    for line in out.kept:
        run.had(line)
    if out.warnings:
        raise GuestError("; ".join(out.warnings))


def _summary(run: _Run):
    if run.dry_run:
        run.log("dry run: nothing was changed")
        return
    machine = machines.load(run.profile.name)
    info = status.collect(machine, drift=False)
    run.log("")
    run.log(f"Your dev VM {machine.name} is ready ({machine.provider}).")
    run.log(f"  changed this run: {len(run.plan.done)}   already in place: {len(run.plan.kept)}")
    for f in info["forwards"]:
        run.log(f"  forward  {f['host_ip']}:{f['host_port']} -> VM port {f['guest_port']}/{f['proto']}")
    for m in info["mounts"]:
        run.log(f"  folder   {m['host']} <-> VM {m['guest']} ({m['status']})")
    cli = _cli()
    run.log(f"  ssh      {cli} vm.ssh      (or: {cli} vm.ssh -c 'date')")
    for line in status.docker_env(machine):
        if line.startswith("export DOCKER_HOST"):
            # An ssh:// host also needs the VM key in the agent: vm.env prints every line it takes.
            run.log(f"  docker   {line}   (all of it: eval \"$({cli} vm.env)\")")
    run.log(f"Next: put your code in the mounted folder, `{cli} vm.forward PORT` for new services,")
    run.log(f"      `{cli} vm.status` to check on it, `{cli} vm.stop` at the end of the day.")


def _cli() -> str:
    """How the user can call b2dkit again: its name if on PATH, else the path onboard.sh installed."""
    found = shutil.which("b2dkit")
    argv0 = Path(sys.argv[0])
    if found or argv0.name != "b2dkit":
        return "b2dkit"
    return str(argv0)


def _machine_or_none(name):
    try:
        return machines.load(name)
    except B2dkitError:
        return None
