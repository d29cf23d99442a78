"""What Docker costs the guest's boot under TCG, measured in one run (issue 11).

Two ISOs from guest/build.py — ``guest`` (no Docker) and ``guest-docker`` — each boot their own
already-used persistent disk (a warm-up boot formats it and, for guest-docker, loads the base
image; that first-boot load is reported too). Then rounds in ABBA order, so load from other
work on the machine hits both alike. Each boot is timed from ``qemu-system-x86_64`` start:

    ssh       a TCP connect to the forwarded port reads ``SSH-`` (0.5 s polls)
    docker    the console shows ``b2dkit-guest: docker: ready`` (the daemon answers on its
              socket and the images are loaded), guest-docker only

Printed: medians, and the ratios docker-ready / ssh-ready of guest-docker (target of the issue:
<= 1.25) and ssh-ready guest-docker / guest (what the flavour costs a boot that only needs SSH),
and dockerd's own start from the guest's console stamps (exec to answering), which no boot
order can hide once it is longer than the boot to SSH.

Run: python3 benchmarks/docker_boot.py [--rounds N]   (as root: the build reads /boot/vmlinuz-*;
     under the shared lock: flock /tmp/b2dkit-qemu.lock python3 benchmarks/docker_boot.py)
"""

import argparse
import importlib.util
import io
import json
import re
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from ports import free_port  # noqa: E402  (the tests' one: never the same port twice)
READY = "b2dkit-guest: docker: ready"
TIMEOUT = 400


def builder():
    spec = importlib.util.spec_from_file_location("guest_build_bench", REPO / "guest" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def format_me_disk(path: Path, size: int = 4 << 30):
    """A blank format-me disk (no keys: the benchmark never logs in)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        magic = b"boot2docker, please format-me"
        info = tarfile.TarInfo(magic.decode())
        info.size = len(magic)
        tar.addfile(info, io.BytesIO(magic))
    with open(path, "wb") as f:
        f.write(buf.getvalue())
        f.truncate(size)


def ssh_banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.settimeout(0.5)
            return s.recv(4) == b"SSH-"
    except OSError:
        return False


def qmp(path: Path, command: str):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        f = s.makefile("rw")
        f.readline()
        for cmd in ("qmp_capabilities", command):
            f.write(json.dumps({"execute": cmd}) + "\n")
            f.flush()
            while "return" not in (reply := json.loads(f.readline())) and "error" not in reply:
                pass


def boot(iso: Path, disk: Path, work: Path, docker: bool) -> dict:
    port = free_port()
    serial, qmp_path = work / "serial.log", work / "qmp.sock"
    serial.unlink(missing_ok=True)
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-M", "q35", "-m", "1024", "-smp", "2", "-display", "none",
            "-serial", f"file:{serial}", "-qmp", f"unix:{qmp_path},server=on,wait=off",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22", "-device", "virtio-net-pci,netdev=n0",
            "-drive", f"file={iso},media=cdrom,readonly=on", "-boot", "d",
            "-drive", f"file={disk},format=raw,if=none,id=d0", "-device", "ide-hd,drive=d0,bus=ide.1"]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marks = {}
    try:
        while time.monotonic() - start < TIMEOUT and proc.poll() is None:
            if "ssh" not in marks and ssh_banner(port):
                marks["ssh"] = time.monotonic() - start
            text = serial.read_text(errors="replace") if serial.exists() else ""
            if docker and "docker" not in marks and READY in text:
                marks["docker"] = time.monotonic() - start
            if "ssh" in marks and (not docker or "docker" in marks):
                break
            time.sleep(0.2)
        marks["console"] = serial.read_text(errors="replace") if serial.exists() else ""
        qmp(qmp_path, "system_powerdown")
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if "ssh" not in marks or (docker and "docker" not in marks):
        sys.exit(f"boot of {iso} did not reach its marks in {TIMEOUT} s; console tail:\n{marks['console'][-2000:]}")
    return marks


def uptime_of(console: str, pattern: str) -> float:
    match = re.search(pattern + r".*\[([0-9.]+)s\]", console)
    return float(match.group(1)) if match else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds (each boots both ISOs twice)")
    args = parser.parse_args()
    build = builder()
    isos = {"guest": build.build(flavour="guest", quiet=True),
            "guest-docker": build.build(flavour="guest-docker", quiet=True)}
    times = {"guest": [], "guest-docker": [], "docker": [], "dockerd": []}
    with tempfile.TemporaryDirectory(prefix="b2dkit-dockerboot-") as tmp:
        work = Path(tmp)
        disks = {name: work / f"{name}.img" for name in isos}
        for name, disk in disks.items():
            format_me_disk(disk)
            warm = boot(isos[name], disk, work, docker=name == "guest-docker")
            if name == "guest-docker":
                console = warm["console"]
                load = (uptime_of(console, "docker: images: .*busybox.tar")
                        - uptime_of(console, "docker: dockerd .* answers"))
                print(f"first boot of guest-docker: ssh {warm['ssh']:.1f} s, docker ready {warm['docker']:.1f} s; "
                      f"loading the base image took {load:.1f} s of guest time")
        order = []
        for _ in range(args.rounds):
            order += ["guest", "guest-docker", "guest-docker", "guest"]
        for name in order:
            marks = boot(isos[name], disks[name], work, docker=name == "guest-docker")
            times[name].append(marks["ssh"])
            guest_side = ""
            if name == "guest-docker":
                times["docker"].append(marks["docker"])
                began, answered = (uptime_of(marks["console"], "docker: starting dockerd"),
                                   uptime_of(marks["console"], "docker: dockerd .* answers"))
                times["dockerd"].append(answered - began)
                guest_side = (f" (guest uptime: boot complete {uptime_of(marks['console'], 'boot complete'):.1f}, "
                              f"dockerd started {began:.1f}, answers {answered:.1f})")
            print(f"  {name:13s} ssh {marks['ssh']:5.1f} s" + (f", docker ready {marks['docker']:5.1f} s"
                                                                 if "docker" in marks else "") + guest_side,
                  flush=True)
    med = {key: statistics.median(values) for key, values in times.items()}
    print(f"median ssh-ready: guest {med['guest']:.1f} s, guest-docker {med['guest-docker']:.1f} s; "
          f"docker-ready {med['docker']:.1f} s")
    print(f"ratio docker-ready / ssh-ready (guest-docker): {med['docker'] / med['guest-docker']:.2f} (target <= 1.25)")
    print(f"ratio ssh-ready guest-docker / guest: {med['guest-docker'] / med['guest']:.2f}")
    print(f"dockerd's own start (exec to answering on its socket, guest time): median {med['dockerd']:.1f} s, "
          f"{med['dockerd'] / med['guest-docker']:.2f} x ssh-ready: what bounds the ratio from below")
    return 0


if __name__ == "__main__":
    sys.exit(main())
