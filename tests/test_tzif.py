"""tzif: the generated /etc/localtime is read back by two independent readers: CPython's
zoneinfo (from a temporary TZPATH) and glibc (`date` with TZ=/path/to/file), at instants on
both sides of DST changes."""

import datetime
import shutil
import subprocess
import zoneinfo

import pytest

from b2dkit import tzif
from b2dkit.errors import InputError

UTC = datetime.timezone.utc


def at(*args) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=UTC)


# (POSIX TZ, UTC instant, expected abbreviation, expected offset as date's %z)
CASES = [
    ("CST-8", at(2026, 1, 15, 12), "CST", "+0800"),
    ("CST-8", at(2026, 7, 1, 12), "CST", "+0800"),
    ("IST-5:30", at(2026, 7, 1, 12), "IST", "+0530"),
    ("<+0545>-5:45", at(2026, 3, 1), "+0545", "+0545"),
    ("UTC0", at(2026, 3, 1), "UTC", "+0000"),
    ("EST5EDT,M3.2.0,M11.1.0", at(2026, 1, 15, 12), "EST", "-0500"),
    ("EST5EDT,M3.2.0,M11.1.0", at(2026, 7, 1, 12), "EDT", "-0400"),
    # 2026-03-08 02:00 EST = 07:00 UTC: one second before and at the change
    ("EST5EDT,M3.2.0,M11.1.0", at(2026, 3, 8, 6, 59, 59), "EST", "-0500"),
    ("EST5EDT,M3.2.0,M11.1.0", at(2026, 3, 8, 7, 0, 0), "EDT", "-0400"),
    ("EST5EDT,M3.2.0,M11.1.0", at(2035, 11, 4, 5, 59, 59), "EDT", "-0400"),
    ("EST5EDT,M3.2.0,M11.1.0", at(2035, 11, 4, 6, 0, 0), "EST", "-0500"),
    ("EST5EDT,M3.2.0,M11.1.0", at(1990, 7, 1), "EDT", "-0400"),  # the rule, not history: also in the past
    ("AEST-10AEDT,M10.1.0,M4.1.0/3", at(2026, 1, 15), "AEDT", "+1100"),
    ("AEST-10AEDT,M10.1.0,M4.1.0/3", at(2026, 7, 15), "AEST", "+1000"),
    ("CET-1CEST-2,M3.5.0,M10.5.0/3", at(2026, 7, 15), "CEST", "+0200"),
    # RFC 8536 version 3: a transition hour outside 0..24 (America/Nuuk's rule)
    ("<-02>2<-01>,M3.5.0/-1,M10.5.0/0", at(2026, 7, 15), "-01", "-0100"),
    ("<-02>2<-01>,M3.5.0/-1,M10.5.0/0", at(2026, 1, 15), "-02", "-0200"),
]


def offset_text(delta: datetime.timedelta) -> str:
    minutes = int(delta.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


@pytest.fixture
def tzpath(tmp_path):
    """A zoneinfo search path holding only our files; restored afterwards."""
    zoneinfo.reset_tzpath([str(tmp_path)])
    zoneinfo.ZoneInfo.clear_cache()
    yield tmp_path
    zoneinfo.reset_tzpath()
    zoneinfo.ZoneInfo.clear_cache()


def install(directory, tz: str, name="localtime"):
    path = directory / name
    path.write_bytes(tzif.build(tz))
    return path


@pytest.mark.parametrize("tz,instant,abbr,offset", CASES)
def test_python_zoneinfo_reads_it(tzpath, tz, instant, abbr, offset):
    install(tzpath, tz)
    zone = zoneinfo.ZoneInfo("localtime")
    local = instant.astimezone(zone)
    assert local.tzname() == abbr
    assert offset_text(local.utcoffset()) == offset


@pytest.mark.parametrize("tz,instant,abbr,offset", CASES)
def test_glibc_date_reads_it(tmp_path, tz, instant, abbr, offset):
    date = shutil.which("date")
    if not date:
        pytest.skip("no date(1)")
    path = install(tmp_path, tz)
    proc = subprocess.run([date, "-d", f"@{int(instant.timestamp())}", "+%Z %z"], capture_output=True, text=True,
                          env={"TZ": str(path), "LC_ALL": "C"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [abbr, offset]


def test_layout_header_footer_and_versions():
    fixed = tzif.build("CST-8")
    assert fixed[:5] == b"TZif2"
    assert fixed.endswith(b"\nCST-8\n")
    assert fixed.count(b"TZif") == 2  # v1 block, then the v2 header
    assert tzif.build("<-02>2<-01>,M3.5.0/-1,M10.5.0/0")[:5] == b"TZif3"
    # no transitions for a fixed zone: timecnt is 0 in both headers
    assert fixed[32:36] == b"\0\0\0\0"
    assert tzif.build(" CST-8 ") == fixed  # deterministic, trimmed


def test_parse_gives_east_positive_offsets():
    tz = tzif.parse("IST-5:30")
    assert (tz.std, tz.std_utoff, tz.dst) == ("IST", 19800, None)
    dst = tzif.parse("EST5EDT,M3.2.0,M11.1.0")
    assert (dst.std_utoff, dst.dst, dst.dst_utoff, dst.rule) == (-18000, "EDT", -14400, "M3.2.0,M11.1.0")


@pytest.mark.parametrize("bad", ["Asia/Shanghai", "EST5EDT", "", "CST", "CST-25"])
def test_bad_tz_is_a_one_line_error(bad):
    with pytest.raises(InputError) as info:
        tzif.build(bad)
    assert "\n" not in str(info.value)
