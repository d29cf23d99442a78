"""Read the on-disk structures that make an ISO boot, without pycdlib.

A remaster is only renamed into place after these checks pass, and they must not
share pycdlib's blind spots (it silently skips a boot info table it does not
recognise, and misreads isohybrid geometry, see reference pitfalls 4 and 5).
So this module reads ECMA-119, El Torito and the isohybrid MBR straight from the
bytes: volume descriptors, the boot catalog, the ISOLINUX boot info table, the MBR,
and enough of the directory tree to find one file.
"""

import array
import struct
import sys
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO, Dict, Iterator, List, Optional, Tuple

from .errors import IsoError

SECTOR = 2048
PVD_LBA = 16
_EL_TORITO_ID = b"EL TORITO SPECIFICATION"
_JOLIET_ESCAPES = (b"%/@", b"%/C", b"%/E")
# isohdpfx.bin / isohdppx.bin start with these bytes; other MBRs are not isohybrid ones.
ISOHYBRID_MAGIC = b"\x33\xed" + b"\x90" * 30
_WORD = "I" if array.array("I").itemsize == 4 else "L"  # an unsigned 32-bit array type
_PLATFORMS = {0: "BIOS", 1: "PowerPC", 2: "Mac", 0xEF: "UEFI"}
_EMULATIONS = {0: "none", 1: "1.2M floppy", 2: "1.44M floppy", 3: "2.88M floppy", 4: "hard disk"}


class NotAnIso(IsoError):
    """The bytes are not an ISO 9660 image (no CD001 primary volume descriptor)."""


@dataclass
class BootEntry:
    platform: str
    bootable: bool
    emulation: str
    load_segment: int
    sector_count: int  # in 512-byte units, as the catalog stores it
    lba: int

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class BootInfoTable:
    """ISOLINUX's 56-byte table at offset 8 of its boot image (mkisofs -boot-info-table)."""

    pvd_lba: int
    file_lba: int
    length: int
    checksum: int
    checksum_ok: bool  # the data after byte 64 sums to ``checksum``: a table is really there
    at_lba: int  # where we read it

    @property
    def valid(self) -> bool:
        """ISOLINUX re-reads itself from ``file_lba``; anything stale fails with 'Image checksum error'."""
        return self.checksum_ok and self.pvd_lba == PVD_LBA and self.file_lba == self.at_lba

    def as_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "valid": self.valid}


@dataclass
class IsoHybridMbr:
    """The MBR that lets the same image boot from a USB stick (isohdpfx.bin)."""

    rba: int  # 512-byte sector of the boot image: must be 4 * its 2048-byte LBA
    signature_ok: bool  # 0x55AA
    heads: int
    sectors: int
    partition_sectors: int
    code: bytes  # the first 432 bytes, which the boot code lives in

    def as_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        del data["code"]
        return data


def _read(fp: BinaryIO, offset: int, size: int) -> bytes:
    fp.seek(offset)
    return fp.read(size)


def volume_descriptors(fp: BinaryIO) -> List[Tuple[int, int, bytes]]:
    """[(lba, type, sector)] from LBA 16 up to the terminator."""
    found = []
    for lba in range(PVD_LBA, PVD_LBA + 64):
        sector = _read(fp, lba * SECTOR, SECTOR)
        if len(sector) < SECTOR or sector[1:6] != b"CD001":
            break
        found.append((lba, sector[0], sector))
        if sector[0] == 255:
            break
    if not found or found[0][1] != 1:
        raise NotAnIso("no ISO 9660 primary volume descriptor at sector 16")
    return found


def volume_id(fp: BinaryIO) -> str:
    """The text docker-machine reads at 0x8028 to learn the boot2docker version."""
    return volume_descriptors(fp)[0][2][40:72].decode("ascii", "replace").rstrip()


def boot_catalog_lba(fp: BinaryIO) -> Optional[int]:
    for _lba, kind, sector in volume_descriptors(fp):
        if kind == 0 and sector[7:30] == _EL_TORITO_ID:
            return struct.unpack_from("<L", sector, 71)[0]
    return None


def _entry(raw: bytes, platform: int) -> BootEntry:
    indicator, media, segment, _system, _unused, count, lba = struct.unpack_from("<BBHBBHL", raw, 0)
    return BootEntry(
        platform=_PLATFORMS.get(platform, hex(platform)),
        bootable=indicator == 0x88,
        emulation=_EMULATIONS.get(media & 0x0F, hex(media)),
        load_segment=segment,
        sector_count=count,
        lba=lba,
    )


def boot_entries(fp: BinaryIO) -> List[BootEntry]:
    """The El Torito catalog: the initial entry, then section entries (EFI etc.)."""
    lba = boot_catalog_lba(fp)
    if lba is None:
        return []
    catalog = _read(fp, lba * SECTOR, SECTOR)
    if len(catalog) < 64 or catalog[0] != 1 or catalog[30:32] != b"\x55\xaa":
        return []
    entries = [_entry(catalog[32:64], catalog[1])]
    offset = 64
    while offset + 32 <= len(catalog) and catalog[offset] in (0x90, 0x91):
        final, platform, count = (
            catalog[offset] == 0x91,
            catalog[offset + 1],
            struct.unpack_from("<H", catalog, offset + 2)[0],
        )
        offset += 32
        for _ in range(count):
            if offset + 32 > len(catalog):
                break
            entries.append(_entry(catalog[offset : offset + 32], platform))
            offset += 32
        if final:
            break
    return entries


