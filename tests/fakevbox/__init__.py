"""Test helpers around the fake VBoxManage in ``cli.py``: install it first on PATH, read its log.

The executable is a two-line script whose shebang is this interpreter (the venv's), so the
fake runs with the same Python as the tests and needs nothing installed.
"""

import json
import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


class FakeVBox:
    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.bin = root / "bin"
        self.exe = self.bin / "VBoxManage"

    def env(self) -> dict:
        env = dict(os.environ)
        env["FAKEVBOX_HOME"] = str(self.home)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env

    # -- the call log ----------------------------------------------------------------------
    def calls(self):
        log = self.home / "calls.log"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line]

    def reset_calls(self):
        (self.home / "calls.log").write_text("")

    def subcommands(self):
        return [argv[0] if argv else "" for argv in self.calls()]

    # -- state -----------------------------------------------------------------------------
    def state(self) -> dict:
        path = self.home / "state.json"
        return json.loads(path.read_text()) if path.exists() else {"machines": {}}

    def machine(self, name):
        return self.state()["machines"].get(name)


def install(root: Path, monkeypatch=None) -> FakeVBox:
    """Create the fake under ``root``; with ``monkeypatch``, put it first on PATH for this test."""
    import tempfile  # here, not at the top: the fake imports this package on every call

    fake = FakeVBox(Path(root))
    pycache = Path(tempfile.gettempdir()) / f"fakevbox-pycache-{os.getuid()}"
    fake.bin.mkdir(parents=True, exist_ok=True)
    fake.home.mkdir(parents=True, exist_ok=True)
    fake.exe.write_text(
        f"#!{sys.executable} -S\n"  # -S: the fake needs no site-packages, and starts faster
        "import sys\n"
        # Every call is a new process: with PYTHONDONTWRITEBYTECODE set (as in CI and here)
        # it would compile cli.py on every call, a third of its start-up. Its bytecode goes
        # to a per-user cache outside the repo instead (benchmarks/fakevbox_start.py).
        "sys.dont_write_bytecode = False\n"
        f"sys.pycache_prefix = {str(pycache)!r}\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from fakevbox.cli import main\n"
        "sys.exit(main())\n"
    )
    fake.exe.chmod(0o755)
    if monkeypatch is not None:
        monkeypatch.setenv("FAKEVBOX_HOME", str(fake.home))
        monkeypatch.setenv("PATH", f"{fake.bin}{os.pathsep}{os.environ.get('PATH', '')}")
    return fake


def read_disk(path):
    """(metadata, first 4 KiB of the stream) of a VMDK the fake's convertfromraw wrote."""
    data = Path(path).read_bytes()
    magic, meta, header = data.split(b"\n", 2)
    if magic != b"# fakevbox VMDK":
        raise ValueError(f"{path} was not written by fakevbox")
    return json.loads(meta), header
