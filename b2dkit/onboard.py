"""First day: from a bare laptop to a working dev VM in one re-runnable command.

Seven steps in order, then the summary.  Each step is the lifecycle's pair: its facts and
pure ``*_changes`` give a ``changes.Decision`` (what is in place, each Change in words), which a
dry run prints (``would: X``) and a real run applies with the function ``vm.*`` uses, printing
``done: X`` (docs/architecture.md, "Decide, then act").  So ``--dry-run`` prints exactly the
lines a real run prints as it applies them, for an existing VM too, a second run changes
nothing, and a run that failed (or was interrupted) at step N picks up at step N.  Nothing a
step finished is ever undone.
"""

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import doctor, lifecycle, machines, status
from . import forwards as fw
from .changes import Decision
from .errors import B2dkitError, ChecksFailed, GuestError, Interrupted
from .lifecycle import Outcome
from .profile import Profile

Log = Callable[[str], None]
STEPS = ("doctor", "iso", "remaster", "create", "start", "mounts", "summary")


@dataclass
class _Run:
    profile: Profile
    iso_path: Optional[lifecycle.PathLike]
    dry_run: bool
    log: Log
    confirm: doctor.Confirm
    plan: Outcome = field(default_factory=Outcome)
    source: Optional[Path] = None
    boot: Optional[Path] = None

    def did(self, text: str) -> None:
        self.plan.done.append(text)
        self.log(("would: " if self.dry_run else "done: ") + text)

    def had(self, text: str) -> None:
        self.plan.kept.append(text)
        self.log("already: " + text)


def _no(command: str) -> bool:
    return False


def onboard(profile: Profile, iso_path: Optional[lifecycle.PathLike] = None, dry_run: bool = False, log: Log = print,
            confirm: doctor.Confirm = _no) -> Outcome:
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


def _doctor(run: _Run) -> None:
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


def _show(run: _Run, decided: Decision) -> None:
    """A dry run's account of one step: what is in place, then exactly what a real run would change."""
    for text in decided.kept:
        run.had(text)
    for change in decided.changes:
        run.did(change.text)
    for text in decided.warnings:
        run.log(f"  warning: {text}")


def _applied(run: _Run, out: Outcome) -> None:
    """A real run's account: the lines the step's apply made, as it made them."""
    for text in out.kept:
        run.had(text)
    for text in out.done:
        run.did(text)


def _made(run: _Run, decided: Decision, make: Callable[[], Path]) -> Optional[Path]:
    """The ISO and remaster steps: one change (or none); made, then said with the same line."""
    _show(run, Decision(kept=decided.kept))
    if not decided.changes:
        return None
    made = None if run.dry_run else make()
    for change in decided.changes:
        run.did(change.done)
    return made


def _iso(run: _Run) -> None:
    found, text = lifecycle.source_iso_change(run.profile, run.iso_path)
    made = _made(run, lifecycle.present_or_made(found, text, "iso"),
                 lambda: lifecycle.source_iso(run.profile, run.iso_path))
    run.source = found or made


def _remaster(run: _Run) -> None:
    found, text = lifecycle.boot_iso_change(run.profile, run.source)
    made = _made(run, lifecycle.present_or_made(found, text, "remaster"), lambda: _remastered(run))
    run.boot = found or made


def _remastered(run: _Run) -> Path:
    assert run.source is not None  # a real run has the source from the ISO step
    return lifecycle.boot_iso(run.profile, run.source)


def _create(run: _Run) -> None:
    prof = run.profile
    if run.dry_run:
        _show(run, lifecycle.create_changes(lifecycle.vm_facts(prof), prof.memory, prof.cpus, prof.disk))
        return
    _applied(run, lifecycle.create(prof, iso_path=run.boot, start_vm=False, log=_quiet, remaster=False))


def _start(run: _Run) -> None:
    machine = _machine_or_none(run.profile.name)
    if run.dry_run:
        if machine is None:  # the create step would make it: it cannot run yet
            machine = lifecycle.machine_from_profile(run.profile)
            dirs = ", ".join(machine.persistent_dirs) or "no persistent dirs"
            run.did(f"start VM {machine.name}, wait for SSH, create {dirs} and set the clock")
            return
        _show(run, lifecycle.start_changes(machine))
        return
    assert machine is not None  # the create step made it
    started = time.monotonic()
    out = lifecycle.start(machine, log=_quiet, mount=False)
    _applied(run, out)
    if out.done:
        run.log(f"  (up in {time.monotonic() - started:.1f} s)")


def _mounts(run: _Run) -> None:
    if not run.profile.mounts:
        run.had("no mounts in this profile")
        return
    machine = _machine_or_none(run.profile.name)
    if run.dry_run:
        wanted = lifecycle.machine_from_profile(run.profile)  # the record the create step writes
        ssh = fw.ssh_forward(run.profile.forwards)
        endpoint = None if machine else ("127.0.0.1", None if ssh is None else ssh.host_port)
        facts = lifecycle.mount_facts(machine or wanted, endpoint)
        _show(run, lifecycle.mount_changes(wanted.mounts, facts))
        return
    assert machine is not None
    out = lifecycle.mount_all(machine, log=_quiet)
    _applied(run, out)
    if out.warnings:
        raise GuestError("; ".join(out.warnings))


def _summary(run: _Run) -> None:
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
        run.log(f"  folder   {m['host']} <-> VM {m['guest']}: {status.mount_state(m)}")
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


def _quiet(_line: str) -> None:
    pass


def _machine_or_none(name: str) -> Optional[machines.Machine]:
    try:
        return machines.load(name)
    except B2dkitError:
        return None
