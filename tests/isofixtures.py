"""Build boot2docker-shaped ISOs with the real tools: xorriso + Debian's ISOLINUX.

Both layouts use the exact xorriso flags of the boot2docker build scripts
(../shared/reference/iso-remastering.md §0), so the fixtures have the same El Torito,
boot info table, isohybrid MBR, Rock Ridge and (legacy only) Joliet as real releases.
Used by the tests and by benchmarks/remaster.py.
"""

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

ISOLINUX_DIR = Path("/usr/lib/ISOLINUX")
MODULES_DIR = Path("/usr/lib/syslinux/modules/bios")
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "vbox-samples"
if not SAMPLES.is_dir():
    SAMPLES = Path("/work/shared/reference/vbox-samples")

LAYOUTS = {
    # boot2docker v18.09 ... v19.03.12, files/make-b2d-iso.sh
    "v19": {
        "dir": "isolinux",
        "kernel": "boot/vmlinuz",
        "cfg_sample": "isolinux.cfg",
        "flags": ["-A", "Boot2Docker"],
        "modules": ["ldlinux.c32", "menu.c32", "libutil.c32", "libcom32.c32"],
    },
    # boot2docker <= v18.06, rootfs/make_iso.sh
    "legacy": {
        "dir": "boot/isolinux",
        "kernel": "boot/vmlinuz64",
        "cfg_sample": "isolinux.legacy_pre_v18.09.cfg",
        "flags": ["-l", "-J", "-R"],
        "modules": ["ldlinux.c32"],
    },
}


def tools_available() -> Optional[str]:
    """None when everything is installed, else what is missing (for pytest.skip)."""
    for tool in ("xorriso", "isoinfo", "isovfy"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    for path in (ISOLINUX_DIR / "isolinux.bin", ISOLINUX_DIR / "isohdpfx.bin", MODULES_DIR / "ldlinux.c32"):
        if not path.exists():
            return f"{path} is missing (apt-get install isolinux syslinux-common)"
    return None


def sample_cfg(layout: str) -> bytes:
    return (SAMPLES / LAYOUTS[layout]["cfg_sample"]).read_bytes()


def cfg_path(layout: str) -> str:
    return "/" + LAYOUTS[layout]["dir"] + "/isolinux.cfg"


def read_cfg(path: Path, layout: str, view: str = "-R") -> bytes:
    """The ISO's isolinux.cfg as isoinfo reads it: an oracle independent of pycdlib."""
    return subprocess.run(
        ["isoinfo", view, "-i", str(path), "-x", cfg_path(layout)], capture_output=True, check=True
    ).stdout


def _random_file(path: Path, size: int, seed: str) -> None:
    """Deterministic incompressible bytes, fast enough for 500 MB."""
    block = hashlib.sha512(seed.encode()).digest() * 512  # 32 KiB
    with open(path, "wb") as fp:
        left = size
        counter = 0
        while left > 0:
            chunk = hashlib.sha256(f"{seed}{counter}".encode()).digest() + block
            fp.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
            counter += 1


def build_iso(
    out: Path,
    layout: str = "v19",
    cfg: Optional[bytes] = None,
    kernel: Optional[Path] = None,
    initrd_size: int = 50_000,
    volume_id: str = "b2d-v19.03.12",
    eltorito: bool = True,
    with_cfg: bool = True,
) -> Path:
    """Write a boot2docker-like ISO to ``out`` and return it."""
    spec = LAYOUTS[layout]
    out = Path(out)
    tree = out.with_name(out.name + ".tree")
    shutil.rmtree(tree, ignore_errors=True)
    boot_dir = tree / spec["dir"]
    boot_dir.mkdir(parents=True)
    (tree / "boot").mkdir(exist_ok=True)
    shutil.copy(ISOLINUX_DIR / "isolinux.bin", boot_dir / "isolinux.bin")
    for module in spec["modules"]:
        shutil.copy(MODULES_DIR / module, boot_dir / module)
    if with_cfg:
        (boot_dir / "isolinux.cfg").write_bytes(sample_cfg(layout) if cfg is None else cfg)
    if layout == "legacy":
        (boot_dir / "boot.msg").write_text("boot2docker\n")
    if kernel is not None:
        shutil.copy(kernel, tree / spec["kernel"])
    else:
        _random_file(tree / spec["kernel"], 100_000, "kernel")
    _random_file(tree / "boot" / "initrd.img", initrd_size, "initrd")
    argv = ["xorriso", "-as", "mkisofs", "-o", str(out), *spec["flags"], "-V", volume_id]
    if eltorito:
        argv += [
            "-isohybrid-mbr", str(ISOLINUX_DIR / "isohdpfx.bin"),
            "-b", f"{spec['dir']}/isolinux.bin", "-c", f"{spec['dir']}/boot.cat",
            "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
        ]  # fmt: skip
    argv.append(str(tree))
    subprocess.run(argv, check=True, capture_output=True)
    shutil.rmtree(tree)
    return out


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        for chunk in iter(lambda: fp.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- independent oracles -------------------------------------------------------------


def run(*argv) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, errors="replace")
    return proc.stdout + proc.stderr


def el_torito_report(iso: Path, mode: str = "plain") -> str:
    """``xorriso -report_el_torito`` with the image name taken out, for diffing two images."""
    text = subprocess.run(
        ["xorriso", "-indev", str(iso), "-report_el_torito", mode], capture_output=True, text=True, check=True
    ).stdout
    return text.replace(str(iso), "ISO").replace(iso.name, "ISO")


def system_area_report(iso: Path) -> str:
    return subprocess.run(
        ["xorriso", "-indev", str(iso), "-report_system_area", "plain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def listing(iso: Path, view: str, keep_lba: bool = True) -> str:
    """``isoinfo -R -l`` (view "-R"), ``-J -l`` or ``-l``; optionally without the extent column."""
    args = ["isoinfo", "-l", "-i", str(iso)] + ([view] if view else [])
    text = subprocess.run(args, capture_output=True, text=True, check=True, errors="replace").stdout
    if not keep_lba:
        text = re.sub(r"\[\s*\d+ (\d+)\]", r"[\1]", text)
    return text


def isoinfo_d(iso: Path) -> str:
    return subprocess.run(
        ["isoinfo", "-d", "-i", str(iso)], capture_output=True, text=True, check=True
    ).stdout


def isovfy(iso: Path) -> str:
    return run("isovfy", "-i", str(iso))


def extract(iso: Path, dest: Path) -> Path:
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(dest)],
        capture_output=True, check=True,
    )  # fmt: skip
    return dest


def tree_files(root: Path) -> dict:
    """{relative path: (mode, sha256)} for every file under ``root``."""
    found = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            found[str(path.relative_to(root))] = (path.stat().st_mode & 0o7777, sha256(path))
    return found
