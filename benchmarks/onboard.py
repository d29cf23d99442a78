"""How long does ``b2dkit onboard`` take when everything is already in place?

Target (issue #5): a re-run that has nothing to do finishes in <= 2 s.  After one real
onboarding (QEMU, the demo profile with free host ports, in a temp HOME and B2DKIT_HOME),
this times, in the same run:

    python -c pass          interpreter start: the floor for any command
    b2dkit --version        interpreter + b2dkit's task layer import
    onboard (subprocess)    ``python -m b2dkit onboard --profile=P --yes``: what a user types
    onboard (in-process)    ``b2dkit.onboard.onboard(profile)``: the steps alone

and splits the in-process re-run by step (from the step headers' timestamps).  The VM is
destroyed (with its disk) at the end, whatever happened.

Run: PYTHONPATH=. python benchmarks/onboard.py [--rounds 5]
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
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from ports import free_port  # noqa: E402  (the tests' one: never the same port twice)

import qemuclean  # noqa: E402  (the clean-up the tests use)

TARGET = 2.0
VM = "bench-onboard"


def timed_process(argv, env) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    if "onboard" in argv:
        check_no_op([line[6:] for line in proc.stdout.splitlines() if line.startswith("done: ")])
    return seconds


CLOCK = "set the guest clock from the host"
clock_sets = []


def check_no_op(done):
    """A re-run may only re-set the guest clock (an emulated guest's clock falls behind)."""
    other = [line for line in done if not line.startswith(CLOCK)]
    if other:
        raise SystemExit(f"a re-run changed something, so it is not the no-op being measured: {other}")
    clock_sets.append(bool(done))


def row(label, times, floor=None, version=None):
    med, worst = statistics.median(times), max(times)
    ratios = ""
    if floor:
        ratios += f"   {med / floor:5.1f}x python"
    if version:
        ratios += f"   {med / version:5.2f}x --version"
    print(f"{label:<26} median {med:6.3f} s   max {worst:6.3f} s{ratios}")
    return med


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="b2dkit-bench-onboard-"))
    home = root / "home"
    home.mkdir()
    profile = root / "bench.yaml"
    profile.write_text(
        f"extends: demo\nname: {VM}\nmemory: 512\ncpus: 1\ndisk: 2048\n"
        "forwards:\n  - {host: 2022, remove: true}\n  - {host: 8000, remove: true}\n"
        f"  - {{host: {free_port()}, guest: 22}}\n  - {{host: {free_port()}, guest: 8000}}\n"
    )
    os.environ.update(B2DKIT_HOME=str(root / "b2dkit-home"), HOME=str(home), PYTHONPATH=str(REPO))
    os.environ.setdefault("B2DKIT_QEMU_ACCEL", "tcg")
    env = dict(os.environ)
    onboard_argv = [sys.executable, "-m", "b2dkit", "onboard", f"--profile={profile}", "--yes"]

    from b2dkit import onboard as flow
    from b2dkit import profile as profiles
    from b2dkit.main import make_program

    try:
        print(f"first onboarding (build/boot, not the target) in {root} ...", flush=True)
        start = time.perf_counter()
        first = subprocess.run(onboard_argv, env=env, capture_output=True, text=True)
        if first.returncode:
            raise SystemExit(f"the first onboarding failed:\n{first.stdout}{first.stderr}")
        print(f"first onboarding: {time.perf_counter() - start:.1f} s\n")

        floor = [timed_process([sys.executable, "-c", "pass"], env) for _ in range(args.rounds)]
        version = [timed_process([sys.executable, "-m", "b2dkit", "--version"], env) for _ in range(args.rounds)]
        cli = [timed_process(onboard_argv, env) for _ in range(args.rounds)]

        steps = {}
        inproc = []
        for _ in range(args.rounds):
            marks = []
            begin = time.perf_counter()
            plan = flow.onboard(profiles.load(str(profile)),
                                log=lambda line, marks=marks: marks.append((time.perf_counter(), line)))
            end = time.perf_counter()
            inproc.append(end - begin)
            check_no_op(plan.done)
            heads = [(t, line.split("] ", 1)[1]) for t, line in marks if line.startswith("[")]
            for (t0, name), (t1, _) in zip(heads, heads[1:] + [(end, "")]):
                steps.setdefault(name, []).append(t1 - t0)

        print(f"{args.rounds} rounds each, target: a no-op re-run <= {TARGET:.1f} s\n")
        base = row("python -c pass", floor)
        ver = row("b2dkit --version", version, base)
        cli_med = row("onboard (subprocess)", cli, base, ver)
        row("onboard (in-process)", inproc, base, ver)
        print("\nin-process re-run by step (median):")
        for name, times in steps.items():
            print(f"  {name:<10} {statistics.median(times) * 1000:7.1f} ms")
        print(f"\nre-runs that re-set the drifted guest clock: {sum(clock_sets)} of {len(clock_sets)}")
        worst = max(cli)
        verdict = "PASS" if worst <= TARGET else "FAIL"
        print(f"\n{verdict}: slowest no-op re-run as a user types it {worst:.3f} s "
              f"(median {cli_med:.3f} s) vs target {TARGET:.1f} s")
    finally:
        try:
            make_program().run(["b2dkit", "vm.destroy", f"--name={VM}", "--yes", "--purge"], exit=False)
        except BaseException as exc:  # noqa: B036 - go on and kill QEMU below
            print(f"destroy failed: {exc}", file=sys.stderr)
        qemuclean.kill_all(root)
        mount = home / "workspace" / "dev"
        if os.path.ismount(mount):
            subprocess.run(["fusermount3", "-uz", str(mount)], check=False)


if __name__ == "__main__":
    main()
