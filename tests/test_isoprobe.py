"""isoprobe: our raw reader agrees with xorriso and isoinfo about the boot structures."""

import io
import os
import struct

import pytest

import isofixtures as fx
from b2dkit import isoprobe


@pytest.fixture(scope="module", params=["v19", "legacy"])
def image(request, tmp_path_factory):
    missing = fx.tools_available()
    if missing:
        pytest.skip(missing)
    path = fx.build_iso(tmp_path_factory.mktemp("probe") / f"{request.param}.iso", request.param)
    return request.param, path


def report_value(report: str, prefix: str) -> list:
    return next(ln for ln in report.splitlines() if ln.startswith(prefix)).split(":", 1)[1].split()


def test_boot_catalog_and_entry_match_xorriso(image):
    _layout, path = image
    report = fx.el_torito_report(path)
    with open(path, "rb") as fp:
        assert isoprobe.boot_catalog_lba(fp) == int(report_value(report, "El Torito catalog")[0])
        (entry,) = isoprobe.boot_entries(fp)
    img = report_value(report, "El Torito boot img")
    assert (entry.platform, entry.emulation, entry.sector_count, entry.lba) == (
        img[1],
        img[3],
        int(img[6]),
        int(img[7]),
    )
    assert entry.bootable and img[2] == "y"


def test_boot_info_table_is_the_one_mkisofs_wrote(image):
    _layout, path = image
    bin_size = (fx.ISOLINUX_DIR / "isolinux.bin").stat().st_size
    with open(path, "rb") as fp:
        (entry,) = isoprobe.boot_entries(fp)
        table = isoprobe.boot_info_table(fp, entry.lba)
    assert (table.pvd_lba, table.file_lba, table.length) == (16, entry.lba, bin_size)
    assert table.checksum_ok and table.valid


def test_isohybrid_mbr_matches_xorriso(image):
    _layout, path = image
    report = fx.system_area_report(path)
    with open(path, "rb") as fp:
        mbr = isoprobe.isohybrid_mbr(fp)
        entry = isoprobe.boot_entries(fp)[0]
    assert mbr.heads == int(report_value(report, "MBR heads per cyl")[0])
    assert mbr.sectors == int(report_value(report, "MBR secs per head")[0])
    assert mbr.partition_sectors == int(report_value(report, "MBR partition      ")[-1])
    assert mbr.rba == 4 * entry.lba and mbr.signature_ok
    assert mbr.code[:432] == (fx.ISOLINUX_DIR / "isohdpfx.bin").read_bytes()[:432]


def test_volume_id_and_file_lookup_match_isoinfo(image):
    layout, path = image
    with open(path, "rb") as fp:
        assert isoprobe.volume_id(fp) == "b2d-v19.03.12"
        assert isoprobe.read_file(fp, fx.cfg_path(layout)) == fx.sample_cfg(layout)
        assert isoprobe.has_joliet(fp) is (layout == "legacy")
        if layout == "legacy":
            assert isoprobe.read_file(fp, fx.cfg_path(layout), joliet=True) == fx.sample_cfg(layout)
        assert isoprobe.locate(fp, "/no/such/file") is None


def test_checksum_is_the_mkisofs_sum():
    data = bytes(64) + struct.pack("<3L", 1, 2, 0xFFFFFFFF) + b"\x05"
    assert isoprobe.bit_checksum(data) == (1 + 2 + 0xFFFFFFFF + 5) & 0xFFFFFFFF


def test_not_an_iso():
    with pytest.raises(isoprobe.NotAnIso):
        isoprobe.volume_id(io.BytesIO(os.urandom(40 * 2048)))
    assert isoprobe.isohybrid_mbr(io.BytesIO(bytes(4096))) is None
