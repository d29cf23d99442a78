"""How much does ``vm.start`` add to a bare QEMU boot of the same guest, measured in one run.

Target (issue #4): ``vm.start`` until SSH-ready and guest set-up done <= 1.1x a bare
``qemu-system-x86_64`` boot until its SSH banner. Both variants boot the same ISO and the same
already-formatted persistent disk (a warm-up ``vm.start`` formats it), under the accelerator
b2dkit picks (TCG unless ``B2DKIT_QEMU_ACCEL`` says otherwise), alternating in ABBA order so
load from other work on the machine, and the after-effects of the boot before, hit both alike:

    bare      qemu.build_argv(...) exactly as the provider builds it, started by subprocess,
              timed until a TCP connect to the forwarded port reads ``SSH-`` (short polls:
              0.5 s connect/read timeouts, 0.1 s between tries); then powered down.
    b2dkit    the ``vm.start`` task in this process (as typed, minus interpreter start-up;
              ``--cli`` runs ``python -m b2dkit vm.start`` instead), on a VM made once with
              ``vm.create --no-start`` from a profile with one persistent dir and no mounts
              (``--mount`` adds the seed's sshfs mount); then ``vm.stop``.

The b2dkit rounds are broken down by wrapping library calls from here (nothing is logged by
the library): QEMU daemonized, QMP ready, each SSH handshake of ``wait_for_session``, a second
connection if one is made, each set-up command. A thread tails the serial log of both variants
for the guest's ``b2dkit-guest: boot complete`` line (sshd listening, DHCP done): the common
mark that separates guest boot time, which other work on a shared machine makes noisy, from
what the host side adds after it.

Run: PYTHONPATH=. python benchmarks/boot.py [--rounds N] [--memory MB] [--cpus N] [--mount] [--cli]
"""

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from ports import free_port  # noqa: E402  (the tests' one: never the same port twice)

import qemuclean  # noqa: E402  (the clean-up the tests use)

from b2dkit import guest, paths  # noqa: E402
from b2dkit.hypervisors.qemu import qemusystem as qemu  # noqa: E402
from b2dkit.forwards import Forward  # noqa: E402
from b2dkit.main import make_program  # noqa: E402
from b2dkit.hypervisors.qemu import provider as qemu_provider  # noqa: E402

VM = "bootbench"
BOOT_COMPLETE = b"b2dkit-guest: boot complete"


def run_task(*argv) -> None:
    try:
        make_program().run(["b2dkit", *argv], exit=True)
    except SystemExit as exc:
        if exc.code:
            raise RuntimeError(f"b2dkit {' '.join(argv)} exited {exc.code}") from None


class SerialWatch:
    """Note when ``boot complete`` shows up in a serial log (file reads only: no effect on the guest)."""

    def __init__(self, path: Path, t0: float):
        self.path, self.t0, self.seen = path, t0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                if BOOT_COMPLETE in self.path.read_bytes():
                    self.seen = time.monotonic() - self.t0
                    return
            self._stop.wait(0.02)

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.seen


