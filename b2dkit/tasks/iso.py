"""ISO tasks: remaster boot2docker.iso with boot codes, inspect an ISO, manage the ISO cache."""

from typing import List, Optional

from invoke import Context, Exit

from .. import bootcfg, isocache
from .. import iso as isolib
from .. import profile as profiles
from ._base import print_json, say, task


@task(
    iterable=["boot_code", "remove_code"],
    auto_shortflags=False,
    help={
        "src": "boot2docker ISO to read (required; never modified)",
        "out": "where to write the remastered ISO (default: the user cache, path printed)",
        "boot_code": "kernel boot code to set, e.g. tz=CST-8 or noembed (repeatable)",
        "remove_code": "boot code key to remove, e.g. tz (repeatable)",
        "label": "edit only this isolinux label (default: every label that boots Linux)",
        "rewrite": "rebuild the whole image even if the config fits in place (slower; for debugging)",
    },
)
def remaster(
    c: Context,
    src: Optional[str] = None,
    out: Optional[str] = None,
    boot_code: Optional[List[str]] = None,
    remove_code: Optional[List[str]] = None,
    label: Optional[str] = None,
    rewrite: bool = False,
) -> None:
    """Write a copy of a boot2docker ISO with kernel boot codes set (tz=CST-8 ...)."""
    if not src:
        raise Exit("b2dkit: error: give the ISO to read with --src PATH", code=2)
    codes, removed = boot_code or [], remove_code or []
    if not codes and not removed:
        raise Exit(
            "b2dkit: error: nothing to change: give --boot-code (e.g. tz=CST-8) or --remove-code", code=2
        )
    if out is None:
        if rewrite:
            raise Exit("b2dkit: error: --rewrite needs --out (the cache always uses the fast path)", code=2)
        path = isocache.cached_remaster(src, codes, removed, label)
        say(str(path))
        return
    result = isolib.remaster(src, out, codes, removed, label, rewrite=rewrite)
    for name, append in result.labels:
        say(f"{result.cfg_path} [{name}] append {append}")
    say(f"wrote {result.out} ({result.method})")


@task(help={"iso": "the ISO image to inspect", "json": "print machine-readable JSON"})
def show(c: Context, iso: str, json: bool = False) -> None:
    """Show an ISO's volume id, boot entries, boot info table, isohybrid MBR and boot labels."""
    info = isolib.show(iso)
    if json:
        print_json(info)
        return
    say(f"{info['path']}: volume id {info['volume_id']!r}, {info['size']} bytes")
    say(f"  Rock Ridge: {info['rock_ridge'] or 'no'}   Joliet: {'yes' if info['joliet'] else 'no'}")
    torito = info["el_torito"]
    if not torito["entries"]:
        say("  El Torito: none (not bootable from CD)")
    else:
        say(f"  El Torito catalog: {torito['catalog']['path']} (LBA {torito['catalog']['lba']})")
    for entry in torito["entries"]:
        table = entry["boot_info_table"]
        bit = "none" if table is None else ("valid" if table["valid"] else "STALE")
        say(
            f"  boot image: {entry['path']} LBA {entry['lba']} {entry['platform']} "
            f"emulation={entry['emulation']} load={entry['sector_count']} boot-info-table={bit}"
        )
    hybrid = info["isohybrid"]
    if hybrid is None:
        say("  isohybrid MBR: none (boots as CD only)")
    else:
        state = "ok" if hybrid["rba_ok"] and hybrid["signature_ok"] else "BROKEN"
        say(f"  isohybrid MBR: {state} (heads {hybrid['heads']}, sectors {hybrid['sectors']})")
    cfg = info["cfg"]
    if cfg is None:
        say("  isolinux config: not found")
        return
    say(f"  isolinux config: {cfg['path']}" + (f" (default {cfg['default']})" if cfg["default"] else ""))
    for lb in cfg["labels"]:
        say(f"    label {lb['name']}: kernel {lb['kernel']}")
        say(f"      append {lb['append'] if lb['append'] is not None else '(none)'}")
        tz = next((t[3:] for t in (lb["append"] or "").split() if t.startswith("tz=")), None)
        if tz:
            try:
                say(f"      tz={tz} is {bootcfg.tz_utc_offset(tz)}")
            except Exception:  # an odd tz in somebody's ISO is worth showing, not failing on
                say(f"      tz={tz} is not a POSIX TZ string")


@task(name="cache", help={"list": "list cached ISOs (the default)", "clear": "delete every cached ISO"})
def cache(c: Context, list: bool = False, clear: bool = False) -> None:
    """List or clear cached source and remastered ISOs."""
    if clear:
        waiting = lambda folder: say(f"waiting for the download or remaster writing in {folder} to finish…")  # noqa: E731
        say(f"removed {isocache.clear_cache(on_wait=waiting)} cached ISO(s)")
        return
    rows = isocache.list_cache()
    if not rows:
        say("the ISO cache is empty")
        return
    for row in rows:
        codes = " ".join(row.get("codes") or [])
        source = row.get("source") or {"partial": "(unfinished download; the next fetch resumes it)",
                                       "temp": "(left by a killed run; removed by the next write there)"}.get(
                                           row["type"], "?")
        size = f"{row['size'] / 1e6:.1f} MB"
        say(f"{row['type']:<10} {size:>9}  {row['key']}  {source}" + (f"  [{codes}]" if codes else ""))
    say(f"{len(rows)} file(s), {sum(r['size'] for r in rows) / 1e6:.1f} MB in {isocache.cache_dir()}")


@task(
    name="pin",
    auto_shortflags=False,
    help={
        "profile": "profile whose ISO to pin (a name or a .yaml path; default: default)",
        "url": "download this URL and pin it (default: the profile's iso.urls, tried in order)",
        "from_": "pin this local ISO file instead of downloading (hash only)",
        "dry_run": "fetch and check, show the change, but do not write the profile",
    },
)
def pin(
    c: Context, url: Optional[str] = None, profile: str = "default", from_: Optional[str] = None, dry_run: bool = False
) -> None:
    """Download (or hash) a boot2docker ISO, check it, and write its sha256 into the profile."""
    from .. import pin as pinlib  # requests, pycdlib, ruamel: imported by this task only

    planned = pinlib.plan(profile, url=url, from_path=from_, log=say)
    for line in planned.lines():
        say(line)
    if dry_run or not planned.edit.changed and planned.seed is None:
        if dry_run:
            say("dry run: the profile was not changed")
        return
    pinlib.apply(planned)
    if planned.edit.changed:
        name = profiles.display_path(planned.edit.path)
        say(f"pinned: {name} (review and commit it: git diff {name})")
