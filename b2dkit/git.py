"""The only place that runs ``git``: fetch one ref of a repository and read files at a commit.

Profiles given as ``git+URL@REF:path.yaml`` need a single file at a single commit, so the
repository is fetched shallowly (``--depth 1``: one commit's tree, no history) into a bare
cache repository that later fetches reuse.  Git never prompts (``GIT_TERMINAL_PROMPT=0``):
credentials come from the user's own git set-up (credential helper, ssh agent), never from
b2dkit's command line.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional

from .errors import DownloadError, InputError, ToolMissing
from .paths import StrPath

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
TIMEOUT = 120.0


def _run(args: List[str], cwd: Optional[StrPath] = None, timeout: float = TIMEOUT) -> bytes:
    exe = shutil.which("git")
    if exe is None:
        raise ToolMissing("git is not installed, and this profile is a git reference",
                          hint="install git (e.g. sudo apt-get install git), or give a profile file")
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="", SSH_ASKPASS="", LC_ALL="C")
    try:
        proc = subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DownloadError(f"git {args[0]} took longer than {timeout:.0f} s", hint="check the network") from None
    if proc.returncode != 0:
        raise _GitFailed(_last_line(proc.stderr) or f"git {args[0]} exited with {proc.returncode}")
    return proc.stdout


class _GitFailed(Exception):
    """git said no; callers turn this into a message that names the reference."""


def _last_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    meaningful = [line for line in lines if line.startswith(("fatal:", "error:"))]
    return (meaningful or lines or [""])[-1][:200]


def is_commit(ref: str) -> bool:
    return bool(_COMMIT.match(ref))


def _ensure_repo(repo: Path) -> None:
    if not (repo / "HEAD").exists():
        repo.mkdir(parents=True, exist_ok=True)
        _run(["init", "--bare", "--quiet", str(repo)])


def has_commit(repo: Path, commit: str) -> bool:
    if not (repo / "HEAD").exists():
        return False
    try:
        _run(["cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo)
        return True
    except _GitFailed:
        return False


def fetch(repo: Path, url: str, ref: str) -> str:
    """Fetch ``ref`` (tag, branch or commit id) of ``url`` into the bare ``repo``; its commit id."""
    _ensure_repo(repo)
    try:
        _run(["fetch", "--quiet", "--depth", "1", "--no-tags", "--", url, ref], cwd=repo)
        return _run(["rev-parse", "--verify", "FETCH_HEAD^{commit}"], cwd=repo).decode().strip()
    except _GitFailed as exc:
        raise DownloadError(f"cannot fetch {ref!r} from {url}: {exc}",
                            hint="check the URL, the tag and your git access to that repository") from None


def show(repo: Path, commit: str, path: str) -> bytes:
    """The bytes of ``path`` at ``commit``."""
    try:
        kind = _run(["cat-file", "-t", f"{commit}:{path}"], cwd=repo).decode().strip()
    except _GitFailed:
        raise InputError(f"{path} does not exist at commit {commit[:12]}") from None
    if kind != "blob":
        raise InputError(f"{path} at commit {commit[:12]} is a {kind}, not a file")
    return _run(["cat-file", "blob", f"{commit}:{path}"], cwd=repo)
