"""``profile.*``: see which VM a profile gives you, and check a profile file before sharing it."""

from typing import Dict, List, Optional

import yaml
from invoke import Context

from .. import bootcfg, jsonout
from .. import profile as profiles
from ._base import print_json, say, task

# Every task that takes --profile also takes --provider and --name; reuse these help texts.
PROFILE_HELP = {
    "profile": "profile name in profiles/ (or $B2DKIT_PROFILES) or a path to a .yaml file (default: default)",
    "provider": "override the profile's provider: virtualbox, qemu or auto",
    "name": "override the profile's VM name",
}


@task(help={**PROFILE_HELP, "json": "print JSON instead of YAML"})
def show(
    c: Context,
    profile: str = profiles.DEFAULT_PROFILE,
    provider: Optional[str] = None,
    name: Optional[str] = None,
    json: bool = False,
) -> None:
    """Print a profile as b2dkit resolves it (extends merged, defaults filled in)."""
    resolved = profiles.load(profile, provider=provider, name=name)
    if json:
        print_json(jsonout.profile_show(resolved))
        return
    chain = " <- ".join(profiles.display_path(path) for path in resolved.chain)
    say(f"# profile {resolved.profile_name}: {chain}")
    tz = resolved.boot_codes.get("tz")
    if tz:
        say(f"# tz {tz} is {bootcfg.tz_utc_offset(tz)}")
    say(yaml.safe_dump(resolved.to_dict(), sort_keys=False, allow_unicode=True).rstrip())


@task(help={"path": "the profile file to validate (its extends chain is checked too)"})
def check(c: Context, path: str) -> None:
    """Validate a profile file; print ok or the first problem, with file and key."""
    resolved = profiles.check_file(path)
    parents = [profiles.display_path(path) for path in resolved.chain[1:]]
    extends = f", extends {' <- '.join(parents)}" if parents else ""
    say(f"ok: {path}: VM {resolved.name!r} on {resolved.provider}{extends}")


@task(name="list", help={"json": "print JSON: name, path and description of each profile"})
def list_(c: Context, json: bool = False) -> None:
    """List the profiles --profile can name, and where each comes from."""
    rows: List[Dict[str, str]] = []
    for name, path in profiles.available():
        try:
            description = profiles.load(path).description
        except profiles.ProfileError as exc:
            description = f"(invalid: {exc})"
        rows.append({"name": name, "path": str(path), "description": description})
    if json:
        print_json(rows)
        return
    width = max((len(row["name"]) for row in rows), default=0)
    for row in rows:
        say(f"{row['name']:<{width}}  {row['description']}  [{row['path']}]")
