"""``onboard`` and ``doctor``: the new hire's first-day command and its pre-flight check."""

import sys

from .. import doctor as checks
from .. import onboard as flow
from .. import profile as profiles
from ..errors import ChecksFailed, InputError
from ._base import say, task

PROFILE_HELP = "profile name in profiles/ or a path to a YAML file"


@task(
    help={
        "profile": PROFILE_HELP,
        "provider": "override the profile's hypervisor: virtualbox or qemu",
        "name": "override the profile's VM name",
        "iso": "use this local boot2docker.iso instead of downloading the profile's",
        "dry_run": "print what would be done and what is already in place; change nothing",
        "yes": "do not ask before creating the VM",
    },
    auto_shortflags=False,
)
def onboard(c, profile="default", provider=None, name=None, iso=None, dry_run=False, yes=False):
    """Set up everything for a profile: checks, ISO, remaster, VM, SSH, folders. Safe to re-run."""
    prof = profiles.load(profile, provider=provider, name=name)
    if not (yes or dry_run) and sys.stdin.isatty():
        answer = input(
            f"Set up VM {prof.name} on {prof.provider} ({prof.memory} MB, {prof.cpus} CPU, {prof.disk} MB disk)? [Y/n] "
        ).strip().lower()
        if answer not in ("", "y", "yes"):
            raise InputError("onboarding cancelled; nothing was changed")
    flow.onboard(prof, iso_path=iso, dry_run=dry_run, log=say)


@task(
    help={"profile": PROFILE_HELP, "provider": "check for this hypervisor instead of the profile's",
          "name": "override the profile's VM name"},
    auto_shortflags=False,
)
def doctor(c, profile="default", provider=None, name=None):
    """Check this machine for what the profile needs, with the install command for each missing piece."""
    prof = profiles.load(profile, provider=provider, name=name)
    results = checks.run(prof)
    for check in results:
        say(check.line())
    failed = [r.name for r in results if not r.ok]
    if failed:
        raise ChecksFailed(f"{len(failed)} check(s) failed: {', '.join(failed)}")
    say("all good")
