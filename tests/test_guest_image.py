"""The test guest (guest/build.py): its ISO is shaped like boot2docker's, and booted under QEMU
it behaves like boot2docker where b2dkit depends on it.

Oracles are independent tools: isoinfo/xorriso/cpio for the image, QEMU booting the real ISO
through ISOLINUX, paramiko over a forwarded port, and the raw disk image read from the host.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from guestvm import MAGIC, GuestVM, make_format_me_disk

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "guest" / "build.py"
LABEL = b"boot2docker-data"


def run_build(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BUILD_SCRIPT), *args], capture_output=True, text=True)
    if proc.returncode:
        pytest.fail(f"guest/build.py failed: {proc.stderr.strip()}")
    return proc


def iso_path_from(proc: subprocess.CompletedProcess) -> Path:
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def guest_iso() -> Path:
    iso = iso_path_from(run_build())
    assert iso.is_file()
    return iso


def isoinfo(iso: Path, *args) -> str:
    return subprocess.run(["isoinfo", "-i", str(iso), *args], capture_output=True, text=True,
                          check=True).stdout


# --- the image --------------------------------------------------------------------------------

def test_iso_has_boot2docker_v19_layout(guest_iso):
    paths = set(isoinfo(guest_iso, "-R", "-f").split())
    assert {"/isolinux/isolinux.cfg", "/isolinux/isolinux.bin", "/isolinux/boot.cat",
            "/boot/vmlinuz", "/boot/initrd.img"} <= paths
    assert "/boot/isolinux/isolinux.cfg" not in paths  # that is the <= v18.06 layout


def test_volume_id_is_where_docker_machine_reads_it(guest_iso):
    assert "Volume id: b2d-v" in isoinfo(guest_iso, "-d")
    with open(guest_iso, "rb") as f:
        f.seek(0x8028)
        volume_id = f.read(32).rstrip(b" ").decode()
    assert volume_id.startswith("b2d-v") and volume_id.split("-v", 1)[1][0].isdigit()


def test_el_torito_and_isohybrid_as_make_b2d_iso(guest_iso):
    mkisofs = subprocess.run(["xorriso", "-indev", str(guest_iso), "-report_el_torito", "as_mkisofs"],
                             capture_output=True, text=True, check=True).stdout
    for option in ("-b '/isolinux/isolinux.bin'", "-c '/isolinux/boot.cat'", "-no-emul-boot",
                   "-boot-load-size 4", "-boot-info-table", "-isohybrid-mbr"):
        assert option in mkisofs
    area = subprocess.run(["xorriso", "-indev", str(guest_iso), "-report_system_area", "plain"],
                          capture_output=True, text=True, check=True).stdout
    assert "MBR" in area and "isohybrid" in area
    with open(guest_iso, "rb") as f:
        mbr = f.read(512)
    assert mbr[:2] == b"\x33\xed" and mbr[510:] == b"\x55\xaa"  # isohdpfx.bin + boot signature


def test_isolinux_cfg_boots_on_serial_with_the_b2d_boot_codes(guest_iso):
    cfg = isoinfo(guest_iso, "-R", "-x", "/isolinux/isolinux.cfg")
    lines = cfg.splitlines()
    assert lines[0] == "serial 0 115200"
    assert sum(line.startswith("label ") for line in lines) == 1
    [append] = [line.split(None, 1)[1] for line in lines if line.strip().startswith("append ")]
    codes = append.split()
    assert codes[:2] == ["loglevel=3", "console=ttyS0"]
    assert "waitusb=5:LABEL=boot2docker-data" in codes and "noembed" in codes


def test_initrd_contents_and_modes(guest_iso):
    initrd = subprocess.run(["isoinfo", "-i", str(guest_iso), "-R", "-x", "/boot/initrd.img"],
                            capture_output=True, check=True).stdout
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=gzip.decompress(initrd),
                             capture_output=True, check=True).stdout.decode()
    modes = {line.split()[-1]: line.split()[0] for line in listing.splitlines() if "->" not in line}
    for required in ("init", "bin/busybox", "usr/sbin/dropbear", "usr/lib/sftp-server", "sbin/mke2fs",
                     "etc/init.d/rcS", "etc/udhcpc/default.script"):
        assert required in modes, required
    assert modes["usr/bin/sudo"] == "-rwsr-xr-x"
    assert modes["etc/sudoers"] == "-r--r-----"
    assert modes["etc/shadow"] == "-rw-------"
    assert modes["dev/console"].startswith("c")
    assert any(path.endswith("/ext4.ko") for path in modes)


def test_build_is_cached_and_reproducible(guest_iso, tmp_path):
    again = run_build()
    assert iso_path_from(again) == guest_iso and "built" not in again.stderr  # cache hit: no work
    fresh = run_build("--out", str(tmp_path))
    fresh_iso = iso_path_from(fresh)
    assert fresh_iso.parent.name == guest_iso.parent.name  # same inputs, same key
    assert "built" in fresh.stderr
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (guest_iso, fresh_iso)]
    assert digest[0] == digest[1]


# --- booting it ------------------------------------------------------------------------------

def read_superblock(disk: Path) -> tuple[bytes, bytes]:
    """(label, uuid) of the ext4 filesystem in the first MBR partition, read from the host side."""
    with open(disk, "rb") as f:
        mbr = f.read(512)
        start = struct.unpack_from("<I", mbr, 446 + 8)[0]
        f.seek(start * 512 + 1024)
        sb = f.read(1024)
    assert sb[0x38:0x3A] == b"\x53\xef", "no ext2/3/4 superblock in partition 1"
    return sb[0x78:0x88].rstrip(b"\0"), sb[0x68:0x78]


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory):
    private = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path_factory.mktemp("key") / "id_ed25519"
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    os.chmod(path, 0o600)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH)
    return paramiko.Ed25519Key.from_private_key_file(str(path)), public + b" b2dkit-test\n"


@pytest.fixture(scope="module")
def tz_iso(guest_iso, tmp_path_factory) -> Path:
    """The guest remastered with tz=CST-8 the way boot2docker users did it (edit the append line)."""
    work = tmp_path_factory.mktemp("remaster")
    cfg = isoinfo(guest_iso, "-R", "-x", "/isolinux/isolinux.cfg")
    patched = "".join(line + " tz=CST-8\n" if line.strip().startswith("append ") else line + "\n"
                      for line in cfg.splitlines())
    (work / "isolinux.cfg").write_text(patched)
    out = work / "b2d-tz.iso"
    subprocess.run(["xorriso", "-indev", str(guest_iso), "-outdev", str(out), "-compliance", "no_emul_toc",
                    "-map", str(work / "isolinux.cfg"), "/isolinux/isolinux.cfg",
                    "-boot_image", "any", "replay"], capture_output=True, check=True)
    return out


@pytest.fixture(scope="module")
def vm(tz_iso, ssh_key, tmp_path_factory):
    work = tmp_path_factory.mktemp("vm")
    disk = work / "disk.img"
    header = make_format_me_disk(disk, ssh_key[1])
    guest = GuestVM(tz_iso, disk, work, ssh_key[0])
    guest.header = header
    try:
        guest.start()
        yield guest
    finally:
        guest.kill()


def test_boots_via_isolinux_and_formats_the_format_me_disk(vm):
    serial = (vm.workdir / "serial-1.log").read_text()
    assert "ISOLINUX" in serial and "Loading /boot/vmlinuz" in serial
    assert "b2dkit-guest: disk: /dev/sda has the format-me header, saved userdata.tar" in serial
    assert "b2dkit-guest: disk: formatted /dev/sda1 as ext4 label boot2docker-data" in serial
    assert vm.run("cat /var/log/boot.log").count("b2dkit-guest: ") >= 5


def test_tz_boot_code_reaches_ssh_sessions(vm):
    assert "tz=CST-8" in vm.run("cat /proc/cmdline").split()
    assert vm.run("date +%Z").strip() == "CST"  # non-interactive: dropbear passes TZ on (-e)
    assert vm.run("date +%z").strip() == "+0800"
    assert vm.run("cat /etc/sysconfig/timezone").strip() == "TZ=CST-8"
    assert vm.run("env -i sh -l -c 'echo $TZ'").strip() == "CST-8"  # login shells via /etc/profile


def test_data_disk_is_ext4_labelled_and_holds_boot2docker_state(vm):
    assert vm.run("awk '$2 == \"/mnt/sda1\" { print $1, $3 }' /proc/mounts").strip() == "/dev/sda1 ext4"
    label, _ = read_superblock(vm.disk)
    assert label == LABEL
    with open(vm.disk, "rb") as f:
        assert not f.read(64).startswith(MAGIC)  # zeroed, or every boot would re-format
    for link in ("/var/lib/boot2docker", "/var/lib/docker"):
        assert vm.run(f"readlink {link}").strip() == "/mnt/sda1" + link
    kept = vm.run("sha256sum /mnt/sda1/var/lib/boot2docker/userdata.tar").split()[0]
    assert kept == hashlib.sha256(vm.header).hexdigest()
    assert "dropbear_ed25519_host_key" in vm.run("sudo ls /mnt/sda1/var/lib/boot2docker/ssh")


def test_user_docker_gets_the_disk_keys(vm, ssh_key):
    assert vm.run("id -un").strip() == "docker"
    stat = vm.run("stat -c '%U %a %n' /home/docker/.ssh /home/docker/.ssh/authorized_keys").splitlines()
    assert stat == ["docker 700 /home/docker/.ssh", "docker 600 /home/docker/.ssh/authorized_keys"]
    assert vm.run("cat /home/docker/.ssh/authorized_keys").encode() == ssh_key[1]
    assert MAGIC.decode() not in vm.run("ls -a /home/docker")
    shell = vm.run("awk -F: '$1 == \"docker\" { print $7 }' /etc/passwd").strip()
    assert shell in vm.run("cat /etc/shells").split()  # dropbear refuses users with other shells
    # The password login boot2docker documents (docker/tcuser) works too.
    vm.connect(password="tcuser").close()


def test_passwordless_sudo_for_what_b2dkit_does(vm):
    assert vm.run("sudo -n id -u").strip() == "0"
    vm.run("sudo mkdir -p /mnt/sda1/dev && sudo chown docker /mnt/sda1/dev")
    assert vm.run("stat -c %U /mnt/sda1/dev").strip() == "docker"
    now = int(time.time())
    vm.run(f"sudo date -s @{now}")
    assert abs(int(vm.run("date +%s")) - now) < 10


def test_sftp_both_ways(vm):
    vm.run("sudo mkdir -p /mnt/sda1/dev && sudo chown docker /mnt/sda1/dev")
    payload = os.urandom(200_000)
    sftp = vm.client.open_sftp()
    try:
        with sftp.open("/mnt/sda1/dev/blob.bin", "wb") as f:
            f.write(payload)
        assert vm.run("sha256sum /mnt/sda1/dev/blob.bin").split()[0] == hashlib.sha256(payload).hexdigest()
        vm.run("echo from-guest > /mnt/sda1/dev/back.txt")
        with sftp.open("/mnt/sda1/dev/back.txt", "rb") as f:
            assert f.read() == b"from-guest\n"
    finally:
        sftp.close()


def test_http_server_answers_on_the_forwarded_port(vm):
    with urllib.request.urlopen(f"http://127.0.0.1:{vm.http_port}/", timeout=10) as reply:
        assert reply.status == 200
        body = reply.read().decode()
    assert "b2dkit-guest" in body and vm.run("hostname").strip() in body


def test_reboot_keeps_the_disk_but_not_the_ram(vm):
    """The seed's contract: /mnt/sda1 persists, the rest is RAM; the pinned host key stays valid."""
    vm.run("sudo mkdir -p /mnt/sda1/dev && sudo chown docker /mnt/sda1/dev")
    vm.run("echo persisted > /mnt/sda1/dev/keep.txt && echo volatile > /home/docker/gone.txt")
    key_before = vm.host_key()
    _, uuid_before = read_superblock(vm.disk)
    vm.powerdown()
    first = vm.serial_text()
    assert "b2dkit-guest: data disk unmounted" in first and "reboot: Power down" in first

    vm.start()  # RejectPolicy now: a different host key would fail to connect
    serial = vm.serial_text()
    assert "formatted" not in serial and "b2dkit-guest: disk: mounted /dev/sda1 at /mnt/sda1" in serial
    assert read_superblock(vm.disk)[1] == uuid_before
    assert vm.host_key() == key_before
    assert vm.run("cat /mnt/sda1/dev/keep.txt") == "persisted\n"
    assert vm.run("test -e /home/docker/gone.txt && echo yes || echo no") == "no\n"
    assert vm.run("ls -a /home/docker").split() == [".", "..", ".ssh"]
    assert vm.run("date +%Z").strip() == "CST"
