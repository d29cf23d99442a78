"""A laptop's day in numbers, each a ratio against a baseline measured in the same run, on one VM.

mount    the seed's own command, ``sshfs docker@localhost:/mnt/sda1/dev DIR -p PORT -o reconnect``
         (plus only what makes it need no password: the VM key and a known_hosts pinning
         ``[localhost]:PORT``), against b2dkit's ``sshfs.sshfs_argv`` in both of a profile's cache
         modes (``fresh``, the default, and ``relaxed``) on the same VM and guest dir:
         ``du -s`` and a ``git status``-like lstat walk of a FILES-file tree (cold = first after
         a fresh mount, warm = again right after), create+read of SMALL 1 KiB files, MB MiB
         sequential write and read (read after a fresh mount, so from the guest, not the page
         cache). Rounds alternate ABBA. Also checks each mount's correctness: a file written on
         one side is seen on the other within 1 s (relaxed: within its documented bound), and
         prints two floors: the same tree on the host's disk, and one bulk listing over SSH.
forward  HTTP to the guest's busybox httpd (port 8000): connect+GET latency of a small page and
         throughput of a BIG MiB file through QEMU's hostfwd, through an ``ssh -L`` tunnel (the
         seed's ``boot2docker ssh -L 8000:localhost:8000``), and from the guest to its own
         loopback (busybox wget: the limit).
clock    QMP ``stop`` for PAUSE s then ``cont``: seconds from the resume until the guest clock
         is within 1 s of the host's, with the watcher (b2dkit) and without (the baseline:
         what is left of the drift after the same wait).

The watcher is off (B2DKIT_WATCHER=0) for mount and forward, so its [::1] relay cannot carry
the seed's ``localhost`` traffic; the clock part starts it.

Run (boots a guest, so under the QEMU lock):
    flock /tmp/b2dkit-qemu.lock .venv/bin/python benchmarks/day.py [--scale 0.2] [--rounds 2]
        [--only mount,forward,clock] [--pause 20]
"""

import argparse
import contextlib
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from ports import free_port  # noqa: E402  (the tests' one: never the same port twice)

import qemuclean  # noqa: E402  (the clean-up the tests use)
from b2dkit import guest, lifecycle, machines, sshfs, watcher  # noqa: E402
from b2dkit.hypervisors.qemu import qemusystem as qemu  # noqa: E402
from b2dkit.main import make_program  # noqa: E402

VM = "daybench"


def run_task(*argv) -> None:
    try:
        make_program().run(["b2dkit", *argv], exit=True)
    except SystemExit as exc:
        if exc.code:
            raise RuntimeError(f"b2dkit {' '.join(argv)} exited {exc.code}") from None


def timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