def wait_banner(port: int, timeout: float = 240.0) -> None:
    """Connect + read until the server's ``SSH-`` greeting; each try short, as the NAT may hang a SYN."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.settimeout(0.5)
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no SSH banner on port {port} within {timeout:g} s")


# -- bare QEMU ----------------------------------------------------------------------------------


def bare_round(work: Path, memory: int, cpus: int) -> dict:
    vm_dir = paths.vm_dir(VM)
    port = free_port()
    pidfile, serial, qmp_sock = work / "bare.pid", work / "bare-serial.log", work / "bare.qmp"
    for path in (pidfile, serial, qmp_sock):
        path.unlink(missing_ok=True)
    binary = qemu.find_qemu()
    argv = qemu.build_argv(
        binary, "bare", accel=qemu.choose_accel(binary), memory_mb=memory, cpus=cpus,
        iso=vm_dir / "boot2docker.iso", disk=vm_dir / qemu_provider.DISK, pidfile=pidfile,
        serial_log=serial, qmp_socket=qmp_sock, forwards=[Forward(host_port=port, guest_port=22)],
    )  # fmt: skip
    t0 = time.monotonic()
    watch = SerialWatch(serial, t0)
    try:
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        daemonized = time.monotonic() - t0
        wait_banner(port)
        total = time.monotonic() - t0
    finally:
        booted = watch.stop()
        power_off(pidfile, qmp_sock)
    return {"total": total, "daemonized": daemonized, "boot complete": booted}


def power_off(pidfile: Path, qmp_sock: Path) -> None:
    """Clean shutdown (the disk is the VM's own), SIGKILL if it hangs; not timed."""
    qemuclean.stop_qemu(pidfile, qmp_sock)


# -- b2dkit vm.start ----------------------------------------------------------------------------


class Probe:
    """Wrap library calls for one round and record when they returned (relative to ``t0``)."""

    def __init__(self):
        self.t0 = 0.0
        self.marks = {}
        self.tries = []  # (start, end, outcome) of each SSH connection attempt
        self.commands = []  # (command, seconds)
        self.drifts = []  # guest - host clock, each time set-up measured it
        self._undo = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _patch(self, owner, name, wrapper):
        original = getattr(owner, name)
        setattr(owner, name, wrapper(original))
        self._undo.append((owner, name, original))

    def install(self):
        probe = self

        def mark_after(label):
            def wrap(fn):
                def inner(*a, **kw):
                    result = fn(*a, **kw)
                    probe.marks.setdefault(label, probe.now())
                    return result

                return inner

            return wrap

        def open_try(fn):
            def inner(*a, **kw):
                start = probe.now()
                try:
                    session = fn(*a, **kw)
                except BaseException as exc:
                    probe.tries.append((start, probe.now(), guest._describe(exc)))
                    raise
                probe.tries.append((start, probe.now(), "ok"))
                return session

            return inner

        def record_drift(fn):
            def inner(*a, **kw):
                drift = fn(*a, **kw)
                probe.drifts.append(drift)
                return drift

            return inner

        def timed_run(fn):
            def inner(self_, cmd, *a, **kw):
                start = time.monotonic()
                try:
                    return fn(self_, cmd, *a, **kw)
                finally:
                    text = cmd if isinstance(cmd, str) else " ".join(map(str, cmd))
                    probe.commands.append((text, time.monotonic() - start))

            return inner

        self._patch(qemu, "launch", mark_after("daemonized"))
        self._patch(qemu_provider.QemuProvider, "start", mark_after("QMP ready"))
        self._patch(guest, "_open", open_try)
        self._patch(guest, "wait_for_session", mark_after("SSH ready (auth ok)"))
        self._patch(guest, "connect", mark_after("set-up session open"))
        self._patch(guest, "setup", mark_after("set-up done"))
        self._patch(guest, "clock_drift", record_drift)
        self._patch(guest.GuestSession, "run", timed_run)

    def uninstall(self):
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()


def b2dkit_round(cli: bool) -> dict:
    vm_dir = paths.vm_dir(VM)
    serial = vm_dir / qemu_provider.SERIAL
    for path in (serial, vm_dir / (qemu_provider.SERIAL + ".1")):
        path.unlink(missing_ok=True)  # so the watcher cannot see the previous boot's line
    probe = Probe()
    if not cli:
        probe.install()
    probe.t0 = t0 = time.monotonic()
    watch = SerialWatch(serial, t0)
    try:
        if cli:
            subprocess.run(
                [sys.executable, "-m", "b2dkit", "vm.start", f"--name={VM}"],
                check=True,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
        else:
            run_task("vm.start", f"--name={VM}")
        total = time.monotonic() - t0
    finally:
        probe.uninstall()
        booted = watch.stop()
        run_task("vm.stop", f"--name={VM}")
    return {
        "total": total,
        "boot complete": booted,
        **probe.marks,
        "tries": probe.tries,
        "commands": probe.commands,
        "drifts": probe.drifts,
    }


# -- report -------------------------------------------------------------------------------------


def med(rounds, key):
    values = [r[key] for r in rounds if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(value) -> str:
    return f"{value:7.2f}" if value is not None else "      -"


def report(bare, ours, cli):
    print("\nround   bare qemu → SSH banner   vm.start → SSH ready + set-up   (guest 'boot complete' at)")
    for i, (a, b) in enumerate(zip(bare, ours), 1):
        print(
            f"{i:5d}   {fmt(a['total'])} s               {fmt(b['total'])} s"
            f"                        ({fmt(a['boot complete'])} s, {fmt(b['boot complete'])} s)"
        )
    ma, mb = med(bare, "total"), med(ours, "total")
    print(f"median  {fmt(ma)} s               {fmt(mb)} s")
    print(f"\nratio vm.start / bare = {mb / ma:.3f}  (target <= 1.1; medians)")
    # The guest's own boot (QEMU daemonized -> 'boot complete' on serial) is the same work in both
    # variants, but on a shared machine it varies by seconds between boots. Host-side time is the
    # rest: before QEMU runs, and from 'boot complete' to the banner / the end of set-up.
    both = [r for r in bare + ours if r.get("boot complete") is not None]
    if not cli and both and all(r.get("boot complete") is not None for r in both):
        guest_boot = statistics.median(r["boot complete"] - r["daemonized"] for r in both)
        host_a = statistics.median(r["total"] - (r["boot complete"] - r["daemonized"]) for r in bare)
        host_b = statistics.median(r["total"] - (r["boot complete"] - r["daemonized"]) for r in ours)
        spread = max(r["boot complete"] for r in both) - min(r["boot complete"] for r in both)
        print(
            f"guest boot {guest_boot:.2f} s (median of all {len(both)} boots; spread {spread:.1f} s); host side: "
            f"bare {host_a:.2f} s, vm.start {host_b:.2f} s ({host_b - host_a:+.2f} s)\n"
            f"ratio with the guest boot equalised = {(guest_boot + host_b) / (guest_boot + host_a):.3f}"
        )

    print("\nwhere the time goes (medians, seconds since the start of each variant)")
    print(f"  bare    qemu daemonized       {fmt(med(bare, 'daemonized'))}")
    print(f"  bare    boot complete         {fmt(med(bare, 'boot complete'))}")
    print(f"  bare    SSH banner read       {fmt(ma)}")
    stages = ["daemonized", "QMP ready", "boot complete", "SSH ready (auth ok)", "set-up session open", "set-up done"]
    for stage in stages:
        value = med(ours, stage)
        if value is not None:
            print(f"  b2dkit  {stage:<22}{fmt(value)}")
    print(f"  b2dkit  vm.start returned     {fmt(mb)}")
    if cli:
        return
    print()
    for i, b in enumerate(ours, 1):
        tries = b["tries"]
        failed = [t for t in tries if t[2] != "ok"]
        slow = sum(end - start for start, end, _ in failed)
        ok = [t for t in tries if t[2] == "ok"]
        line = f"  round {i}: {len(tries)} SSH tries, {len(failed)} failed ({slow:.2f} s inside them)"
        if ok:
            line += "; handshakes+auth " + ", ".join(f"{end - start:.2f} s" for start, end, _ in ok)
        print(line)
        outcomes = {}
        for _, _, what in failed:
            outcomes[what] = outcomes.get(what, 0) + 1
        if outcomes:
            print("           failures: " + "; ".join(f"{n}x {what}" for what, n in outcomes.items()))
        print(
            "           tries (start-end): "
            + " ".join(f"{s:.1f}-{e:.1f}{'' if w == 'ok' else 'x'}" for s, e, w in tries)
        )
        print("           clock drift: " + ", ".join(f"{d:+.2f} s" for d in b["drifts"]))
        print("           set-up: " + ", ".join(f"`{c}` {s:.2f} s" for c, s in b["commands"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory", type=int, default=512, help="MB (as the e2e tests)")
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--mount", action="store_true", help="profile with the seed's sshfs mount")
    parser.add_argument("--cli", action="store_true", help="time `python -m b2dkit vm.start` (no breakdown)")
    args = parser.parse_args(argv)

    built = subprocess.run(
        [sys.executable, str(REPO / "guest" / "build.py")], check=True, capture_output=True, text=True
    )
    iso = Path(built.stdout.strip().splitlines()[-1])
    work = Path(tempfile.mkdtemp(prefix="b2dkit-bootbench-"))
    home = work / "home"
    home.mkdir()
    os.environ["B2DKIT_HOME"] = str(work / "b2dkit-home")
    os.environ["HOME"] = str(home)
    os.environ.setdefault(qemu.ACCEL_ENV, "tcg")
    mounts = f"mounts:\n  - {{guest: /mnt/sda1/dev, host: {home / 'workspace' / 'dev'}}}\n" if args.mount else ""
    profile = work / "bench.yaml"
    profile.write_text(
        f"extends: default\nname: {VM}\nprovider: qemu\nmemory: {args.memory}\ncpus: {args.cpus}\n"
        f"disk: 2048\niso: {{path: {iso}}}\n"
        f"forwards:\n  - {{host: 2022, remove: true}}\n  - {{host: {free_port()}, guest: 22}}\n"
        f"persistent_dirs:\n  - /mnt/sda1/dev\n{mounts}"
    )
    accel = qemu.decide_accel()
    print(
        f"guest {iso.name} ({iso.stat().st_size >> 20} MiB), -m {args.memory} -smp {args.cpus}, "
        f"accel {accel[0]} ({accel[1]}), mount: {'yes' if args.mount else 'no'}, "
        f"vm.start {'as a subprocess' if args.cli else 'in-process'}"
    )
    try:
        run_task("vm.create", f"--profile={profile}", "--no-start")
        start = time.monotonic()
        run_task("vm.start", f"--name={VM}")  # first boot formats the disk; both variants reuse it
        run_task("vm.stop", f"--name={VM}")
        print(f"warm-up (formats the disk): {time.monotonic() - start:.1f} s")
        bare, ours = [], []
        for i in range(args.rounds):
            # ABBA order: whatever the previous boot leaves behind (host writeback, freed guest
            # memory) falls on each variant equally often
            if i % 2 == 0:
                bare.append(bare_round(work, args.memory, args.cpus))
                ours.append(b2dkit_round(args.cli))
            else:
                ours.append(b2dkit_round(args.cli))
                bare.append(bare_round(work, args.memory, args.cpus))
            first = "bare" if i % 2 == 0 else "vm.start"
            print(
                f"round {i + 1} ({first} first): bare {bare[-1]['total']:.2f} s, vm.start {ours[-1]['total']:.2f} s",
                flush=True,
            )
        report(bare, ours, args.cli)
    finally:
        with contextlib.suppress(Exception):
            run_task("vm.destroy", f"--name={VM}", "--yes", "--purge")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
