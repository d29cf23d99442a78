#!/usr/bin/env python3
"""Build the b2dkit test guest: a small boot2docker-compatible ISO made from Debian packages.

VirtualBox cannot run where b2dkit is tested, and the real boot2docker.iso is a 50 MB download
of a dead project, so the QEMU tests boot this stand-in instead. It copies what b2dkit relies on
(ISO layout, tz= boot code, the format-me persistent disk, user docker with sudo, SSH/SFTP).
Two flavours: ``guest`` (no Docker, the fastest boot) and ``guest-docker`` (Docker Engine from
Debian's docker.io in a squashfs on the CD, mounted at /usr/local, plus an offline busybox base
image). See guest/README.md.

    python3 guest/build.py [--flavour guest-docker] [--out DIR]   # prints the ISO path (cached by input hash)

Stdlib only, so it runs before the project venv exists. Needs root only to read
/boot/vmlinuz-* (Debian installs the kernel image mode 0600).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Optional

GUEST_DIR = Path(__file__).resolve().parent
ROOTFS = GUEST_DIR / "rootfs"
DOCKER_ROOTFS = GUEST_DIR / "rootfs-docker"  # laid over rootfs/ in the guest-docker flavour
FLAVOURS = ("guest", "guest-docker")
DEFAULT_OUT = GUEST_DIR / "out"
ISO_NAME = "b2d-guest.iso"

# The last boot2docker release; "b2d-v" is what docker-machine's version detection reads.
VOLUME_ID = "b2d-v19.03.12-b2dkit"
# Fixed timestamps (the v19.03.12 release day) make the ISO byte-for-byte reproducible.
SOURCE_DATE_EPOCH = 1593388800

# Packages whose files end up in the image (their versions are part of the cache key).
PACKAGES = (
    "linux-image-amd64", "busybox-static", "dropbear-bin", "openssh-sftp-server", "e2fsprogs",
    "sudo", "libc6", "libpam-modules", "isolinux", "syslinux-common", "xorriso", "kmod",
    "netcat-traditional",
)

# Dynamic programs copied with the libraries ldd finds: {path in guest: path on host}.
BINARIES = {
    "/usr/sbin/dropbear": "/usr/sbin/dropbear",
    "/usr/bin/dropbearkey": "/usr/bin/dropbearkey",
    # Debian's dropbear has this path compiled in for the "sftp" subsystem.
    "/usr/lib/sftp-server": "/usr/lib/openssh/sftp-server",
    # busybox only makes ext2; boot2docker's disk is ext4.
    "/sbin/mke2fs": "/sbin/mke2fs",
    "/usr/bin/sudo": "/usr/bin/sudo",
    # busybox's nc has no UDP: the UDP echo on port 53 (UDP forwards tested end to end).
    "/usr/bin/nc.traditional": "/bin/nc.traditional",
    "/usr/libexec/sudo/sudoers.so": "/usr/libexec/sudo/sudoers.so",
    "/lib/x86_64-linux-gnu/security/pam_permit.so": "/lib/x86_64-linux-gnu/security/pam_permit.so",
    "/lib/x86_64-linux-gnu/security/pam_deny.so": "/lib/x86_64-linux-gnu/security/pam_deny.so",
}
SYMLINKS = {
    "/sbin/mkfs.ext4": "mke2fs",
    "/usr/lib/openssh/sftp-server": "../sftp-server",
}
GUEST_APT = "busybox-static dropbear-bin openssh-sftp-server e2fsprogs sudo libpam-modules netcat-traditional"
HOST_FILES = {"/etc/mke2fs.conf": "/etc/mke2fs.conf"}

# -- guest-docker: Docker Engine the boot2docker way, from Debian packages only ----------------
# The binaries are ~150 MB: in the gzip initramfs every boot would inflate them into RAM, so
# they go into a squashfs on the CD that the guest mounts read-only at /usr/local (pages are
# read and decompressed only when used). Paths are relative to /usr/local.
DOCKER_APT = "docker.io containerd runc tini iptables squashfs-tools"
DOCKER_PACKAGES = (
    "docker.io", "containerd", "runc", "tini", "iptables", "squashfs-tools",
    "libdevmapper1.02.1", "libsystemd0", "libseccomp2", "libgcrypt20", "libcap2", "libxtables12",
)
DOCKER_BINARIES = {
    "bin/docker": "/usr/bin/docker",
    "bin/dockerd": "/usr/sbin/dockerd",
    "bin/docker-proxy": "/usr/sbin/docker-proxy",
    "bin/docker-init": "/usr/bin/tini-static",
    "bin/containerd": "/usr/bin/containerd",
    "bin/containerd-shim-runc-v2": "/usr/bin/containerd-shim-runc-v2",
    "bin/runc": "/usr/sbin/runc",
    # Legacy iptables, as boot2docker had: no nf_tables modules needed.
    "sbin/xtables-legacy-multi": "/usr/sbin/xtables-legacy-multi",
}
DOCKER_SYMLINKS = {
    f"sbin/{name}": "xtables-legacy-multi"
    for name in ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save",
                 "ip6tables-restore")
}
XTABLES_DIR = "/usr/lib/x86_64-linux-gnu/xtables"  # iptables' compiled-in plugin directory
# What dockerd needs from the kernel (Debian builds them =m), loaded by /etc/init.d/docker.
DOCKER_MODULES = (
    "squashfs", "overlay", "bridge", "veth", "br_netfilter", "nf_nat", "nf_conntrack",
    "ip_tables", "iptable_nat", "iptable_filter", "xt_conntrack", "xt_MASQUERADE", "xt_addrtype",
    "xt_nat", "xt_tcpudp", "ipt_REJECT", "nf_conntrack_netlink",
)
SQUASHFS_NAME = "b2dkit/usr-local.sqfs"  # on the ISO; rootfs-docker/etc/init.d/usr-local mounts it
# zstd 3: a 1 s squash on the build machine (level 15 took 45 s for 10% less); reading is as fast.
SQUASHFS_COMP = ("-comp", "zstd", "-Xcompression-level", "3")
# The offline base image: busybox-static as a `docker load`-able tarball, loaded at first boot.
BASE_IMAGE_TAG = "b2dkit/busybox:latest"
BASE_IMAGE_FILE = "share/b2dkit/images/busybox.tar"

# Everything Debian builds as =m that a boot2docker-like VM needs under QEMU or VirtualBox
# (disks on AHCI/PIIX/virtio, virtio-net/e1000 NICs, ext4, the ACPI power button, sshfs' fuse).
MODULES = (
    "ata_piix", "ahci", "sd_mod", "sr_mod", "isofs", "ext4", "crc32c_generic", "crc32c_intel",
    "virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net", "e1000", "e1000e",
    "fuse", "loop", "button", "evdev",
)

# Modes that differ from "0755 if executable in git, else 0644".
MODES = {"/etc/shadow": 0o600, "/etc/sudoers": 0o440, "/usr/bin/sudo": 0o4755}
DIRS = {
    "/proc": 0o555, "/sys": 0o555, "/dev": 0o755, "/run": 0o755, "/tmp": 0o1777, "/root": 0o700,
    "/home": 0o755, "/mnt": 0o755, "/var/log": 0o755, "/var/run": 0o755, "/var/www": 0o755,
}

ISOLINUX_CFG = """\
serial 0 115200
default boot2docker
prompt 1
timeout 2

