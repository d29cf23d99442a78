"""Remaster a boot2docker ISO with new kernel boot codes, and prove it still boots.

The source is only ever read. The default output is a kernel-side copy whose
isolinux.cfg is rewritten inside its own sectors: nothing else moves, so El Torito,
the boot info table and the isohybrid MBR stay valid by construction, and the cost
is one file copy. Only when the new cfg needs more sectors (or the image has a
UDF bridge) does pycdlib lay the image out again, with fixes for what it gets wrong
(../shared/reference/iso-remastering.md, pitfalls 1, 4, 5, 6). Either way the result
is re-read with :mod:`b2dkit.isoprobe`, which does not share pycdlib's blind spots,
before it is renamed into place.
"""

import contextlib
import errno
import io
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterable, Iterator, List, Optional, Tuple, TypedDict, Union

import pycdlib
from pycdlib import eltorito
from pycdlib.dr import DirectoryRecord
from pycdlib.udf import UDFFileEntry
from pycdlib.pycdlibexception import PyCdlibException

from . import bootcfg, isoprobe
from .atomic import atomic_path, check_output
from .errors import InputError, InternalError, IsoError
from .paths import StrPath

# boot2docker >= v18.09 (files/make-b2d-iso.sh), then <= v18.06 (rootfs/make_iso.sh).
CFG_PATHS = ("/isolinux/isolinux.cfg", "/boot/isolinux/isolinux.cfg")
SECTOR = isoprobe.SECTOR
_FICLONE = 0x40049409  # linux/fs.h: share extents (btrfs, xfs, bcachefs); instant when it works


@dataclass
class RemasterResult:
    out: Path
    method: str  # "in-place" (cfg patched in a copy), "rewrite" (pycdlib layout), "copy" (nothing to change)
    cfg_path: str
    labels: List[Tuple[str, Optional[str]]] = field(default_factory=list)  # (name, new append line)
    changed: bool = True


@dataclass
class _Cfg:
    """Where the isolinux config lives in each namespace of the image."""

    path: str  # the name users know: Rock Ridge if present, else ISO 9660 without ;1
    iso_path: str
    rr_path: Optional[str]
    joliet_path: Optional[str]
    data: bytes
    lba: int


# --- opening ---------------------------------------------------------------------


def _check_source(src: StrPath) -> Path:
    src = Path(src)
    if not src.exists():
        raise InputError(f"ISO {src} does not exist")
    if not src.is_file():
        raise InputError(f"ISO {src} is not a file")
    if not os.access(src, os.R_OK):
        raise InputError(f"ISO {src} is not readable")
    return src


def check_bootable(src: StrPath) -> Path:
    """Refuse, in one line, a source ISO that cannot boot as boot2docker does: ISO 9660, an El
    Torito boot entry and an isolinux config.  Byte-level (isoprobe), a few sectors: every
    source is checked, also when no remaster reads it (a junk or empty file once became a
    0-byte boot ISO)."""
    src = _check_source(src)
    hint = "give the path of a boot2docker .iso (`b2dkit iso.show PATH` shows what a file holds)"
    try:
        with open(src, "rb") as fp:
            isoprobe.volume_descriptors(fp)
            if not isoprobe.boot_entries(fp):
                raise IsoError(f"{src} has no El Torito boot entry, so it cannot boot from CD", hint)
            if not any(isoprobe.locate(fp, path) for path in CFG_PATHS):
                raise IsoError(f"{src} has no isolinux config (looked for {' and '.join(CFG_PATHS)}); "
                               "is it a boot2docker ISO?", hint)
    except isoprobe.NotAnIso:
        raise IsoError(f"{src} is not an ISO 9660 image", hint) from None
    except (struct.error, IndexError, ValueError, UnicodeDecodeError):
        raise IsoError(f"{src} is a damaged ISO image", hint) from None
    except OSError as exc:
        raise IsoError(f"cannot read ISO {src}: {exc.strerror or exc}") from None
    return src


