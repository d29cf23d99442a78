"""How long does one TAB take?  ``b2dkit --complete`` against the floor of starting b2dkit at all.

Each TAB runs the completer in a fresh process, so its cost is interpreter start + task-layer
import + the lookup.  Timed in the same run, ABAB order, median of N rounds each:

    python -c pass                       interpreter start
    b2dkit --version                     interpreter + b2dkit's task layer import (the baseline)
    complete task names                  ``b2dkit vm.<TAB>``
    complete --profile values            ``b2dkit onboard --profile=<TAB>`` (reads every profile's name)
    complete --name values               ``b2dkit vm.status --name <TAB>`` (reads the VM records)

Ratios are against ``b2dkit --version``: a ratio near 1 means the completer adds next to nothing.

Run: python benchmarks/completion.py [--rounds 15]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(argv, env) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    py = sys.executable
    b2dkit = [py, "-m", "b2dkit"]
    cases = {
        "python -c pass": [py, "-c", "pass"],
        "b2dkit --version": [*b2dkit, "--version"],
        "complete task names": [*b2dkit, "--complete", "--", "b2dkit vm."],
        "complete --profile values": [*b2dkit, "--complete", "--", "b2dkit onboard --profile ''"],
        "complete --name values": [*b2dkit, "--complete", "--", "b2dkit vm.status --name ''"],
    }
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, B2DKIT_HOME=home, PYTHONPATH=str(REPO))
        times = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, argv in cases.items():  # interleaved, so machine load hits every case alike
                times[name].append(timed(argv, env))
    base = statistics.median(times["b2dkit --version"])
    print(f"{'case':<28} {'median s':>9} {'vs --version':>13}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<28} {median:9.3f} {median / base:12.2f}x")


if __name__ == "__main__":
    main()