label boot2docker
\tkernel /boot/vmlinuz
\tinitrd /boot/initrd.img
# http://tinycorelinux.net/corebook.pdf (chapter 10 -- bootcodes explained)
\tappend loglevel=3 console=ttyS0 waitusb=5:LABEL=boot2docker-data base norestore noembed
"""


class BuildError(Exception):
    """A missing package or unreadable input, with what to do about it."""


def _run(args, **kwargs) -> str:
    try:
        proc = subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)
    except FileNotFoundError as exc:
        raise BuildError(f"{args[0]} not found: {apt_install(_apt_hint(args[0]))}") from exc
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{' '.join(map(str, args))} failed: {exc.stderr.strip()[-300:]}") from exc
    return proc.stdout


def apt_install(*names: str) -> str:
    """The install command as this user types it: b2dkit.install's rule (root runs apt-get itself:
    a bare machine may have no sudo), kept here because guest/ runs without b2dkit installed."""
    return ("" if os.geteuid() == 0 else "sudo ") + "apt-get install " + " ".join(names)


def _apt_hint(program: str) -> str:
    return {"xorriso": "xorriso", "depmod": "kmod", "modprobe": "kmod", "ldd": "libc-bin",
            "mksquashfs": "squashfs-tools", "dpkg-query": "dpkg"}.get(program, program)


def kernel_version() -> str:
    """The kernel linux-image-amd64 points at (not the running one: we may be in a container)."""
    depends = _run(["dpkg-query", "-W", "-f", "${Depends}", "linux-image-amd64"])
    match = re.search(r"linux-image-([^\s,|]+)", depends)
    if not match:
        raise BuildError(f"cannot tell the kernel version: {apt_install('linux-image-amd64')}")
    return match.group(1)


def missing_packages(flavour: str = "guest") -> list[str]:
    """The packages dpkg does not list as installed: what ``apt-get install`` must add (doctor asks)."""
    names = packages(flavour)
    if shutil.which("dpkg-query") is None:
        return list(names)
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\\n", *names],
                          capture_output=True, text=True)
    installed = {line.split()[0] for line in proc.stdout.splitlines() if line.endswith(" installed")}
    return [name for name in names if name not in installed]


def check_flavour(flavour: str) -> str:
    if flavour not in FLAVOURS:
        raise BuildError(f"unknown guest flavour {flavour!r}: use one of {', '.join(FLAVOURS)}")
    return flavour


def packages(flavour: str = "guest") -> tuple:
    return PACKAGES + (DOCKER_PACKAGES if flavour == "guest-docker" else ())


def rootfs_dirs(flavour: str = "guest") -> tuple:
    return (ROOTFS, DOCKER_ROOTFS) if flavour == "guest-docker" else (ROOTFS,)


def package_versions(flavour: str = "guest") -> str:
    names = packages(flavour)
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${Package}=${Version}\\n", *names],
                          capture_output=True, text=True)
    missing = re.findall(r"no packages found matching (\S+)", proc.stderr)
    if missing or proc.returncode:
        names = " ".join(missing or names)
        raise BuildError(f"missing Debian packages: {apt_install(names)}")
    return proc.stdout


def input_key(kver: str, flavour: str = "guest") -> str:
    """Hash of everything that shapes the image, so a rebuild happens only when one changes."""
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    digest.update(flavour.encode())
    for root in rootfs_dirs(flavour):
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            digest.update(f"{root.name}/{path.relative_to(root)}:{os.access(path, os.X_OK)}\n".encode())
            digest.update(path.read_bytes())
    digest.update(kver.encode())
    digest.update(package_versions(flavour).encode())
    return digest.hexdigest()[:16]


class Tree:
    """The initramfs as an in-memory file list, written as a reproducible newc cpio archive."""

    def __init__(self):
        self.entries: dict[str, tuple] = {}

    def _parents(self, path: str):
        parent = os.path.dirname(path)
        if parent != "/" and parent not in self.entries:
            self.dir(parent)

    def dir(self, path: str, mode: int = 0o755):
        self._parents(path)
        self.entries[path] = ("dir", 0o040000 | mode, b"")

    def file(self, path: str, data: bytes, mode: int = 0o644):
        self._parents(path)
        self.entries[path] = ("file", 0o100000 | MODES.get(path, mode), data)

    def symlink(self, path: str, target: str):
        self._parents(path)
        self.entries[path] = ("link", 0o120777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600):
        self._parents(path)
        self.entries[path] = ("chr", 0o020000 | mode, (major, minor))

    def cpio(self) -> bytes:
        out = bytearray()

        def record(ino, mode, nlink, data, name, rdev=(0, 0)):
            name_b = name.encode() + b"\0"
            fields = (ino, mode, 0, 0, nlink, SOURCE_DATE_EPOCH, len(data), 0, 0, *rdev, len(name_b), 0)
            out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + name_b)
            out.extend(b"\0" * (-len(out) % 4))
            out.extend(data)
            out.extend(b"\0" * (-len(out) % 4))

        for ino, path in enumerate(sorted(self.entries), start=1):
            kind, mode, payload = self.entries[path]
            if kind == "chr":
                record(ino, mode, 1, b"", path.lstrip("/"), rdev=payload)
            else:
                record(ino, mode, 2 if kind == "dir" else 1, payload, path.lstrip("/"))
        record(0, 0, 1, b"", "TRAILER!!!")
        return bytes(out)


def _libraries(binary: str) -> list[str]:
    """Shared objects a dynamic binary needs, as the paths the loader will look for."""
    libs = []
    for line in _run(["ldd", binary]).splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            libs.append(match.group(1))
    return libs


def add_busybox(tree: Tree):
    tree.file("/bin/busybox", Path("/bin/busybox").read_bytes(), 0o755)
    for applet in _run(["/bin/busybox", "--list-full"]).split():
        path = "/" + applet
        if path != "/bin/busybox":
            tree.symlink(path, "/bin/busybox")


def add_binaries(tree: Tree):
    for guest_path, host_path in BINARIES.items():
        if not os.path.exists(host_path):
            raise BuildError(f"{host_path} is missing: {apt_install(GUEST_APT)}")
        tree.file(guest_path, Path(host_path).read_bytes(), 0o755)
        for lib in _libraries(host_path):
            if lib not in tree.entries:
                tree.file(lib, Path(lib).resolve().read_bytes(), 0o755)
    for guest_path, target in SYMLINKS.items():
        tree.symlink(guest_path, target)
    for guest_path, host_path in HOST_FILES.items():
        tree.file(guest_path, Path(host_path).read_bytes())


def add_modules(tree: Tree, kver: str, scratch: Path, modules=MODULES):
    """Copy the modules and their dependencies, then let depmod index just those."""
    listing = _run(["modprobe", "-S", kver, "--show-depends", "-a", *modules])
    src_root = Path("/lib/modules") / kver
    dst_root = scratch / "lib" / "modules" / kver
    for ko in sorted(set(re.findall(r"^insmod (\S+)", listing, re.M))):
        rel = Path(ko).relative_to(src_root)
        (dst_root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ko, dst_root / rel)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (src_root / name).exists():
            shutil.copyfile(src_root / name, dst_root / name)
    _run(["depmod", "-b", str(scratch), kver])
    for path in sorted(p for p in dst_root.rglob("*") if p.is_file()):
        tree.file("/" + str(path.relative_to(scratch)), path.read_bytes())


def add_rootfs(tree: Tree, root: Path = ROOTFS):
    for path in sorted(root.rglob("*")):
        guest_path = "/" + str(path.relative_to(root))
        if path.is_dir():
            tree.dir(guest_path)
        else:
            tree.file(guest_path, path.read_bytes(), 0o755 if os.access(path, os.X_OK) else 0o644)


def make_initrd(kver: str, scratch: Path, flavour: str = "guest", usr_local_libs=()) -> bytes:
    """The initramfs; ``usr_local_libs`` are libraries the squashfs brings, linked from /lib."""
    tree = Tree()
    for path, mode in DIRS.items():
        tree.dir(path, mode)
    tree.chardev("/dev/console", 5, 1)
    add_busybox(tree)
    add_binaries(tree)
    modules = MODULES + (DOCKER_MODULES if flavour == "guest-docker" else ())
    add_modules(tree, kver, scratch, modules)
    if flavour == "guest-docker":
        tree.dir("/usr/local")
        # The loader has no ld.so.cache to find /usr/local/lib: link what it looks for.
        for lib in usr_local_libs:
            if lib not in tree.entries:
                tree.symlink(lib, f"/usr/local/lib/{os.path.basename(lib)}")
        tree.symlink(XTABLES_DIR, "/usr/local/lib/xtables")
    for root in rootfs_dirs(flavour):
        add_rootfs(tree, root)  # last: our files win over anything copied from the host
    return gzip.compress(tree.cpio(), compresslevel=9, mtime=0)


# -- the offline base image -------------------------------------------------------------------


def _tar(members) -> bytes:
    """A reproducible tar of (name, kind, data_or_target, mode): no owners, times or host names."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, kind, payload, mode in members:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode, info.uid, info.gid = SOURCE_DATE_EPOCH, mode, 0, 0
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, payload
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def base_image(busybox: bytes, applets, version: str, tag: str = BASE_IMAGE_TAG):
    """(tarball, image id): busybox as a one-layer image in the `docker save` layout.

    The image id is the sha256 of the config, so the guest can tell whether the daemon already
    has exactly this image without loading it again.
    """
    dirs = {"bin", "dev", "etc", "proc", "root", "sys", "tmp", "usr", "usr/bin", "usr/sbin", "sbin",
            "var", "var/www"}
    links = {}
    for applet in applets:
        rel = applet.strip("/")
        if rel != "bin/busybox":
            links[rel] = "/bin/busybox"
            dirs.add(posixpath.dirname(rel))
    files = {
        "bin/busybox": (busybox, 0o755),
        "etc/passwd": (b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
                       0o644),
        "etc/group": (b"root:x:0:\nnogroup:x:65534:\n", 0o644),
    }
    members = []
    for name in sorted(dirs | set(links) | set(files)):
        if name in files:
            members.append((name, "file", files[name][0], files[name][1]))
        elif name in links:
            members.append((name, "link", links[name], 0o777))
        else:
            mode = {"tmp": 0o1777, "root": 0o700}.get(name, 0o755)
            members.append((name + "/", "dir", None, mode))
    layer = _tar(members)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(SOURCE_DATE_EPOCH))
    config = _canonical_json({
        "architecture": "amd64", "os": "linux", "created": created,
        "config": {"Cmd": ["sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": f"b2dkit guest/build.py from busybox-static {version}"}],
    })
    image_id = hashlib.sha256(config).hexdigest()
    layer_dir = hashlib.sha256(diff_id.encode()).hexdigest()
    repo, _, label = tag.rpartition(":")
    manifest = [{"Config": f"{image_id}.json", "RepoTags": [tag], "Layers": [f"{layer_dir}/layer.tar"]}]
    tarball = _tar([
        (f"{image_id}.json", "file", config, 0o644),
        (f"{layer_dir}/", "dir", None, 0o755),
        (f"{layer_dir}/VERSION", "file", b"1.0", 0o644),
        (f"{layer_dir}/layer.tar", "file", layer, 0o644),
        ("manifest.json", "file", _canonical_json(manifest), 0o644),
        ("repositories", "file", _canonical_json({repo: {label: layer_dir}}), 0o644),
    ])
    return tarball, "sha256:" + image_id


