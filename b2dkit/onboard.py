"""First day: from a bare laptop to a working dev VM in one re-runnable command.

Seven steps in order, then the summary.  Each step first decides (the lifecycle's
``*_change``/``create_changes`` read what exists and say what is missing, in words), then
acts only on what it decided, so ``--dry-run`` prints exactly the lines a real run prints
as it applies them, a second run changes nothing, and a run that failed (or was
interrupted) at step N picks up at step N.  Nothing a step finished is ever undone.
"""

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import doctor, lifecycle, machines, status
from . import forwards as fw
from .errors import B2dkitError, ChecksFailed, GuestError, Interrupted
from .hypervisors.base import VMState
from .lifecycle import Outcome
from .profile import Profile

Log = Callable[[str], None]
STEPS = ("doctor", "iso", "remaster", "create", "start", "mounts", "summary")


@dataclass
class _Run:
    profile: Profile
    iso_path: Optional[str]
    dry_run: bool
    log: Log
    confirm: doctor.Confirm
    plan: Outcome = field(default_factory=Outcome)
    source: Optional[Path] = None
    boot: Optional[Path] = None

    def did(self, text):
        self.plan.done.append(text)
        self.log(("would: " if self.dry_run else "done: ") + text)

    def had(self, text):
        self.plan.kept.append(text)
        self.log("already: " + text)


def _no(command: str) -> bool:
    return False


def onboard(profile, iso_path=None, dry_run=False, log: Log = print, confirm: doctor.Confirm = _no) -> Outcome:
    """``confirm(command)``: may the missing packages be installed with this command? (--yes, or asked)."""
    run = _Run(profile=profile, iso_path=iso_path, dry_run=dry_run, log=log, confirm=confirm)
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
            if isinstance(exc, (Interrupted, ChecksFailed)):
                raise
            exc.message = f"step {number} ({name}) failed: {exc.message}"
            exc.hint = (exc.hint + "; " if exc.hint else "") + "fix it and re-run: finished steps are kept"
            raise
    return run.plan


# -- the steps ----------------------------------------------------------------------------------


def _doctor(run: _Run):
    checks = doctor.run(run.profile, iso_path=run.iso_path)
    for check in checks:
        run.log("  " + check.line().replace("\n", "\n  "))
    for line in doctor.install_lines(checks):
        run.log("  " + line)
    checks = doctor.fix(run.profile, checks, run.confirm, log=lambda line: run.log("  " + line),
                        iso_path=run.iso_path, dry_run=run.dry_run)
    failed = [c for c in checks if not c.ok]
    if failed and not run.dry_run:
        raise ChecksFailed(
            f"{len(failed)} check(s) failed: {', '.join(c.name for c in failed)}",
            hint="install what is listed above, then re-run",
        )


def _decided(run: _Run, found: Optional[Path], text: str, act: Callable[[], Path]) -> Optional[Path]:
    """One decided step: what is there is kept; what is missing is made (unless a dry run), same line."""
    if found is not None:
        run.had(text)
        return found
    made = None if run.dry_run else act()
    run.did(text)
    return made


def _iso(run: _Run):
    found, text = lifecycle.source_iso_change(run.profile, run.iso_path)
    run.source = _decided(run, found, text, lambda: lifecycle.source_iso(run.profile, run.iso_path))


def _remaster(run: _Run):
    found, text = lifecycle.boot_iso_change(run.profile, run.source)
    run.boot = _decided(run, found, text, lambda: _remastered(run))


def _remastered(run: _Run) -> Path:
    assert run.source is not None  # a real run has the source from the ISO step
    return lifecycle.boot_iso(run.profile, run.source)


def _create(run: _Run):
    prof = run.profile
    machine = _machine_or_none(prof.name)
    state = lifecycle.provider_for(machine).state() if machine else VMState.ABSENT
    if run.dry_run:
        changes = lifecycle.create_changes(prof) if state != VMState.ABSENT else None
        if changes is None:
            run.did(f"create VM {prof.name} on {prof.provider} ({prof.memory} MB, {prof.cpus} CPU, "
                    f"{prof.disk} MB persistent disk)")
            return
        run.had(f"VM {prof.name} exists ({state})")
        for line in changes:
            run.did(line)
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
    if any(f["guest_port"] == fw.DOCKER_TLS_PORT for f in info["forwards"]):
        run.log(f"  docker   eval \"$({cli} vm.env)\"   then: docker run --rm b2dkit/busybox date")
        run.log("           containers get the VM's time zone with -v /etc/localtime:/etc/localtime:ro")
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
