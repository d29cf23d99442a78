"""What reaching the VM's daemon from the host costs: ``vm.env`` + ``docker version`` over the TLS
forward against ``docker -H unix://`` inside the VM, measured in one run (issue 11).

A guest-docker VM is made with b2dkit itself (``vm.create`` in a private B2DKIT_HOME, QEMU),
then rounds in ABAB order:

    host      one ``b2dkit vm.env`` (what ``eval "$(b2dkit vm.env)"`` costs, the CLI's start-up
              included) and N x Debian's ``/usr/bin/docker version`` with its settings
              (TLS through QEMU's user-mode NAT forward)
    guest     N x ``docker -H unix:///var/run/docker.sock version`` inside the VM, timed by the
              guest's own clock in one SSH command (so no SSH cost is counted: the baseline)

Printed: the medians per call and the ratios host / guest (a ``docker version`` from the
laptop against one made where the daemon runs), plus what ``vm.env`` adds once per shell.

Run: .venv/bin/python benchmarks/docker_env.py [--rounds N] [--calls N]   (as root: the guest build reads
     /boot/vmlinuz-*; under the shared lock: flock /tmp/b2dkit-qemu.lock .venv/bin/python benchmarks/docker_env.py)
"""

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from ports import free_port  # noqa: E402  (the tests' one: never the same port twice)
DOCKER = "/usr/bin/docker"
VM = "bench-docker"


def b2dkit(env, *argv, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "b2dkit", *argv], capture_output=True, text=True, env=env,
                          cwd=REPO)
    if check and proc.returncode:
        raise SystemExit(f"b2dkit {' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc


def host_round(env, calls: int):
    """(seconds for vm.env, seconds per docker version) from the laptop."""
    started = time.perf_counter()
    lines = b2dkit(env, "vm.env", f"--name={VM}").stdout
    env_seconds = time.perf_counter() - started
    settings = {}
    for line in lines.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            settings[name] = shlex.split(value)[0]
    client = {"PATH": "/usr/bin:/bin", "HOME": env["HOME"], **settings}
    started = time.perf_counter()
    for _ in range(calls):
        subprocess.run([DOCKER, "version"], capture_output=True, check=True, env=client)
    return env_seconds, (time.perf_counter() - started) / calls


def guest_round(env, calls: int) -> float:
    """Seconds per ``docker -H unix:// version`` inside the VM, by the guest's clock."""
    # busybox date has no %N: the guest's uptime counts in hundredths of a second, enough here.
    script = ("read s _ < /proc/uptime; i=0; while [ $i -lt " + str(calls) + " ]; do "
              "docker -H unix:///var/run/docker.sock version >/dev/null || exit 1; i=$((i+1)); done; "
              "read e _ < /proc/uptime; echo $s $e")
    out = b2dkit(env, "vm.ssh", f"--name={VM}", "-c", script).stdout.split()
    return (float(out[1]) - float(out[0])) / calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    if not os.path.exists(DOCKER):
        raise SystemExit("Debian's docker CLI is needed: apt-get install docker.io")
    import qemuclean

    with tempfile.TemporaryDirectory(prefix="b2dkit-bench-docker-") as tmp:
        root = Path(tmp)
        (root / "home").mkdir()
        env = {**os.environ, "B2DKIT_HOME": str(root / "b2dkit"), "HOME": str(root / "home"),
               "B2DKIT_QEMU_ACCEL": os.environ.get("B2DKIT_QEMU_ACCEL", "tcg")}
        profile = root / "bench.yaml"
        profile.write_text(f"extends: default\nname: {VM}\nprovider: qemu\nmemory: 1024\ncpus: 2\ndisk: 4096\n"
                           "iso: {build: guest-docker}\nforwards:\n  - {host: 2022, remove: true}\n"
                           f"  - {{host: {free_port()}, guest: 22}}\n")
        try:
            started = time.perf_counter()
            b2dkit(env, "vm.create", f"--profile={profile}")
            print(f"vm.create (boot, TLS set-up, daemon ready): {time.perf_counter() - started:.1f} s")
            host_round(env, 1)  # warm-up: the first calls page the CLIs in on both sides
            guest_round(env, 1)
            envs, hosts, guests = [], [], []
            for _ in range(args.rounds):
                env_s, host_s = host_round(env, args.calls)
                envs.append(env_s)
                hosts.append(host_s)
                guests.append(guest_round(env, args.calls))
            host, inside, env_once = (statistics.median(x) for x in (hosts, guests, envs))
            print(f"rounds {args.rounds} x {args.calls} calls (medians)")
            print(f"  host  docker version over TLS (forward):   {host * 1000:7.0f} ms/call")
            print(f"  guest docker -H unix:// version:           {inside * 1000:7.0f} ms/call")
            print(f"  host / guest:                              {host / inside:7.2f}")
            print(f"  b2dkit vm.env (once per shell):            {env_once * 1000:7.0f} ms"
                  f"  = {env_once / host:.2f} docker calls from the host")
        finally:
            b2dkit(env, "vm.destroy", f"--name={VM}", "--yes", "--purge", check=False)
            qemuclean.kill_all(root)


if __name__ == "__main__":
    main()