# -- guest-docker: the /usr/local squashfs ----------------------------------------------------


def _package_version(name: str) -> str:
    return _run(["dpkg-query", "-W", "-f", "${Version}", name]).strip()


def make_usr_local(stage: Path, out: Path) -> list:
    """Stage Docker Engine, iptables and the base image under ``stage`` and squash it into ``out``.

    Returns the host library paths the binaries need (the initramfs links them to /usr/local/lib).
    """
    libs = set()
    for rel, host_path in DOCKER_BINARIES.items():
        if not os.path.exists(host_path):
            raise BuildError(f"{host_path} is missing: {apt_install(DOCKER_APT)}")
        _stage_file(stage / rel, Path(host_path).read_bytes(), 0o755)
        libs.update(_libraries(host_path) if _is_dynamic(host_path) else ())
    for rel, target in DOCKER_SYMLINKS.items():
        os.symlink(target, stage / rel)
    plugins = sorted(Path(XTABLES_DIR).glob("lib*t_*.so"))
    for plugin in plugins:
        if plugin.name.startswith(("libxt_", "libipt_", "libip6t_")):
            _stage_file(stage / "lib" / "xtables" / plugin.name, plugin.read_bytes(), 0o644)
            libs.update(_libraries(str(plugin)))
    libs = sorted(lib for lib in libs if not lib.startswith(("/lib64/", "/lib/x86_64-linux-gnu/libc.so")))
    for lib in libs:
        _stage_file(stage / "lib" / os.path.basename(lib), Path(lib).resolve().read_bytes(), 0o644)
    busybox = Path("/bin/busybox").read_bytes()
    applets = _run(["/bin/busybox", "--list-full"]).split()
    tarball, image_id = base_image(busybox, applets, _package_version("busybox-static"))
    _stage_file(stage / BASE_IMAGE_FILE, tarball, 0o644)
    _stage_file(stage / (BASE_IMAGE_FILE[: -len(".tar")] + ".id"), f"{BASE_IMAGE_TAG} {image_id}\n".encode(), 0o644)
    for path in [stage, *stage.rglob("*")]:
        os.utime(path, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH), follow_symlinks=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(["mksquashfs", str(stage), str(out), "-noappend", "-quiet", "-no-progress", "-all-root",
          "-no-xattrs", "-mkfs-time", str(SOURCE_DATE_EPOCH), "-all-time", str(SOURCE_DATE_EPOCH),
          *SQUASHFS_COMP])
    return libs


