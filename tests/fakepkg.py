"""Fake package managers for tests: apt-get, dnf, brew, dpkg-query and sudo on a private PATH.

Each fake records its argv (one JSON list a line in ``log``) and "installs" a package by
marking it installed (what the fake dpkg-query then reports) and creating the programs
``provides`` lists for it as small executables in ``bin``. A bare machine is ``bin`` plus
links to the few real programs a test names. ``dpkg-query -W -f '${Depends}'`` of an
installed package asks the real dpkg-query (the guest build reads the real kernel's version).
"""

import json
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Dict, List, Optional

_MANAGER = r'''#!{python}
import json, os, sys
from pathlib import Path
root = Path({root!r})
with open(root / "log", "a") as fp:
    fp.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\n")
args = sys.argv[1:]
if os.environ.get("FAKEPKG_FAIL"):
    print("E: fake failure", file=sys.stderr)
    sys.exit(100)
if args[:1] != ["install"]:
    sys.exit(0)  # update, and anything else: nothing to do
provides = json.loads((root / "provides.json").read_text())
for name in [a for a in args[1:] if not a.startswith("-")]:
    (root / "state" / name.replace("/", "_")).write_text("installed\n")
    for program in provides.get(name, []):
        program, _, real = program.partition("=")
        path = root / "bin" / program
        if real:  # "installed" as the machine's real program (the e2e test boots with it)
            path.symlink_to(real)
            continue
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
'''

_DPKG_QUERY = r'''#!{python}
import json, os, re, subprocess, sys
from pathlib import Path
root = Path({root!r})
args = sys.argv[1:]
fmt = args[args.index("-f") + 1] if "-f" in args else "${{Package}}\t${{Version}}\n"
names = [a for a in args if not a.startswith("-") and a != fmt]
status = 0
for name in names:
    if not (root / "state" / name).exists():
        print(f"dpkg-query: no packages found matching {{name}}", file=sys.stderr)
        status = 1
        continue
    if fmt == "${{Depends}}" or {delegate!r}:
        sys.stdout.write(subprocess.run([{real!r}, "-W", "-f", fmt, name], capture_output=True, text=True).stdout)
        continue
    out = fmt.replace("${{Package}}", name).replace("${{Version}}", "1.0-fake")
    out = out.replace("${{db:Status-Status}}", "installed").replace("\\n", "\n")
    sys.stdout.write(out)
sys.exit(status)
'''

_SUDO = r'''#!{python}
import json, os, sys
from pathlib import Path
root = Path({root!r})
with open(root / "log", "a") as fp:
    fp.write(json.dumps(["sudo", *sys.argv[1:]]) + "\n")
os.execvp(sys.argv[1], sys.argv[1:])
'''


def _interpreter() -> str:
    return str(Path(getattr(sys, "_base_executable", sys.executable)).resolve())


class FakePackages:
    """A directory with fake package managers; ``bin`` goes on PATH."""

    def __init__(self, root: Path, provides: Optional[Dict[str, List[str]]] = None,
                 managers=("apt-get",), real=(), delegate=False):
        """``delegate``: an installed package is reported by the real dpkg-query (real versions)."""
        self.root = Path(root)
        self.bin = self.root / "bin"
        for sub in (self.bin, self.root / "state"):
            sub.mkdir(parents=True, exist_ok=True)
        (self.root / "provides.json").write_text(json.dumps(provides or {}))
        (self.root / "log").write_text("")
        for name in managers:
            self._script(name, _MANAGER)
        self._script("dpkg-query", _DPKG_QUERY, real=shutil.which("dpkg-query") or "/usr/bin/dpkg-query",
                     delegate=delegate)
        for name in real:  # the real programs a bare machine still has (python3, bash...)
            # python3: the interpreter itself, not a shim (pyenv's needs a full PATH).
            found = _interpreter() if name == "python3" else shutil.which(name)
            assert found, f"{name} must be installed on the test machine"
            (self.bin / name).symlink_to(found)

    def _script(self, name: str, template: str, **extra):
        path = self.bin / name
        path.write_text(template.format(python=sys.executable, root=str(self.root), **extra))
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def add_sudo(self):
        self._script("sudo", _SUDO)

    def calls(self) -> List[List[str]]:
        return [json.loads(line) for line in (self.root / "log").read_text().splitlines()]

    def installed(self) -> List[str]:
        return sorted(p.name for p in (self.root / "state").iterdir())

    def mark_installed(self, *names: str):
        for name in names:
            (self.root / "state" / name).write_text("installed\n")

    def env_path(self) -> str:
        return str(self.bin)


def bare_path(monkeypatch, fake: FakePackages) -> None:
    """PATH = the fake's bin only (a machine without the tools)."""
    monkeypatch.setenv("PATH", fake.env_path())


BINARIES = {"apt": "apt-get", "dnf": "dnf", "brew": "brew"}


def bare_machine(monkeypatch, root: Path, provides: Dict[str, List[str]], manager: str = "apt",
                 as_root: bool = True, apt_lists: bool = True, real=(), extra_path=()) -> FakePackages:
    """This process on a machine with one fake package manager and nothing b2dkit needs.

    ``as_root``: root (a bare container: no sudo on PATH) or a user with a (fake) sudo; brew
    is a user's and has no sudo. ``apt_lists``: apt has its package lists (else an empty
    /var/lib/apt/lists, as on a fresh image). ``extra_path``: directories kept after the fake
    one (a fake VBoxManage's, say).
    """
    from b2dkit import install, pkgmanager

    fake = FakePackages(root, provides=provides, managers=(BINARIES[manager],), real=real)
    if not as_root and manager != "brew":
        fake.add_sudo()
    monkeypatch.setenv("PATH", os.pathsep.join([fake.env_path(), *map(str, extra_path)]))
    lists = root / "apt-lists"
    lists.mkdir(exist_ok=True)
    if apt_lists:
        (lists / "deb.debian.org_dists_bookworm_main_binary-amd64_Packages").write_text("")
    monkeypatch.setattr(pkgmanager, "APT_LISTS", lists)
    monkeypatch.setattr(install, "as_root", lambda: as_root)
    return fake
