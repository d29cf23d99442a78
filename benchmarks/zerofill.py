"""Zero-filling the persistent disk through a pipe: time, throughput and our max RSS vs dd | cat.

``convertfromraw stdin`` needs every byte of the disk on its stdin (20 GB of mostly zeros for
the default size), so this must run at pipe speed in constant memory.  The consumer is
``cat > /dev/null`` for both sides, so the ratio compares only the producers:
``disk.write_stream`` (via the VBoxManage runner's stdin writer) against ``dd if=/dev/zero bs=1M``.

Run: PYTHONPATH=. python benchmarks/zerofill.py [GiB]   (default 20)
"""

import resource
import subprocess
import sys
import time

from b2dkit import disk
from b2dkit.hypervisors.virtualbox.vboxmanage import VBoxManage


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def ours(total, header):
    # The same code path as the provider: VBoxManage.run(stdin_writer=...) → temp-file stdout/stderr.
    runner = VBoxManage(path="/bin/sh")
    start = time.perf_counter()
    runner.run(
        ["-c", "cat > /dev/null"],
        stdin_writer=lambda out: disk.write_stream(out, header, total),
        retry=False,
        timeout=None,
    )
    return time.perf_counter() - start


def baseline(total):
    mib = total >> 20
    start = time.perf_counter()
    dd = subprocess.Popen(
        ["dd", "if=/dev/zero", "bs=1M", f"count={mib}", "status=none"], stdout=subprocess.PIPE
    )
    cat = subprocess.run(["cat"], stdin=dd.stdout, stdout=subprocess.DEVNULL)
    dd.stdout.close()
    dd.wait()
    assert dd.returncode == 0 and cat.returncode == 0
    return time.perf_counter() - start


def main():
    gib = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    total = int(gib * (1 << 30)) >> 20 << 20
    header = disk.header_tar("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBench bench")
    rss_before = rss_mb()
    base = baseline(total)
    mine = ours(total, header)
    gb = total / 1e9
    print(f"stream size           {total} bytes ({gib:g} GiB)")
    print(f"dd bs=1M | cat        {base:7.2f} s  {gb / base:6.2f} GB/s")
    print(f"disk.write_stream|cat {mine:7.2f} s  {gb / mine:6.2f} GB/s")
    print(f"time ratio ours/dd    {mine / base:7.2f}")
    print(f"our max RSS           {rss_mb():7.1f} MB (before: {rss_before:.1f} MB)")


if __name__ == "__main__":
    main()