def bit_checksum(data: bytes) -> int:
    """Sum of little-endian 32-bit words from byte 64 on, as mkisofs and ISOLINUX compute it."""
    body = data[64:]
    words = array.array(_WORD, body + b"\0" * (-len(body) % 4))
    if sys.byteorder == "big":
        words.byteswap()
    return sum(words) & 0xFFFFFFFF


def boot_info_table(fp: BinaryIO, lba: int) -> Optional[BootInfoTable]:
    """The table in the boot image at ``lba``, or None when those bytes are not one."""
    head = _read(fp, lba * SECTOR + 8, 16)
    if len(head) < 16:
        return None
    pvd_lba, file_lba, length, checksum = struct.unpack("<4L", head)
    if not 64 < length <= 64 * 1024 * 1024:
        return None
    data = _read(fp, lba * SECTOR, length)
    ok = len(data) == length and bit_checksum(data) == checksum
    if not ok and (pvd_lba, file_lba) != (PVD_LBA, lba):
        return None  # random code bytes, not a table
    return BootInfoTable(pvd_lba, file_lba, length, checksum, ok, lba)


def isohybrid_mbr(fp: BinaryIO) -> Optional[IsoHybridMbr]:
    mbr = _read(fp, 0, 512)
    if len(mbr) < 512 or mbr[:32] != ISOHYBRID_MAGIC:
        return None
    rba = struct.unpack_from("<L", mbr, 432)[0]
    heads = sectors = psize = 0
    for i in range(4):
        entry = mbr[446 + 16 * i : 462 + 16 * i]
        if entry[0] == 0x80:
            heads = entry[5] + 1
            sectors = entry[6] & 0x3F  # the top two bits belong to the cylinder number
            psize = struct.unpack_from("<L", entry, 12)[0]
            break
    return IsoHybridMbr(rba, mbr[510:512] == b"\x55\xaa", heads, sectors, psize, mbr[:432])


def system_area(fp: BinaryIO) -> bytes:
    return _read(fp, 0, PVD_LBA * SECTOR)


# --- finding a file ----------------------------------------------------------------


def _records(fp: BinaryIO, lba: int, size: int, joliet: bool) -> Iterator[Tuple[str, int, int, bool, int]]:
    """Yield (name, extent LBA, data length, is a directory, byte offset of the record) per entry."""
    data = _read(fp, lba * SECTOR, size)
    pos = 0
    while pos < len(data):
        length = data[pos]
        if length == 0:
            pos = (pos // SECTOR + 1) * SECTOR  # records never straddle a sector
            continue
        rec = data[pos : pos + length]
        pos += length
        if len(rec) < 34:
            break
        extent, data_len = struct.unpack_from("<L", rec, 2)[0], struct.unpack_from("<L", rec, 10)[0]
        at = lba * SECTOR + pos - length
        name = rec[33 : 33 + rec[32]]
        if name in (b"\x00", b"\x01"):
            continue
        if joliet:
            text = name.decode("utf-16-be", "replace")
        else:
            text = name.decode("latin-1")
        text = text.split(";")[0].rstrip(".")
        yield text, extent, data_len, bool(rec[25] & 2), at


def _root(fp: BinaryIO, joliet: bool) -> Optional[Tuple[int, int]]:
    for _lba, kind, sector in volume_descriptors(fp):
        if (kind == 1 and not joliet) or (kind == 2 and joliet and sector[88:91] in _JOLIET_ESCAPES):
            root = sector[156:190]
            return struct.unpack_from("<L", root, 2)[0], struct.unpack_from("<L", root, 10)[0]
    return None


def has_joliet(fp: BinaryIO) -> bool:
    return _root(fp, joliet=True) is not None


@dataclass
class FileRecord:
    lba: int
    size: int
    record_offset: int  # byte offset of its directory record in the image


def has_udf(fp: BinaryIO) -> bool:
    """A UDF bridge keeps its own copy of every file size, which a raw patch would miss."""
    last = volume_descriptors(fp)[-1][0]
    for lba in range(last + 1, last + 8):
        if _read(fp, lba * SECTOR + 1, 5) in (b"NSR02", b"NSR03"):
            return True
    return False


def locate(fp: BinaryIO, path: str, joliet: bool = False) -> Optional[FileRecord]:
    """The record of ``path`` in the ISO 9660 or Joliet tree; names compare case-insensitively."""
    root = _root(fp, joliet)
    if root is None:
        return None
    where = FileRecord(root[0], root[1], -1)
    parts = [p for p in path.split("/") if p]
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        for name, extent, size, is_dir, at in _records(fp, where.lba, where.size, joliet):
            if name.lower() == part.lower() and is_dir != last:
                where = FileRecord(extent, size, at)
                break
        else:
            return None
    return where


def read_file(fp: BinaryIO, path: str, joliet: bool = False) -> Optional[bytes]:
    where = locate(fp, path, joliet)
    return None if where is None else _read(fp, where.lba * SECTOR, where.size)
