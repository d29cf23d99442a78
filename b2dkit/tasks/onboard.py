"""``onboard`` and ``doctor``: the new hire's first-day command and its pre-flight check."""

import os
import sys
from typing import Callable, Optional

from invoke import Context

from .. import doctor as checks
from .. import jsonout
from .. import onboard as flow
from .. import profile as profiles
from ..errors import ChecksFailed, InputError
from ..paths import StrPath
from ._base import print_json, say, task

PROFILE_HELP = "profile name in profiles/ or a path to a YAML file"


def install_consent(yes: bool) -> Callable[[str], bool]:
    """The answer to "install the missing packages with COMMAND?": --yes, else ask on a terminal, else no."""

    def confirm(command: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            return False
        answer = input(f"Install what this profile needs?\n  {command}\n[Y/n] ").strip().lower()
        return answer in ("", "y", "yes")

    return confirm


@task(
    help={
        "profile": PROFILE_HELP,
        "provider": "override the profile's hypervisor: virtualbox or qemu",
        "name": "override the profile's VM name",
        "iso": "use this local boot2docker.iso instead of downloading the profile's",
        "dry_run": "print what would be done and what is already in place; change nothing",
        "yes": "do not ask before creating the VM or installing the packages the profile needs",
        "bundle": "write OUT.tar with the profile chain, its ISO and its image tarballs for an offline onboarding;"
                  " no VM is made",
        "from_bundle": "onboard from IN.tar (made with --bundle): checked by digest, no network needed",
    },
    auto_shortflags=False,
)
def onboard(
    c: Context,
    profile: str = "default",
    provider: Optional[str] = None,
    name: Optional[str] = None,
    iso: Optional[StrPath] = None,  # a str from the command line; a bundle's ISO is a Path
    dry_run: bool = False,
    yes: bool = False,
    bundle: Optional[str] = None,
    from_bundle: Optional[str] = None,
) -> None:
    """Set up everything for a profile: checks, ISO, remaster, VM, SSH, folders. Safe to re-run."""
    if bundle and from_bundle:
        raise InputError("give --bundle (to write one) or --from-bundle (to use one), not both")
    if bundle or from_bundle:
        from .. import bundle as bundles  # ruamel and the downloader: only for bundles
    if bundle:
        bundles.create(profile, bundle, iso_path=None if iso is None else os.fspath(iso), log=say)
        return
    if from_bundle:
        unpacked = bundles.unpack(from_bundle, log=say)
        profile = str(unpacked.profile)
    prof = profiles.load(profile, provider=provider, name=name)
    if from_bundle and not iso:
        iso = bundles.iso_override(unpacked, prof)
    if not (yes or dry_run) and sys.stdin.isatty():
        answer = input(
            f"Set up VM {prof.name} on {prof.provider} ({prof.memory} MB, {prof.cpus} CPU, {prof.disk} MB disk)? [Y/n] "
        ).strip().lower()
        if answer not in ("", "y", "yes"):
            raise InputError("onboarding cancelled; nothing was changed")
    flow.onboard(prof, iso_path=None if iso is None else os.fspath(iso), dry_run=dry_run, log=say,
                 confirm=install_consent(yes))


@task(
    help={"profile": PROFILE_HELP, "provider": "check for this hypervisor instead of the profile's",
          "name": "override the profile's VM name", "json": "machine-readable output (the exit code is the same)",
          "fix": "offer to install what is missing (shows the command, asks [Y/n]), then check again",
          "yes": "with --fix: install without asking"},
    auto_shortflags=False,
)
def doctor(c: Context, profile: str = "default", provider: Optional[str] = None, name: Optional[str] = None,
           json: bool = False, fix: bool = False, yes: bool = False) -> None:
    """Check this machine for what the profile needs, with the install command for each missing piece."""
    if json and fix:
        raise InputError("--json and --fix do not go together: --fix talks to you")
    prof = profiles.load(profile, provider=provider, name=name)
    results = checks.run(prof)
    if json:
        print_json(jsonout.doctor(prof, results))
    for check in results if not json else ():
        say(check.line())
    for line in checks.install_lines(results) if not (json or fix) else ():
        say(line)
    if fix:
        results = checks.fix(prof, results, install_consent(yes), log=say)
    failed = [r.name for r in results if not r.ok]
    if failed:
        raise ChecksFailed(f"{len(failed)} check(s) failed: {', '.join(failed)}")
    if not json:
        say("all good")
