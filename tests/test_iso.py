"""iso: remastered images keep everything that makes them boot; independent tools are the judges."""

import contextlib
import glob
import json
import os
import shutil
import re
import subprocess
import sys
import time
from pathlib import Path

import pycdlib
import pytest

import isofixtures as fx
from b2dkit import iso, isoprobe
from b2dkit.errors import InputError, InternalError, IsoError
from b2dkit.main import make_program

LAYOUTS = ["v19", "legacy"]


@pytest.fixture(scope="session", autouse=True)
def _tools():
    missing = fx.tools_available()
    if missing:
        pytest.skip(missing)


@pytest.fixture(scope="session")
def isos(tmp_path_factory):
    """One small ISO per boot2docker layout, built once."""
    root = tmp_path_factory.mktemp("isos")
    return {layout: fx.build_iso(root / f"{layout}.iso", layout) for layout in LAYOUTS}


@pytest.fixture(params=LAYOUTS)
def layout(request):
    return request.param


@pytest.fixture
def src(isos, layout, tmp_path):
    """A private copy, so a test that misbehaves cannot spoil the session image."""
    path = tmp_path / "src" / "boot2docker.iso"
    path.parent.mkdir()
    shutil.copy(isos[layout], path)
    return path


def no_leftovers(folder: Path):
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".part"]


def assert_same_boot_setup(before: Path, after: Path, moved: bool):
    assert fx.el_torito_report(after, "as_mkisofs") == fx.el_torito_report(before, "as_mkisofs")
    if not moved:
        assert fx.el_torito_report(after) == fx.el_torito_report(before)
    assert fx.system_area_report(after) == fx.system_area_report(before)
    assert "No errors found" in fx.isovfy(after)


def assert_only_cfg_changed(before: Path, after: Path, layout: str, tmp_path: Path, moved: bool):
    cfg_line = os.path.basename(fx.cfg_path(layout))
    for view in ("-R", "-J", "") if layout == "legacy" else ("-R", ""):
        old = fx.listing(before, view, keep_lba=not moved).splitlines()
        new = fx.listing(after, view, keep_lba=not moved).splitlines()
        assert len(old) == len(new)
        differing = [(a, b) for a, b in zip(old, new) if a != b]
        # Only the cfg's own line (its size) may differ: names, modes, owners are kept.
        assert all(cfg_line in a.lower() and cfg_line in b.lower() for a, b in differing), differing
        assert len(differing) <= 1
    old_files = fx.tree_files(fx.extract(before, tmp_path / "x-before"))
    new_files = fx.tree_files(fx.extract(after, tmp_path / "x-after"))
    assert old_files.keys() == new_files.keys()
    changed = {k for k in old_files if old_files[k] != new_files[k]}
    allowed = {fx.cfg_path(layout).lstrip("/")}
    boot_dir = fx.LAYOUTS[layout]["dir"]
    if moved:  # a relocated catalog and boot image carry their new LBAs inside
        allowed |= {f"{boot_dir}/boot.cat", f"{boot_dir}/isolinux.bin"}
    assert changed <= allowed and fx.cfg_path(layout).lstrip("/") in changed
    assert old_files[fx.cfg_path(layout).lstrip("/")][0] == new_files[fx.cfg_path(layout).lstrip("/")][0]


def append_tokens(cfg: bytes) -> list:
    """The tokens of the (only) append line, read with plain string handling."""
    (line,) = [ln for ln in cfg.splitlines() if ln.strip().lower().startswith(b"append ")]
    return line.split()[1:]


# --- the two paths ---------------------------------------------------------------------


def test_fast_path_edits_in_place_and_keeps_everything(src, layout, tmp_path):
    digest = fx.sha256(src)
    out = tmp_path / "out" / "b2d-tz.iso"
    out.parent.mkdir()
    result = iso.remaster(src, out, ["tz=CST-8"])
    assert result.method == "in-place"
    assert fx.sha256(src) == digest
    assert out.stat().st_size == src.stat().st_size
    assert_same_boot_setup(src, out, moved=False)
    assert_only_cfg_changed(src, out, layout, tmp_path, moved=False)
    cfg = fx.read_cfg(out, layout)
    assert append_tokens(cfg)[-1] == b"tz=CST-8"
    if layout == "legacy":
        assert fx.read_cfg(out, layout, "-J") == cfg
    assert "Volume id: b2d-v19.03.12" in fx.isoinfo_d(out)
    assert no_leftovers(out.parent) == []
    # Byte level (cmp -l): only the cfg's own sectors and its size fields (8 bytes in the
    # ISO 9660 record, 8 in the Joliet one) differ from the source.
    name = os.path.basename(fx.cfg_path(layout))
    cfg_line = next(ln for ln in fx.listing(src, "-R").splitlines() if ln.rstrip().endswith(name))
    lba = int(re.search(r"\[\s*(\d+) \d+\]", cfg_line).group(1))
    diff = subprocess.run(["cmp", "-l", str(src), str(out)], capture_output=True, text=True).stdout
    offsets = [int(line.split()[0]) - 1 for line in diff.splitlines()]
    outside = [o for o in offsets if not lba * 2048 <= o < (lba + 1) * 2048]
    assert offsets and len(outside) <= (16 if layout == "legacy" else 8), outside