@contextlib.contextmanager
def _opened(src: Path) -> Iterator[pycdlib.PyCdlib]:
    """pycdlib on ``src``, read-only; pycdlib's complaints become one IsoError line."""
    iso = pycdlib.PyCdlib()
    with open(src, "rb") as fp:
        try:
            isoprobe.volume_descriptors(fp)
        except isoprobe.NotAnIso:
            raise IsoError(f"{src} is not an ISO 9660 image", "give the path of a boot2docker .iso") from None
        try:
            iso.open_fp(fp)
        except PyCdlibException as exc:
            raise IsoError(f"{src} is a damaged or unsupported ISO image: {_one_line(exc)}") from None
        try:
            yield iso
        finally:
            with contextlib.suppress(PyCdlibException):
                iso.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _find_cfg(iso: pycdlib.PyCdlib, src: StrPath) -> _Cfg:
    rock_ridge, joliet = iso.has_rock_ridge(), iso.has_joliet()
    for path in CFG_PATHS:
        record = None
        with contextlib.suppress(PyCdlibException):
            record = iso.get_record(rr_path=path) if rock_ridge else None
        if record is None:
            record = _find_iso9660(iso, path)
        if record is None or not record.is_file():
            continue
        iso_path = iso.full_path_from_dirrecord(record)
        joliet_path = None
        if joliet:
            with contextlib.suppress(PyCdlibException):
                iso.get_record(joliet_path=path)
                joliet_path = path
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, iso_path=iso_path)
        return _Cfg(
            path,
            iso_path,
            path if rock_ridge else None,
            joliet_path,
            out.getvalue(),
            record.extent_location(),
        )
    raise IsoError(
        f"{src} has no isolinux config (looked for {' and '.join(CFG_PATHS)}); is it a boot2docker ISO?"
    )


def _find_iso9660(iso: pycdlib.PyCdlib, path: str) -> Optional[DirectoryRecord]:
    """ISO 9660 names may be upper or lower case (xorriso writes lower); match either."""
    current = "/"
    record = None
    for part in [p for p in path.split("/") if p]:
        found = None
        with contextlib.suppress(PyCdlibException):
            for child in iso.list_children(iso_path=current):
                name = child.file_identifier().decode("latin-1").split(";")[0].rstrip(".")
                if name.lower() == part.lower() and child.file_identifier() not in (b"\x00", b"\x01"):
                    found = child
                    break
        if found is None:
            return None
        record = found
        current = iso.full_path_from_dirrecord(found)
    return record


def _boot_entries(iso: pycdlib.PyCdlib, src: StrPath) -> List[eltorito.EltoritoEntry]:
    catalog = iso.eltorito_boot_catalog
    if catalog is None:
        raise IsoError(f"{src} has no El Torito boot entry, so it cannot boot from CD")
    entries = [catalog.initial_entry]
    for section in catalog.sections:
        entries.extend(section.section_entries)
    return entries


# --- the remaster ----------------------------------------------------------------------


def remaster(
    src: StrPath,
    out: StrPath,
    set_codes: Iterable[str],
    remove: Iterable[str] = (),
    label: Optional[str] = None,
    rewrite: bool = False,
) -> RemasterResult:
    """Write ``out``: ``src`` with boot codes set/removed on isolinux ``append`` lines.

    ``rewrite`` forces the full pycdlib re-layout even when the cfg fits its sectors
    (for tests and benchmarks of the slow path).
    """
    set_codes, remove = bootcfg.normalize_codes(set_codes, remove)
    src, out = _check_source(src), Path(out)
    if out.is_dir():
        raise InputError(f"output {out} is a directory; give a new file name for the remastered ISO")
    out = check_output(out)  # never a device or FIFO: the rename would replace it
    if out.exists() and os.path.samefile(src, out):
        raise InputError(f"output {out} is the source ISO; give a new file name for the remastered ISO")
    if out.resolve() == src.resolve():
        raise InputError(f"output {out} is the source ISO; give a new file name for the remastered ISO")

    # Everything that can refuse the job is decided from a few sectors, before any copying.
    with open(src, "rb") as fp:
        before = _boot_facts(fp, src)
        spot = _locate_cfg(fp)
        udf = isoprobe.has_udf(fp)
    if not before["entries"]:
        raise IsoError(f"{src} has no El Torito boot entry, so it cannot boot from CD")
    if spot is None:  # only Rock Ridge knows the name: let pycdlib find it, and rebuild
        with _opened(src) as iso:
            old_cfg = _find_cfg(iso, src).data
    else:
        old_cfg = spot.data
    cfg_name = spot.path if spot is not None else None
    try:
        new_cfg = bootcfg.apply(old_cfg, set_codes, remove, label)
    except InputError as exc:
        raise InputError(f"isolinux config of {src}: {exc}") from None
    if new_cfg == old_cfg and not rewrite and spot is not None:
        method = "copy"
    elif spot is None or udf or rewrite or _sectors(len(new_cfg)) > _sectors(len(old_cfg)):
        method = "rewrite"
    else:
        method = "in-place"

    with atomic_path(out) as tmp:
        if method == "rewrite":
            with _opened(src) as iso:
                entries = _boot_entries(iso, src)
                cfg = _find_cfg(iso, src)
                _rewrite(iso, src, tmp, cfg, new_cfg, entries, before)
        else:
            fast_copy(src, tmp)
            if method == "in-place":
                assert spot is not None  # in-place is only chosen with a located cfg
                _patch_in_place(tmp, spot, new_cfg)
        _verify(tmp, before, str(cfg_name), new_cfg, moved=(method == "rewrite"))

    parsed = bootcfg.parse(new_cfg)
    return RemasterResult(
        out=out,
        method=method,
        cfg_path=cfg_name or cfg.path,
        labels=[(lb.name, lb.append) for lb in parsed.labels],
        changed=new_cfg != old_cfg,
    )


