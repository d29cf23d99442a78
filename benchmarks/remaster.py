"""How fast is a remaster, measured against ``cp`` of the same image in the same run.

Targets (issue #2): the default path <= 1.1x cp on 60 MB and 500 MB images; a cache hit <= 50 ms.
Builds padded boot2docker-like ISOs with xorriso in a temp dir, then times, warm cache,
the median of several rounds (methods interleaved so drift hits all of them alike):

    cp                    coreutils cp (copy_file_range): the physical limit
    shutil.copyfile       Python's sendfile copy, for comparison with our copy
    fast_copy             b2dkit.iso.fast_copy (FICLONE, then copy_file_range)
    remaster              b2dkit.iso.remaster, default path (copy + in-place cfg edit + verify)
    remaster --rewrite    full pycdlib re-layout + verify
    b2dkit CLI            ``python -m b2dkit iso.remaster`` (adds interpreter + import time)
    xorriso replay        xorriso -indev/-outdev -boot_image any replay -map cfg
    cache hit             b2dkit.isocache.cached_remaster on an unchanged source

Run: PYTHONPATH=. python benchmarks/remaster.py [--rounds N] [--sizes 60,500]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import isofixtures as fx  # noqa: E402

from b2dkit import bootcfg, iso, isocache  # noqa: E402

CODES = ["tz=CST-8"]


def timed(func) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def methods(src: Path, work: Path):
    out = work / "out.iso"
    new_cfg = work / "isolinux.cfg"
    new_cfg.write_bytes(bootcfg.apply(fx.read_cfg(src, "v19"), CODES))
    cli_env = {**os.environ, "PYTHONPATH": str(REPO)}

    def cp():
        subprocess.run(["cp", str(src), str(out)], check=True)

    def copyfile():
        shutil.copyfile(src, out)

    def fast_copy():
        iso.fast_copy(src, out)

    def remaster():
        assert iso.remaster(src, out, CODES).method == "in-place"

    def rewrite():
        iso.remaster(src, out, CODES, rewrite=True)

    def cli():
        argv = [sys.executable, "-m", "b2dkit", "iso.remaster", "--src", str(src), "--out", str(out)]
        subprocess.run([*argv, "--boot-code", CODES[0]], check=True, env=cli_env, stdout=subprocess.DEVNULL)

    def xorriso():
        subprocess.run(
            ["xorriso", "-indev", str(src), "-outdev", str(out), "-compliance", "no_emul_toc",
             "-boot_image", "any", "replay", "-map", str(new_cfg), "/isolinux/isolinux.cfg", "-commit"],
            check=True, capture_output=True,
        )  # fmt: skip

    def clean():
        if out.exists():
            out.unlink()
        os.sync()  # untimed: no method pays for the previous one's dirty pages

    return [
        ("cp", cp),
        ("shutil.copyfile", copyfile),
        ("fast_copy", fast_copy),
        ("remaster (default)", remaster),
        ("remaster --rewrite", rewrite),
        ("b2dkit CLI remaster", cli),
        ("xorriso replay", xorriso),
    ], clean


def bench_size(size_mb: int, rounds: int, root: Path) -> None:
    work = root / f"{size_mb}mb"
    work.mkdir()
    src = fx.build_iso(work / "src.iso", "v19", initrd_size=(size_mb - 1) * 1024 * 1024)
    runs, clean = methods(src, work)
    times = {name: [] for name, _ in runs}
    for _name, func in runs:  # one warm-up each (page cache, imports)
        clean()
        func()
    for _ in range(rounds):
        for name, func in runs:
            clean()
            times[name].append(timed(func))
    clean()

    os.environ["B2DKIT_HOME"] = str(work / "home")
    isocache.cached_remaster(src, CODES)  # the miss that fills the cache
    times["cache hit"] = [timed(lambda: isocache.cached_remaster(src, CODES)) for _ in range(rounds)]

    base = statistics.median(times["cp"])
    real = src.stat().st_size / 1e6
    print(f"\n{size_mb} MB image ({real:.1f} MB), {rounds} rounds, warm page cache, sync before each run")
    print(f"  {'method':<22} {'median':>9} {'x cp':>6} {'paired':>7}   {'min':>8} {'max':>8}")
    for name, values in times.items():
        med = statistics.median(values)
        # paired: the ratio to the cp run of the same round, robust to load from other processes
        paired = statistics.median(v / c for v, c in zip(values, times["cp"]))
        spread = f"{min(values) * 1000:7.1f}ms {max(values) * 1000:7.1f}ms"
        print(f"  {name:<22} {med * 1000:8.1f}ms {med / base:6.2f} {paired:7.2f}   {spread}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sizes", default="60,500", help="image sizes in MB, comma-separated")
    args = parser.parse_args()
    missing = fx.tools_available()
    if missing:
        sys.exit(f"cannot build fixture ISOs: {missing}")
    with tempfile.TemporaryDirectory(prefix="b2dkit-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            bench_size(size, args.rounds, Path(tmp))
    print("\ntargets: remaster (default) <= 1.10 x cp on every size; cache hit <= 50 ms")


if __name__ == "__main__":
    main()