def test_full_rewrite_keeps_boot_setup_names_and_modes(src, layout, tmp_path):
    digest = fx.sha256(src)
    out = tmp_path / "rewritten.iso"
    result = iso.remaster(src, out, ["tz=CST-8"], rewrite=True)
    assert result.method == "rewrite"
    assert fx.sha256(src) == digest
    assert_same_boot_setup(src, out, moved=True)
    assert_only_cfg_changed(src, out, layout, tmp_path, moved=True)
    before, after = fx.isoinfo_d(src), fx.isoinfo_d(out)
    for line in ("Volume id:", "Joliet", "Rock Ridge", "Nsect", "Bootid"):
        assert [ln for ln in before.splitlines() if line in ln] == [
            ln for ln in after.splitlines() if line in ln
        ]
    assert append_tokens(fx.read_cfg(out, layout))[-1] == b"tz=CST-8"


def test_cfg_that_outgrows_its_sectors_takes_the_rewrite(src, layout, tmp_path):
    codes = [f"x{i}=" + "y" * 60 for i in range(40)]  # ~2.6 KB more: one more sector
    out = tmp_path / "grown.iso"
    result = iso.remaster(src, out, codes)
    assert result.method == "rewrite"
    cfg = fx.read_cfg(out, layout)
    assert len(cfg) > 2048 and all(code.encode() in cfg for code in codes)
    assert fx.el_torito_report(out, "as_mkisofs") == fx.el_torito_report(src, "as_mkisofs")
    # One more sector crosses a cylinder: only the image and partition sizes may change.
    old, new = fx.system_area_report(src).splitlines(), fx.system_area_report(out).splitlines()
    sized = ("ISO image size/512", "MBR partition      :")
    assert [ln for ln in old if not ln.startswith(sized)] == [ln for ln in new if not ln.startswith(sized)]
    partition = next(ln for ln in new if ln.startswith("MBR partition      :"))
    assert int(partition.split()[-1]) * 512 == out.stat().st_size
    assert "No errors found" in fx.isovfy(out)


def test_unchanged_cfg_is_a_plain_copy(src, tmp_path):
    once = tmp_path / "once.iso"
    iso.remaster(src, once, ["tz=CST-8"])
    twice = tmp_path / "twice.iso"
    result = iso.remaster(once, twice, ["tz=CST-8"])
    assert (result.method, result.changed) == ("copy", False)
    assert fx.sha256(once) == fx.sha256(twice)


def test_replace_and_remove_codes_and_single_label(src, layout, tmp_path):
    out = tmp_path / "o.iso"
    iso.remaster(src, out, ["tz=UTC0"], remove=["base"], label="boot2docker")
    append = append_tokens(fx.read_cfg(out, layout))
    assert b"tz=UTC0" in append and b"base" not in append
    with pytest.raises(InputError, match="no label 'nope'"):
        iso.remaster(src, tmp_path / "p.iso", ["tz=CST-8"], label="nope")
    assert not (tmp_path / "p.iso").exists()


# --- what is verified before the rename ---------------------------------------------


def test_boot_info_table_and_mbr_agree_with_xorriso(src, tmp_path):
    out = tmp_path / "o.iso"
    iso.remaster(src, out, ["tz=CST-8"], rewrite=True)
    report = fx.el_torito_report(out)
    boot_lba = int(next(ln for ln in report.splitlines() if ln.startswith("El Torito boot img")).split()[-1])
    with open(out, "rb") as fp:
        table = isoprobe.boot_info_table(fp, boot_lba)
        mbr = isoprobe.isohybrid_mbr(fp)
    assert (table.pvd_lba, table.file_lba, table.checksum_ok) == (16, boot_lba, True)
    assert mbr.rba == 4 * boot_lba and mbr.signature_ok
    assert "boot-info-table" in report