class Env:
    def __init__(self, args):
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="b2dkit-daybench-"))
        self.home = self.root / "home"
        self.home.mkdir()
        os.environ["B2DKIT_HOME"] = str(self.root / "b2dkit-home")
        os.environ["HOME"] = str(self.home)
        os.environ.setdefault("B2DKIT_QEMU_ACCEL", "tcg")
        os.environ[watcher.ENV_SWITCH] = "0"
        self.ssh_port, self.http_port = free_port(), free_port()
        iso = subprocess.run([sys.executable, str(REPO / "guest" / "build.py")], capture_output=True,
                             text=True, check=True).stdout.strip().splitlines()[-1]  # fmt: skip
        profile = self.root / "bench.yaml"
        profile.write_text(
            f"extends: cst\nname: {VM}\nprovider: qemu\nmemory: {args.memory}\ncpus: {args.cpus}\ndisk: 4096\n"
            f"iso: {{path: {iso}}}\nforwards:\n  - {{host: 2022, remove: true}}\n  - {{host: 8000, remove: true}}\n"
            f"  - {{host: {self.ssh_port}, guest: 22}}\n  - {{host: {self.http_port}, guest: 8000}}\n"
            "mounts: []\n"
        )
        run_task("vm.create", f"--profile={profile}")
        self.machine = machines.load(VM)
        self.key = lifecycle.key_path(VM)
        self.known_hosts = lifecycle.known_hosts_path(VM)
        self.accel = qemu_accel()

    def session(self):
        return guest.connect("127.0.0.1", self.ssh_port, self.key, self.known_hosts)

    def ssh(self, command, stdin: bytes = None) -> str:
        argv = guest.ssh_argv("127.0.0.1", self.ssh_port, self.key, self.known_hosts, command=command)
        proc = subprocess.run(argv, input=stdin, capture_output=True, check=True)
        return proc.stdout.decode()

    def close(self):
        with contextlib.suppress(Exception):
            run_task("vm.destroy", f"--name={VM}", "--yes", "--purge")
        qemuclean.kill_all(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


def qemu_accel() -> str:
    with contextlib.suppress(Exception):
        info = lifecycle.provider_for(machines.load(VM)).info()
        return info.get("accel") or "?"
    return "?"


# -- mount ------------------------------------------------------------------------------------


class Mount:
    def __init__(self, env: Env, label: str):
        self.env, self.label = env, label
        self.local = env.home / label / "dev"
        self.local.mkdir(parents=True)

    def argv(self):
        raise NotImplementedError

    def mount(self):
        proc = subprocess.run(self.argv(), stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.label} mount failed: {proc.stderr.decode()[-300:]}")

    def unmount(self):
        subprocess.run(["fusermount3", "-u", str(self.local)], capture_output=True, check=False)
        deadline = time.monotonic() + 10
        while os.path.ismount(self.local) and time.monotonic() < deadline:
            time.sleep(0.05)
        if os.path.ismount(self.local):  # still busy: detach it, so no sshfs outlives the run
            subprocess.run(["fusermount3", "-u", "-z", str(self.local)], capture_output=True, check=False)

    def fresh(self):
        self.unmount()
        self.mount()


class SeedMount(Mount):
    """The seed's command, verbatim, plus the key and pinned host so it needs no password."""

    def __init__(self, env):
        super().__init__(env, "seed")
        pinned = guest.pinned_keys(env.known_hosts, "127.0.0.1", env.ssh_port)
        self.kh = env.root / "seed_known_hosts"
        self.kh.write_text("".join(f"[localhost]:{env.ssh_port} {k}\n" for k in pinned))

    def argv(self):
        return ["sshfs", "docker@localhost:/mnt/sda1/dev", str(self.local), "-p", str(self.env.ssh_port),
                "-o", "reconnect",
                "-o", f"IdentityFile={self.env.key},UserKnownHostsFile={self.kh},IdentitiesOnly=yes,BatchMode=yes"]


class B2dkitMount(Mount):
    """b2dkit's options (sshfs.sshfs_argv) in a cache mode; ``extra`` tries more options on top (--try)."""

    def __init__(self, env, label="fresh", extra="", cache="fresh"):
        super().__init__(env, label)
        self.extra, self.cache = extra, cache
        self.limit = sshfs.RELAXED_BOUND if cache == "relaxed" else 1.0  # how stale it may be, s

    def argv(self):
        argv = sshfs.sshfs_argv("127.0.0.1", self.env.ssh_port, self.env.key, self.env.known_hosts,
                                "/mnt/sda1/dev", self.local, cache=self.cache)
        if self.extra:
            argv[-1] += "," + self.extra
        return argv


def tree_tar(files: int) -> bytes:
    """FILES small files in dirs of 100 under tree/, as one tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(files):
            data = f"file {i}\n".encode() * 4
            info = tarfile.TarInfo(f"tree/d{i // 100:03d}/f{i:05d}.txt")
            info.size, info.mtime, info.mode = len(data), 1700000000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_tree(env: Env, tree: bytes) -> None:
    """The tree (tree_tar) under /mnt/sda1/dev, sent as one tar over ssh."""
    env.ssh("rm -rf /mnt/sda1/dev/tree && tar -x -C /mnt/sda1/dev", stdin=tree)


def local_floor(env: Env, tree: bytes) -> tuple:
    """du and the stat walk of the same tree on the host's own disk, warm: what no mount can beat."""
    with tarfile.open(fileobj=io.BytesIO(tree)) as tar:
        tar.extractall(env.root / "local", filter="data")
    tree = env.root / "local" / "tree"
    du(tree), stat_walk(tree)  # warm the page and dentry caches, as a warm walk has them
    return (statistics.median(timed(du, tree) for _ in range(5)),
            statistics.median(timed(stat_walk, tree) for _ in range(5)))  # fmt: skip


def bulk_listing(env: Env) -> float:
    """One ``ls -lnR`` of the tree over an open SSH session: every name and attribute in one request,
    the least any design that fetches metadata in bulk (not sshfs: one listing per directory) would pay."""
    with env.session() as s:
        s.run(["true"])
        t0 = time.perf_counter()
        s.run(["ls", "-lnR", "/mnt/sda1/dev/tree"])
        return time.perf_counter() - t0


def du(path: Path):
    subprocess.run(["du", "-s", str(path)], capture_output=True, check=True)


def stat_walk(path: Path) -> int:
    n = 0
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lstat(os.path.join(top, name))
            n += 1
    return n


def create_read(path: Path, count: int):
    d = path / f"small-{time.monotonic_ns()}"
    d.mkdir()
    payload = b"x" * 1024
    for i in range(count):
        (d / f"s{i}").write_bytes(payload)
    for i in range(count):
        assert (d / f"s{i}").read_bytes() == payload


def seq_write(path: Path, mib: int):
    chunk = os.urandom(1 << 20)
    with open(path / "big.bin", "wb") as out:
        for _ in range(mib):
            out.write(chunk)


def seq_read(path: Path, mib: int):
    with open(path / "big.bin", "rb") as src:
        total = 0
        while True:
            data = src.read(1 << 20)
            if not data:
                break
            total += len(data)
    assert total == mib << 20, total


def round_trip(path: Path, count: int = 200) -> float:
    """Seconds per statvfs: sshfs asks the server for every one (no cache), so this is one SFTP round trip."""
    t0 = time.perf_counter()
    for _ in range(count):
        os.statvfs(path)
    return (time.perf_counter() - t0) / count


def stat_one(path: Path, count: int = 3000) -> float:
    """Seconds per stat of one file just seen: the kernel's cache or a request to sshfs, no round trip."""
    os.stat(path)
    t0 = time.perf_counter()
    for _ in range(count):
        os.stat(path)
    return (time.perf_counter() - t0) / count


def guest_seconds(env: Env, command: str) -> float:
    """``command`` timed inside the guest (/proc/uptime: busybox date has no %N): guest CPU, no network."""
    s, e = env.ssh(f"read s _ </proc/uptime; {command} >/dev/null; read e _ </proc/uptime; echo $s $e").split()
    return float(e) - float(s)


def seen_within(env: Env, m: Mount, limit: float = 1.0) -> dict:
    """Guest write -> host sees it, host write -> guest sees it: seconds each (None = not within limit + 5 s)."""
    out = {}
    name = f"probe-{time.monotonic_ns()}"
    # Prime the caches first, as an editor or git would have them.
    os.listdir(m.local)
    env.ssh(f"echo from-guest > /mnt/sda1/dev/{name}.g")
    t0 = time.monotonic()
    out["guest->host"] = None
    while time.monotonic() - t0 < limit + 5:
        with contextlib.suppress(OSError):
            if name + ".g" in os.listdir(m.local) and (m.local / f"{name}.g").read_text() == "from-guest\n":
                out["guest->host"] = time.monotonic() - t0
                break
        time.sleep(0.02)
    # a change to an existing, already-read file
    (m.local / f"{name}.g").read_text()
    env.ssh(f"echo changed-in-guest > /mnt/sda1/dev/{name}.g")
    t0 = time.monotonic()
    out["guest change->host"] = None
    while time.monotonic() - t0 < limit + 5:
        with contextlib.suppress(OSError):
            if (m.local / f"{name}.g").read_text() == "changed-in-guest\n":
                out["guest change->host"] = time.monotonic() - t0
                break
        time.sleep(0.02)
    (m.local / f"{name}.h").write_text("from-host\n")
    t0 = time.monotonic()
    with env.session() as s:
        text = s.run(["cat", f"/mnt/sda1/dev/{name}.h"], check=False).stdout
    out["host->guest"] = time.monotonic() - t0 if text == "from-host\n" else None
    out["ok"] = all(v is not None and v <= limit for k, v in out.items() if k != "ok")
    return out


def bench_mount(env: Env, args) -> None:
    files = max(100, int(5000 * args.scale))
    small = max(50, int(1000 * args.scale))
    mib = max(8, int(200 * args.scale))
    print(f"\n== mount: {files}-file tree, {small} small files, {mib} MiB sequential (scale {args.scale}), "
          f"{args.rounds} ABBA rounds, accel {env.accel}")
    tree_bytes = tree_tar(files)
    make_tree(env, tree_bytes)
    seed, ours, relaxed = SeedMount(env), B2dkitMount(env), B2dkitMount(env, "relaxed", cache="relaxed")
    tries = [B2dkitMount(env, label, extra) for label, _, extra in (t.partition("=") for t in args.try_)]
    print("seed:    " + " ".join(seed.argv()[:7]) + " -o IdentityFile=…,UserKnownHostsFile=…")
    print("fresh:   -o " + ours.argv()[-1])
    print("relaxed: -o " + relaxed.argv()[-1])
    for t in tries:
        print(f"{t.label}: fresh + {t.extra}")
    variants = [seed, ours, relaxed, *tries]
    results = {m.label: {} for m in variants}

    def record(m, what, seconds):
        """Keep a figure, and print it: a run cut short by the 10-minute lock still says what it saw."""
        results[m.label].setdefault(what, []).append(seconds)
        print(f"  {m.label:<8} {what:<22} {seconds:.3f}", flush=True)

    order = []
    for r in range(args.rounds):
        order += variants if r % 2 == 0 else variants[::-1]
    try:
        for m in order:
            tree = m.local / "tree"
            m.fresh()
            record(m, "round trip (ms)", round_trip(m.local) * 1000)
            record(m, "stat one file (us)", stat_one(tree / "d000" / "f00000.txt") * 1e6)
            m.fresh()
            record(m, "du cold", timed(du, tree))
            record(m, "du warm", timed(du, tree))
            m.fresh()
            record(m, "stat walk cold", timed(stat_walk, tree))
            record(m, "stat walk warm", timed(stat_walk, tree))
            record(m, f"create+read {small}", timed(create_read, m.local, small))
            record(m, f"write {mib} MiB", timed(seq_write, m.local, mib))
            m.fresh()
            record(m, f"read {mib} MiB", timed(seq_read, m.local, mib))
            with contextlib.suppress(OSError):
                (m.local / "big.bin").unlink()
        env.ssh("rm -rf /mnt/sda1/dev/small-*")
        head = f"{'operation (median)':<22} {'seed':>8}" + "".join(f" {m.label:>10} {'ratio':>6}" for m in variants[1:])
        print(head + "   (ratio = seed / variant: > 1 is faster than the seed; times in s unless named)")
        for what in results["seed"]:
            a = statistics.median(results["seed"][what])
            row = f"{what:<22} {a:>8.3f}"
            for m in variants[1:]:
                b = statistics.median(results[m.label][what])
                row += f" {b:>10.3f} {a / b:>5.2f}x"
            print(row)
        print(f"bounds: in-guest du -s of the tree {guest_seconds(env, 'du -s /mnt/sda1/dev/tree'):.2f} s (guest CPU "
              f"alone), ssh connect+true {timed(env.ssh, 'true'):.2f} s (what ControlMaster would save per mount); "
              "round trip = one SFTP request (statvfs), stat one file = kernel cache or sshfs's cache")
        floor_du, floor_walk = local_floor(env, tree_bytes)
        print(f"floor:  the same tree on the host's disk, warm: du {floor_du:.3f} s, stat walk {floor_walk:.3f} s "
              "(no mount's warm figure can be lower); one ls -lnR of the whole tree over an open SSH session "
              f"{bulk_listing(env):.3f} s (metadata in one request instead of one listing per directory)")
        for m in variants:
            m.fresh()
            check = seen_within(env, m, getattr(m, "limit", 1.0))
            shown = ", ".join(f"{k} {v:.2f} s" if isinstance(v, float) else f"{k} {v}" for k, v in check.items())
            print(f"correctness {m.label:<7}: {shown}")
    finally:
        for m in variants:
            m.unmount()


# -- forward ----------------------------------------------------------------------------------


def http_get(host, port, path, family=socket.AF_INET) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect((host, port))
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        total = 0
        while True:
            data = s.recv(1 << 16)
            if not data:
                return total
            total += len(data)


def bench_forward(env: Env, args) -> None:
    big = max(4, int(64 * args.scale))
    reps = 20
    print(f"\n== forward: {reps} connect+GET of the small page, GET of a {big} MiB file, accel {env.accel}")
    env.ssh(f"sudo dd if=/dev/zero of=/var/www/big bs=1M count={big} 2>/dev/null")
    tunnel_port = free_port()
    argv = guest.ssh_argv("127.0.0.1", env.ssh_port, env.key, env.known_hosts)
    argv[1:1] = ["-N", "-L", f"{tunnel_port}:localhost:8000"]
    tunnel = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http_get("127.0.0.1", tunnel_port, "/") > 0:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("ssh -L tunnel did not come up")
            time.sleep(0.1)
        rows = {}
        for label, port in (("hostfwd", env.http_port), ("ssh -L", tunnel_port)):
            http_get("127.0.0.1", port, "/")
            lat = []
            for _ in range(reps):
                t0 = time.perf_counter()
                http_get("127.0.0.1", port, "/")
                lat.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            n = http_get("127.0.0.1", port, "/big")
            rows[label] = (statistics.median(lat), n / (time.perf_counter() - t0) / (1 << 20))
        # busybox date has no %N: time in the guest with /proc/uptime (centiseconds), read by builtins
        script = (
            f"read s _ </proc/uptime; i=0; while [ $i -lt {reps} ]; do wget -q -O /dev/null http://127.0.0.1:8000/; "
            "i=$((i+1)); done; read m _ </proc/uptime; wget -q -O /dev/null http://127.0.0.1:8000/big; "
            "read e _ </proc/uptime; echo $s $m $e"
        )
        s, m, e = (float(x) for x in env.ssh(script).split())
        rows["guest loopback"] = ((m - s) / reps, big / (e - m))
    finally:
        tunnel.terminate()
        tunnel.wait()
    base_lat, base_tp = rows["guest loopback"]
    print(f"{'path':<15} {'connect+GET ms':>15} {'x loopback':>11} {'MiB/s':>8} {'x loopback':>11}")
    for label, (lat, tp) in rows.items():
        print(f"{label:<15} {lat * 1000:>15.1f} {lat / base_lat:>10.2f}x {tp:>8.1f} {tp / base_tp:>10.2f}x")
    hl, ht = rows["hostfwd"]
    sl, st = rows["ssh -L"]
    print(f"hostfwd vs ssh -L: latency {sl / hl:.2f}x lower, throughput {ht / st:.2f}x higher")
    print("(the guest's loopback includes busybox wget starting in the guest for each request)")


# -- clock ------------------------------------------------------------------------------------


def pause_and_measure(env: Env, pause: float, limit: float) -> tuple:
    provider = lifecycle.provider_for(env.machine)
    with env.session() as session:
        with qemu.QMP(provider.qmp_socket) as mon:
            mon.execute("stop")
        time.sleep(pause)  # the scenario itself: the lid is closed
        with qemu.QMP(provider.qmp_socket) as mon:
            mon.execute("cont")
        resumed = time.monotonic()
        first = None
        while time.monotonic() - resumed < limit:
            d = guest.clock_drift(session)
            first = d if first is None else first
            if abs(d) < 1.0:
                return time.monotonic() - resumed, first, d
            time.sleep(0.1)
        return None, first, d


def bench_clock(env: Env, args) -> None:
    print(f"\n== clock: QMP stop for {args.pause:g} s, then cont; accel {env.accel}")
    with env.session() as s:
        guest.set_guest_clock(s)
    watcher.stop(VM)
    base, first_b, left = pause_and_measure(env, args.pause, limit=10.0)
    with env.session() as s:
        guest.set_guest_clock(s)
    os.environ[watcher.ENV_SWITCH] = "1"
    pid = watcher.start(VM)
    try:
        took, first_w, after = pause_and_measure(env, args.pause, limit=30.0)
    finally:
        watcher.stop(VM)
        os.environ[watcher.ENV_SWITCH] = "0"
    print(f"without the watcher: drift right after resume {first_b:+.2f} s, still {left:+.2f} s "
          f"10 s later" + (f" (right after {base:.2f} s)" if base is not None else " (never corrected)"))
    print(f"with the watcher (pid {pid}): drift right after resume {first_w:+.2f} s, "
          f"within 1 s after {took:.2f} s" if took is not None else "with the watcher: not corrected in 30 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="size factor for files/MiB (1.0 = the issue's sizes)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="mount,forward,clock")
    parser.add_argument("--pause", type=float, default=20.0, help="seconds the VM is paused in the clock part")
    parser.add_argument("--try", dest="try_", action="append", default=[], metavar="LABEL=OPTS",
                        help="also measure b2dkit's options plus OPTS (e.g. aes=Ciphers=aes128-ctr)")
    parser.add_argument("--memory", type=int, default=1024)
    parser.add_argument("--cpus", type=int, default=1)
    args = parser.parse_args()
    parts = args.only.split(",")
    if "mount" in parts and (shutil.which("sshfs") is None or not os.path.exists("/dev/fuse")):
        print("mount part needs sshfs and /dev/fuse")
        return 2
    env = Env(args)
    try:
        print(f"VM {VM}: QEMU {env.accel}, {args.memory} MiB, {args.cpus} CPU, guest from guest/build.py")
        if "mount" in parts:
            bench_mount(env, args)
        if "forward" in parts:
            bench_forward(env, args)
        if "clock" in parts:
            bench_clock(env, args)
    finally:
        env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
