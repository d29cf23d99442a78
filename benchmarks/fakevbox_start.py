"""What one fake VBoxManage call costs, against a bare interpreter start measured in the same run.

The VirtualBox provider and task tests run once per fake version, and every VBoxManage call
is a new Python process, so the fake's start-up is most of their time.
Run: python benchmarks/fakevbox_start.py [CALLS]
"""

import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import fakevbox  # noqa: E402


def per_call(argv, env, n):
    """CPU time (user + system, ms) of one run of ``argv``, averaged: on a busy machine the
    wall time mostly measures the other processes."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(n):
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000 / n


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    with tempfile.TemporaryDirectory() as tmp:
        fake = fakevbox.install(Path(tmp))
        env = fake.env()
        subprocess.run([str(fake.exe), "list", "vms"], env=env, check=True, capture_output=True)  # warm
        base = per_call([sys.executable, "-S", "-c", "pass"], env, n)
        rows = [
            ("python -S -c pass (baseline)", base),
            ("VBoxManage list vms", per_call([str(fake.exe), "list", "vms"], env, n)),
            ("VBoxManage showvminfo (not found)",
             per_call([str(fake.exe), "showvminfo", "x", "--machinereadable"], env, n)),
        ]
    print(f"CPU per call, mean of {n}, PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}")
    for label, ms in rows:
        print(f"{label:40s} {ms:7.1f} ms  ×{ms / base:4.1f}")


if __name__ == "__main__":
    main()