def _is_dynamic(path: str) -> bool:
    proc = subprocess.run(["ldd", path], capture_output=True, text=True)
    return "not a dynamic executable" not in proc.stdout + proc.stderr  # tini-static is static


def _stage_file(path: Path, data: bytes, mode: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def make_iso(kver: str, initrd: bytes, iso_dir: Path, out: Path, extra=None):
    """Lay out the ISO exactly like boot2docker v18.09+ and build it with make-b2d-iso.sh's flags.

    ``extra`` maps more ISO paths to host files (guest-docker: the /usr/local squashfs).
    """
    vmlinuz = Path(f"/boot/vmlinuz-{kver}")
    try:
        kernel = vmlinuz.read_bytes()
    except PermissionError as exc:
        raise BuildError(f"cannot read {vmlinuz} (Debian makes it 0600): run guest/build.py as root") from exc
    except FileNotFoundError as exc:
        raise BuildError(f"{vmlinuz} is missing: {apt_install('linux-image-amd64')}") from exc
    files = {
        "boot/vmlinuz": kernel,
        "boot/initrd.img": initrd,
        "isolinux/isolinux.cfg": ISOLINUX_CFG.encode(),
        "isolinux/isolinux.bin": Path("/usr/lib/ISOLINUX/isolinux.bin").read_bytes(),
        "isolinux/ldlinux.c32": Path("/usr/lib/syslinux/modules/bios/ldlinux.c32").read_bytes(),
    }
    for rel, data in files.items():
        (iso_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (iso_dir / rel).write_bytes(data)
    for rel, host_file in (extra or {}).items():
        (iso_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        os.rename(host_file, iso_dir / rel)
    for path in [iso_dir, *iso_dir.rglob("*")]:
        os.utime(path, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH))
    _run([
        "xorriso", "-as", "mkisofs", "-o", str(out), "-A", "Boot2Docker", "-V", VOLUME_ID,
        "-isohybrid-mbr", "/usr/lib/ISOLINUX/isohdpfx.bin",
        "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
        "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", str(iso_dir),
    ], env=env)


def cached(out_dir=None, flavour: str = "guest") -> Optional[Path]:
    """The guest ISO for the current inputs if it is already built, else None (never builds)."""
    out_dir = Path(out_dir) if out_dir else DEFAULT_OUT
    iso = out_dir / input_key(kernel_version(), check_flavour(flavour)) / ISO_NAME
    return iso if iso.exists() else None


def build(out_dir=None, quiet: bool = False, flavour: str = "guest") -> Path:
    """Return the guest ISO for the current inputs, building it only if it is not cached."""
    out_dir = Path(out_dir) if out_dir else DEFAULT_OUT
    kver = kernel_version()
    final = out_dir / input_key(kver, check_flavour(flavour))
    iso = final / ISO_NAME
    if iso.exists():
        return iso
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=out_dir))
    try:
        libs, extra = (), {}
        if flavour == "guest-docker":
            extra[SQUASHFS_NAME] = work / "usr-local.sqfs"
            libs = make_usr_local(work / "usr-local", extra[SQUASHFS_NAME])
            squashfs_bytes = extra[SQUASHFS_NAME].stat().st_size
            shutil.rmtree(work / "usr-local")
        initrd = make_initrd(kver, work / "modules", flavour, libs)
        make_iso(kver, initrd, work / "iso", work / ISO_NAME, extra)
        seconds = time.monotonic() - start
        info = {
            "flavour": flavour, "kernel": kver, "volume_id": VOLUME_ID,
            "iso_bytes": (work / ISO_NAME).stat().st_size, "initrd_bytes": len(initrd),
            "build_seconds": round(seconds, 2), "packages": package_versions(flavour).split(),
        }
        if extra:
            info["squashfs_bytes"] = squashfs_bytes
        (work / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
        shutil.rmtree(work / "iso")
        shutil.rmtree(work / "modules")
        try:
            os.rename(work, final)  # atomic: a half-built ISO never appears under the key
        except OSError:
            if not iso.exists():  # lost a race against a parallel build: theirs is as good
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        print(f"built {iso} ({flavour}) in {seconds:.1f} s: ISO {info['iso_bytes'] / 2**20:.1f} MiB, "
              f"initrd {len(initrd) / 2**20:.1f} MiB, kernel {kver}", file=sys.stderr)
    return iso


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help=f"cache directory (default {DEFAULT_OUT})")
    parser.add_argument("--flavour", default="guest", choices=FLAVOURS,
                        help="guest (no Docker, fastest boot) or guest-docker (Docker Engine on the CD)")
    parser.add_argument("--check", action="store_true",
                        help="only say whether it is built: print the path (exit 0) or exit 10")
    args = parser.parse_args(argv)
    try:
        if args.check:
            iso = cached(args.out, args.flavour)
            if iso is None:
                return 10
            print(iso)
            return 0
        print(build(args.out, flavour=args.flavour))
    except BuildError as exc:
        print(f"guest/build.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