def test_a_bad_result_is_caught_and_not_renamed(src, tmp_path, monkeypatch):
    real = iso._patch_in_place

    def edit_and_break_mbr(path, cfg, new_cfg):
        real(path, cfg, new_cfg)
        with open(path, "r+b") as fp:  # the kind of damage pitfall 4/5 cause: MBR points elsewhere
            fp.seek(432)
            fp.write(b"\x01\x00\x00\x00")

    monkeypatch.setattr(iso, "_patch_in_place", edit_and_break_mbr)
    out = tmp_path / "o.iso"
    with pytest.raises(InternalError, match="MBR boot image sector 1"):
        iso.remaster(src, out, ["tz=CST-8"])
    assert not out.exists() and no_leftovers(tmp_path) == []


def test_stale_boot_info_table_is_repaired_on_rewrite(src, tmp_path):
    """Pitfall 4: a source grown with ``xorriso -dev`` has a table pycdlib does not recognise."""
    grown = tmp_path / "grown.iso"
    shutil.copy(src, grown)
    extra = tmp_path / "extra.txt"
    extra.write_text("x")
    grow = ["xorriso", "-dev", str(grown), "-boot_image", "any", "replay"]
    subprocess.run([*grow, "-map", str(extra), "/extra.txt", "-commit"], capture_output=True, check=True)
    with open(grown, "rb") as fp:
        lba = isoprobe.boot_entries(fp)[0].lba
        stale = isoprobe.boot_info_table(fp, lba)
    assert stale is not None and not stale.valid  # the premise: pvd = session start + 16
    out = tmp_path / "o.iso"
    iso.remaster(grown, out, ["tz=CST-8"], rewrite=True)
    with open(out, "rb") as fp:
        entry = isoprobe.boot_entries(fp)[0]
        assert isoprobe.boot_info_table(fp, entry.lba).valid


@pytest.mark.slow
def test_large_image_keeps_isohybrid_geometry(tmp_path):
    """Pitfall 5: over 256 cylinders pycdlib would rewrite the MBR as 64 heads x 63 sectors."""
    big = fx.build_iso(tmp_path / "big.iso", "v19", initrd_size=300 * 1024 * 1024)
    out = tmp_path / "o.iso"
    iso.remaster(big, out, ["tz=CST-8"], rewrite=True)
    assert fx.system_area_report(out) == fx.system_area_report(big)
    assert out.stat().st_size == big.stat().st_size


# --- errors: one line, nothing written -----------------------------------------------


def assert_nothing_written(folder: Path, before: set):
    assert {p.name for p in folder.iterdir()} == before


def test_not_an_iso(tmp_path):
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    bogus = tmp_path / "bogus.iso"
    bogus.write_bytes(os.urandom(200_000))
    with pytest.raises(IsoError, match="not an ISO 9660 image") as err:
        iso.remaster(bogus, tmp_path / "o.iso", ["tz=CST-8"])
    assert "\n" not in str(err.value)
    assert_nothing_written(tmp_path, {"bogus.iso"})


def test_no_isolinux_cfg(tmp_path):
    src = fx.build_iso(tmp_path / "nocfg.iso", "v19", with_cfg=False)
    with pytest.raises(IsoError, match="no isolinux config"):
        iso.remaster(src, tmp_path / "o.iso", ["tz=CST-8"])
    assert not (tmp_path / "o.iso").exists()


def test_no_el_torito(tmp_path):
    src = fx.build_iso(tmp_path / "noboot.iso", "v19", eltorito=False)
    with pytest.raises(IsoError, match="no El Torito boot entry"):
        iso.remaster(src, tmp_path / "o.iso", ["tz=CST-8"])
    assert not (tmp_path / "o.iso").exists()


def test_out_is_src_even_through_another_spelling(src):
    for same in (src, src.parent / "." / src.name, src.parent.parent / "src" / src.name):
        with pytest.raises(InputError, match="is the source ISO"):
            iso.remaster(src, same, ["tz=CST-8"])
    link = src.parent / "link.iso"
    link.symlink_to(src)
    with pytest.raises(InputError, match="is the source ISO"):
        iso.remaster(src, link, ["tz=CST-8"])