@dataclass
class _Spot:
    """The cfg as the raw reader found it: enough to patch it without re-parsing the copy."""

    path: str
    lba: int
    data: bytes
    record_offsets: List[int]  # its directory record in the ISO 9660 tree, and in Joliet


def _locate_cfg(fp: BinaryIO) -> Optional[_Spot]:
    for path in CFG_PATHS:
        primary = isoprobe.locate(fp, path)
        if primary is None:
            continue
        offsets = [primary.record_offset]
        if isoprobe.has_joliet(fp):
            other = isoprobe.locate(fp, path, joliet=True)
            if other is None or (other.lba, other.size) != (primary.lba, primary.size):
                return None  # unusual tree: leave it to pycdlib
            offsets.append(other.record_offset)
        fp.seek(primary.lba * SECTOR)
        return _Spot(path, primary.lba, fp.read(primary.size), offsets)
    return None


def _sectors(size: int) -> int:
    return max(1, -(-size // SECTOR))


def fast_copy(src: StrPath, dst: StrPath) -> None:
    """Copy with the cheapest mechanism the OS offers: reflink, then in-kernel copy_file_range.

    ``dst`` is opened without O_TRUNC: ext4 (auto_da_alloc) starts writeback of a file
    at close when it was truncated to zero, which made a 500 MB copy twice as slow.
    Elsewhere ``shutil.copyfile`` (fcopyfile on macOS, sendfile) is the best available.
    """
    if hasattr(os, "copy_file_range"):
        with open(src, "rb") as fin, _open_for_writing(dst) as fout:
            if _kernel_copy(fin.fileno(), fout.fileno(), os.fstat(fin.fileno()).st_size):
                return
    shutil.copyfile(src, dst)


def _open_for_writing(path: StrPath) -> BinaryIO:
    """An empty file for writing, without O_TRUNC (see fast_copy)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    if os.fstat(fd).st_size:
        os.ftruncate(fd, 0)
    return os.fdopen(fd, "wb")


def _kernel_copy(fd_in: int, fd_out: int, size: int) -> bool:
    """True when the kernel did the whole copy; False to fall back (nothing half-done matters)."""
    try:
        import fcntl

        fcntl.ioctl(fd_out, _FICLONE, fd_in)  # btrfs/xfs: shares extents, instant
        return True
    except (OSError, ImportError):
        pass
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(fd_in, fd_out, size - done, done, done)
            if n == 0:
                break
            done += n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM):
            raise
    return done == size


def _patch_in_place(path: Path, spot: _Spot, new_cfg: bytes) -> None:
    """Write the cfg into its own sectors and its new size into its directory records.

    This is what pycdlib.InPlaceEditor does, minus re-parsing the fresh copy and
    re-serialising the PVD and every ancestor directory (about 3 ms, 15% of copying
    a 60 MB image). Only the cfg's sectors and 8 bytes per record change; the
    boot structures are never touched, and _verify() reads everything back.
    """
    allocated = _sectors(len(spot.data)) * SECTOR
    size = struct.pack("<L", len(new_cfg)) + struct.pack(">L", len(new_cfg))  # ECMA-119 9.1.4, both-endian
    with open(path, "r+b") as fp:
        fp.seek(spot.lba * SECTOR)
        fp.write(new_cfg + bytes(allocated - len(new_cfg)))
        for offset in spot.record_offsets:
            fp.seek(offset + 10)
            fp.write(size)


def _rewrite(
    iso: pycdlib.PyCdlib,
    src: Path,
    tmp: Path,
    cfg: _Cfg,
    new_cfg: bytes,
    entries: List[eltorito.EltoritoEntry],
    before: "_BootFacts",
) -> None:
    """pycdlib re-lays the whole image out; patch the two things it would get wrong first."""
    if before["isohybrid"] is None and any(before["system_area"][:512]):
        # Pitfall 6: pycdlib writes zeros over any system area it does not understand.
        raise IsoError(
            f"{src} has a boot sector pycdlib cannot carry over (not an isohdpfx isohybrid MBR)",
            "shorten the boot codes so the config fits its sectors and the fast path is used",
        )
    fp = io.BytesIO(new_cfg)  # must stay alive until write() has finished
    if hasattr(iso, "update_file_contents_fp"):  # pycdlib >= 1.2x keeps the record and its RR fields
        iso.update_file_contents_fp(fp, len(new_cfg), iso_path=cfg.iso_path)
    else:
        _replace_file(iso, cfg, fp, len(new_cfg))
    _fix_isohybrid_geometry(iso, before["isohybrid"])
    _register_boot_info_tables(iso, entries, before)
    try:
        with _open_for_writing(tmp) as out:  # not iso.write(): it would O_TRUNC (see fast_copy)
            iso.write_fp(out)
    except PyCdlibException as exc:
        raise IsoError(f"could not rebuild {src}: {_one_line(exc)}") from None


def _replace_file(iso: pycdlib.PyCdlib, cfg: _Cfg, fp: BinaryIO, length: int) -> None:
    """rm + add for pycdlib without update_file_contents_fp."""
    mode = iso.file_mode(iso_path=cfg.iso_path)
    iso.rm_file(iso_path=cfg.iso_path)
    parent, base = cfg.iso_path.rsplit("/", 1)
    # Pitfall 1: xorriso writes lower-case ISO 9660 names, add_fp only accepts upper case.
    iso.add_fp(
        fp,
        length,
        iso_path=f"{parent}/{base.upper()}",
        rr_name=cfg.rr_path.rsplit("/", 1)[1] if cfg.rr_path else None,
        joliet_path=cfg.joliet_path,
        file_mode=mode,
    )


def _fix_isohybrid_geometry(iso: pycdlib.PyCdlib, mbr: Optional[isoprobe.IsoHybridMbr]) -> None:
    """Pitfall 5: pycdlib derives sectors/head from the size and gets 63 beyond 256 cylinders."""
    hybrid = iso.isohybrid_mbr
    if hybrid is not None and mbr is not None and mbr.sectors:
        hybrid.geometry_sectors = mbr.sectors
        hybrid.geometry_heads = mbr.heads


def _register_boot_info_tables(
    iso: pycdlib.PyCdlib, entries: List[eltorito.EltoritoEntry], before: "_BootFacts"
) -> None:
    """Pitfall 4: a table pycdlib did not recognise (e.g. stale after ``xorriso -dev``) would
    be left pointing at the old location and ISOLINUX stops with 'Image checksum error'."""
    for entry in entries:
        ino = entry.inode
        if ino is None or ino.boot_info_table is not None:
            continue
        table = before["tables"].get(entry.load_rba)
        if table is None or not table.checksum_ok:
            continue
        bi = eltorito.EltoritoBootInfoTable()
        bi.new(iso.pvd, ino, ino.get_data_length(), table.checksum)
        ino.add_boot_info_table(bi)


# --- verification (independent of pycdlib) -----------------------------------------------


class _BootFacts(TypedDict):
    """What must survive a remaster, read byte-level (isoprobe) before and after."""

    volume_id: str
    entries: List[isoprobe.BootEntry]
    tables: Dict[int, Optional[isoprobe.BootInfoTable]]  # by boot image LBA
    isohybrid: Optional[isoprobe.IsoHybridMbr]
    system_area: bytes
    joliet: bool


def _boot_facts(fp: BinaryIO, src: Optional[StrPath] = None) -> _BootFacts:
    try:
        isoprobe.volume_descriptors(fp)
    except isoprobe.NotAnIso:
        if src is None:
            raise
        raise IsoError(f"{src} is not an ISO 9660 image", "give the path of a boot2docker .iso") from None
    entries = isoprobe.boot_entries(fp)
    return {
        "volume_id": isoprobe.volume_id(fp),
        "entries": entries,
        "tables": {e.lba: isoprobe.boot_info_table(fp, e.lba) for e in entries},
        "isohybrid": isoprobe.isohybrid_mbr(fp),
        "system_area": isoprobe.system_area(fp),
        "joliet": isoprobe.has_joliet(fp),
    }


def _verify(path: Path, before: _BootFacts, cfg_path: str, new_cfg: bytes, moved: bool) -> None:
    with open(path, "rb") as fp:
        problems = _problems(fp, before, cfg_path, new_cfg, moved)
    if problems:
        raise InternalError(
            f"the remastered image failed its boot check ({'; '.join(problems)}); nothing was written",
            "please report this with the source ISO's name",
        )


def _cfg_via_pycdlib(fp: BinaryIO) -> Optional[bytes]:
    """For images whose cfg only Rock Ridge can name (never seen in boot2docker releases)."""
    iso = pycdlib.PyCdlib()
    try:
        iso.open_fp(fp)
        return _find_cfg(iso, "the output").data
    except (PyCdlibException, IsoError):
        return None
    finally:
        with contextlib.suppress(PyCdlibException):
            iso.close()


def _problems(fp: BinaryIO, before: _BootFacts, cfg_path: str, new_cfg: bytes, moved: bool) -> List[str]:
    try:
        after = _boot_facts(fp)
    except isoprobe.NotAnIso:
        return ["no ISO 9660 volume descriptor"]
    problems = []
    if after["volume_id"] != before["volume_id"]:
        problems.append(f"volume id {after['volume_id']!r} != {before['volume_id']!r}")
    old_entries, new_entries = before["entries"], after["entries"]
    shape = [(e.platform, e.bootable, e.emulation, e.load_segment, e.sector_count) for e in old_entries]
    if [(e.platform, e.bootable, e.emulation, e.load_segment, e.sector_count) for e in new_entries] != shape:
        problems.append("El Torito entries differ")
    for old, new in zip(old_entries, new_entries):
        table = before["tables"].get(old.lba)
        if table is None:
            continue
        got = after["tables"].get(new.lba)
        if not moved and not table.valid:
            # An in-place edit does not touch the boot image: it must simply be unchanged.
            if got != table:
                problems.append(f"boot image at LBA {new.lba} changed")
        elif got is None or not got.valid or got.length != table.length:
            problems.append(f"boot info table of the image at LBA {new.lba} is not valid: {got}")
    hybrid = before["isohybrid"]
    if hybrid is not None:
        now = after["isohybrid"]
        if now is None:
            problems.append("isohybrid MBR lost")
        else:
            if not now.signature_ok:
                problems.append("MBR has no 0x55AA signature")
            if new_entries and now.rba != 4 * new_entries[0].lba:
                problems.append(f"MBR boot image sector {now.rba} != 4 * LBA {new_entries[0].lba}")
            if now.code != hybrid.code:
                problems.append("MBR boot code changed")
            if (now.heads, now.sectors) != (hybrid.heads, hybrid.sectors):
                problems.append(f"MBR geometry {now.heads}/{now.sectors} != {hybrid.heads}/{hybrid.sectors}")
    elif after["system_area"] != before["system_area"]:
        problems.append("system area changed")
    for joliet in (False, True) if after["joliet"] else (False,):
        data = isoprobe.read_file(fp, cfg_path, joliet=joliet) if cfg_path else _cfg_via_pycdlib(fp)
        if data != new_cfg:
            problems.append(
                f"{cfg_path} does not read back as written ({'Joliet' if joliet else 'ISO 9660'})"
            )
    if after["joliet"] != before["joliet"]:
        problems.append("Joliet tree lost")
    return problems


# --- show --------------------------------------------------------------------------


def show(path: StrPath) -> Dict[str, Any]:
    """What matters for booting and remastering ``path``, as plain data (for --json)."""
    path = _check_source(path)
    with _opened(path) as iso:
        with open(path, "rb") as fp:
            facts = _boot_facts(fp)
        entries = _boot_entries(iso, path) if iso.eltorito_boot_catalog is not None else []
        paths: Dict[int, str] = {}
        for entry in entries:
            with contextlib.suppress(PyCdlibException, AttributeError):
                for rec, _pvd in entry.inode.linked_records:
                    if isinstance(rec, DirectoryRecord):  # the boot entry itself is linked too; it has no name
                        paths[entry.load_rba] = _display_path(iso, rec)
                        break
        catalog_path = None
        if iso.eltorito_boot_catalog is not None:
            with contextlib.suppress(PyCdlibException, AttributeError):
                catalog_path = _display_path(iso, iso.eltorito_boot_catalog.dirrecords[0])
        try:
            cfg = _find_cfg(iso, path)
        except IsoError:
            cfg = None
        rock_ridge = iso.rock_ridge or None
        joliet = iso.has_joliet()
    hybrid = facts["isohybrid"]
    first_lba = facts["entries"][0].lba if facts["entries"] else None
    result: Dict[str, Any] = {  # the iso.show document: nested plain data
        "path": str(path),
        "size": path.stat().st_size,
        "volume_id": facts["volume_id"],
        "rock_ridge": rock_ridge,
        "joliet": joliet,
        "el_torito": {
            "catalog": {"path": catalog_path, "lba": _catalog_lba(path)},
            "entries": [
                {
                    **entry.as_dict(),
                    "path": paths.get(entry.lba),
                    "boot_info_table": (
                        table.as_dict() if (table := facts["tables"].get(entry.lba)) else None
                    ),
                }
                for entry in facts["entries"]
            ],
        },
        "isohybrid": None
        if hybrid is None
        else {**hybrid.as_dict(), "rba_ok": first_lba is not None and hybrid.rba == 4 * first_lba},
        "cfg": None,
    }
    if cfg is not None:
        parsed = bootcfg.parse(cfg.data)
        result["cfg"] = {
            "path": cfg.path,
            "default": parsed.default,
            "labels": [
                {"name": lb.name, "kernel": lb.kernel, "initrd": lb.initrd, "append": lb.append}
                for lb in parsed.labels
            ],
        }
    return result


def _catalog_lba(path: Path) -> Optional[int]:
    with open(path, "rb") as fp:
        return isoprobe.boot_catalog_lba(fp)


def _display_path(iso: pycdlib.PyCdlib, record: Union[DirectoryRecord, UDFFileEntry]) -> str:
    try:
        return iso.full_path_from_dirrecord(record, rockridge=bool(iso.rock_ridge))
    except PyCdlibException:
        return iso.full_path_from_dirrecord(record)


def check_boot2docker(path: StrPath, name: Optional[str] = None) -> Dict[str, Any]:
    """``show(path)``, refusing an image that would not boot the way boot2docker does.

    ``iso.pin`` runs it before a digest goes into a team's profile: a mirror's HTML error
    page or another distribution's ISO must not be pinned. ``name`` (a URL) is what
    messages call the file.
    """
    shown = name or str(path)
    try:
        info = show(path)
    except IsoError as exc:
        raise IsoError(exc.message.replace(str(path), shown), None if name else exc.hint) from None
    if not info["el_torito"]["entries"]:
        raise IsoError(f"{shown} has no El Torito boot entry, so it cannot boot from the VM's CD drive")
    cfg = info["cfg"]
    if cfg is None:
        raise IsoError(
            f"{shown} has no isolinux config (looked for {' and '.join(CFG_PATHS)}): not a boot2docker-style ISO"
        )
    if not any(label["kernel"] for label in cfg["labels"]):
        raise IsoError(f"{shown}: {cfg['path']} has no label that boots a kernel: not a boot2docker-style ISO")
    return info