def test_output_that_is_a_fifo_or_directory_is_refused_before_any_copy(src, tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        iso.remaster(src, fifo, ["tz=CST-8"])
    with pytest.raises(InputError, match="is a directory"):
        iso.remaster(src, tmp_path, ["tz=CST-8"])
    assert os.path.exists(fifo) and not list(tmp_path.glob(".*.part"))


def test_output_dir_missing_or_not_writable(src, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        iso.remaster(src, tmp_path / "nowhere" / "o.iso", ["tz=CST-8"])
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a directory unwritable for root here")
    else:
        locked.chmod(0o500)
    try:
        with pytest.raises(InputError, match="not writable"):
            iso.remaster(src, locked / "o.iso", ["tz=CST-8"])
    finally:
        subprocess.run(["chattr", "-i", str(locked)], capture_output=True)
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("code", ["tz=Asia/Shanghai", "tz=CST -8", "tz='CST-8'", "=x", ""])
def test_invalid_boot_code(src, tmp_path, code):
    with pytest.raises(InputError):
        iso.remaster(src, tmp_path / "o.iso", [code])
    assert not (tmp_path / "o.iso").exists()


def test_missing_source(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        iso.remaster(tmp_path / "none.iso", tmp_path / "o.iso", ["tz=CST-8"])


# --- interruption ----------------------------------------------------------------------


def test_interrupted_copy_leaves_no_file(src, tmp_path, monkeypatch):
    def half_copy(a, b):
        with open(a, "rb") as fin, open(b, "wb") as fout:
            fout.write(fin.read(src.stat().st_size // 2))
        raise KeyboardInterrupt

    monkeypatch.setattr(iso, "fast_copy", half_copy)
    with pytest.raises(KeyboardInterrupt):
        iso.remaster(src, tmp_path / "o.iso", ["tz=CST-8"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b2dkit-home", "src"]


def test_interrupted_rewrite_leaves_no_file(src, tmp_path, monkeypatch):
    real_write = pycdlib.PyCdlib._write_fp

    def write_then_die(self, outfp, blocksize, progress_cb, progress_opaque):
        def progress(done, total, opaque):
            if done > total // 2:
                raise KeyboardInterrupt  # Ctrl-C half way through the image

        return real_write(self, outfp, blocksize, progress, progress_opaque)

    monkeypatch.setattr(pycdlib.PyCdlib, "_write_fp", write_then_die)
    digest = fx.sha256(src)
    with pytest.raises(KeyboardInterrupt):
        iso.remaster(src, tmp_path / "o.iso", ["tz=CST-8"], rewrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b2dkit-home", "src"]
    assert fx.sha256(src) == digest


def test_existing_output_survives_a_failed_remaster(src, tmp_path, monkeypatch):
    out = tmp_path / "o.iso"
    out.write_bytes(b"previous")
    monkeypatch.setattr(iso, "_patch_in_place", lambda *a: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        iso.remaster(src, out, ["tz=CST-8"])
    assert out.read_bytes() == b"previous"


# --- show --------------------------------------------------------------------------------


def test_show_matches_xorriso_and_isoinfo(isos, layout):
    path = isos[layout]
    info = iso.show(path)
    report = fx.el_torito_report(path)
    cat_lba = int(next(ln for ln in report.splitlines() if ln.startswith("El Torito catalog")).split()[4])
    img_lba = int(next(ln for ln in report.splitlines() if ln.startswith("El Torito boot img")).split()[-1])
    assert info["volume_id"] == "b2d-v19.03.12"
    assert info["el_torito"]["catalog"]["lba"] == cat_lba
    (entry,) = info["el_torito"]["entries"]
    assert entry["lba"] == img_lba and entry["path"] == f"/{fx.LAYOUTS[layout]['dir']}/isolinux.bin"
    assert entry["boot_info_table"]["valid"] is True
    assert info["isohybrid"]["rba_ok"] and (info["isohybrid"]["heads"], info["isohybrid"]["sectors"]) == (
        64,
        32,
    )
    assert info["joliet"] is (layout == "legacy")
    assert info["rock_ridge"] == "1.09"
    assert info["cfg"]["path"] == fx.cfg_path(layout)
    (label,) = info["cfg"]["labels"]
    assert label["name"] == "boot2docker" and label["kernel"].startswith("/" + fx.LAYOUTS[layout]["kernel"])
    assert label["append"].split()[0] == "loglevel=3"
    json.dumps(info)


# --- tasks -----------------------------------------------------------------------------------


def run_cli(argv, capsys):
    program = make_program()
    code = 0
    try:
        program.run(["b2dkit", *argv])
    except SystemExit as exc:  # invoke's Exit for our errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_remaster_show_and_cache(src, tmp_path, capsys):
    out = tmp_path / "cli.iso"
    codes = ["--boot-code", "tz=CST-8", "--boot-code", "noembed"]
    code, stdout, _ = run_cli(["iso.remaster", "--src", str(src), "--out", str(out), *codes], capsys)
    assert code == 0 and "in-place" in stdout and out.exists()
    code, stdout, _ = run_cli(["iso.show", str(out), "--json"], capsys)
    assert json.loads(stdout)["cfg"]["labels"][0]["append"].endswith("tz=CST-8")
    code, stdout, _ = run_cli(["iso.show", str(out)], capsys)
    assert "tz=CST-8 is UTC+08:00" in stdout
    code, stdout, _ = run_cli(["iso.remaster", "--src", str(src), "--boot-code", "tz=CST-8"], capsys)
    cached = Path(stdout.strip())
    assert code == 0 and cached.is_file()
    code, stdout, _ = run_cli(["iso.cache", "--list"], capsys)
    assert cached.stem in stdout and "tz=CST-8" in stdout
    code, stdout, _ = run_cli(["iso.cache", "--clear"], capsys)
    assert "removed 1" in stdout and not cached.exists()


def test_cli_errors_are_one_line(src, tmp_path, capsys):
    code, _, err = run_cli(
        ["iso.remaster", "--src", str(src), "--out", str(src), "--boot-code", "tz=CST-8"], capsys
    )
    assert code == 2 and err.strip().count("\n") == 0 and "b2dkit: error:" in err and "Traceback" not in err
    code, _, err = run_cli(["iso.show", str(tmp_path / "missing.iso")], capsys)
    assert code == 2 and "does not exist" in err


def test_every_task_documents_every_argument():
    """Through the real CLI in a fresh process: invoke pops help texts once it has parsed them."""
    cli = [sys.executable, "-m", "b2dkit"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    listed = subprocess.run([*cli, "--list"], capture_output=True, text=True, env=env, check=True).stdout
    for name, flags in {"remaster": 6, "show": 2, "cache": 2}.items():
        assert re.search(rf"iso\.{name}\s+\S", listed)
        text = subprocess.run([*cli, "--help", f"iso.{name}"], capture_output=True, text=True, env=env).stdout
        options = [ln for ln in text.split("Options:")[1].splitlines() if ln.strip().startswith("-")]
        assert len(options) == flags and all(len(ln.split(None, 1)) == 2 for ln in options), text


# --- booting (the real proof) -------------------------------------------------------------


def _kernel():
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    if not kernels or not os.access(kernels[-1], os.R_OK):
        pytest.skip("no readable /boot/vmlinuz-* to boot")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    return kernels[-1]


def _boot(image: Path, as_disk: bool, log: Path, timeout: float = 60.0) -> str:
    """Boot under TCG (KVM here is nested kvm-pvm and dies in ISOLINUX) until the kernel
    prints its command line; always kill QEMU."""
    drive = (
        ["-drive", f"file={image},format=raw,if=ide,media=disk,snapshot=on"]
        if as_disk
        else ["-cdrom", str(image)]
    )
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-display", "none", "-no-reboot",
            "-monitor", "none", "-serial", f"file:{log}", *drive]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "\n" in text.partition("Kernel command line:")[2]:
                break
            time.sleep(0.25)
    finally:
        proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(timeout=10)
    return log.read_text(errors="replace") if log.exists() else ""


@pytest.fixture(scope="session")
def bootable_isos(tmp_path_factory):
    kernel = _kernel()
    root = tmp_path_factory.mktemp("boot")
    built = {}
    for layout in LAYOUTS:
        cfg = fx.sample_cfg(layout)
        cfg = cfg.replace(b"serial 0 9600", b"serial 0").replace(b"serial 0\n", b"serial 0 115200\n", 1)
        # The kernel prints its command line at NOTICE; loglevel=3 would hide it, panic=-1 ends the run.
        cfg = cfg.replace(b"loglevel=3", b"loglevel=3 ignore_loglevel panic=-1", 1)
        built[layout] = fx.build_iso(root / f"{layout}.iso", layout, cfg=cfg, kernel=kernel)
    return built


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout, rewrite, as_disk",
    [("v19", False, False), ("v19", False, True), ("legacy", True, False), ("legacy", True, True)],
    ids=["v19-inplace-cd", "v19-inplace-disk", "legacy-rewrite-cd", "legacy-rewrite-disk"],
)
def test_remastered_iso_boots_with_the_new_code(bootable_isos, tmp_path, layout, rewrite, as_disk):
    out = tmp_path / "boot.iso"
    result = iso.remaster(bootable_isos[layout], out, ["tz=CST-8"], rewrite=rewrite)
    assert result.method == ("rewrite" if rewrite else "in-place")
    console = _boot(out, as_disk, tmp_path / "serial.log")
    lines = [ln for ln in console.splitlines() if "Kernel command line:" in ln]
    assert lines, console[-2000:]
    assert "tz=CST-8" in lines[0].split() and "console=ttyS0" in lines[0]
