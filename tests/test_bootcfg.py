"""bootcfg: syslinux config edits keep every byte they do not need to change."""

import difflib

import pytest

from b2dkit import bootcfg
from b2dkit.errors import InputError

from conftest import fixture

SAMPLES = ["isolinux.cfg", "isolinux.legacy_pre_v18.09.cfg"]


def changed_lines(before: bytes, after: bytes):
    """The (removed, added) lines of a diff, so a test can say exactly what moved."""
    diff = list(
        difflib.ndiff(before.decode("latin-1").splitlines(True), after.decode("latin-1").splitlines(True))
    )
    removed = [d[2:] for d in diff if d.startswith("- ")]
    added = [d[2:] for d in diff if d.startswith("+ ")]
    return removed, added


@pytest.fixture(params=SAMPLES)
def real_cfg(request):
    return fixture("isolinux", request.param).read_bytes()


# --- boot codes --------------------------------------------------------------


@pytest.mark.parametrize(
    "code, expected",
    [
        ("tz=CST-8", ("tz", "CST-8")),
        ("noembed", ("noembed", None)),
        ("waitusb=5:LABEL=x", ("waitusb", "5:LABEL=x")),
        ("quiet=", ("quiet", "")),
    ],
)
def test_parse_code_splits_key_and_value(code, expected):
    assert bootcfg.parse_code(code) == expected


@pytest.mark.parametrize(
    "code", ["", "tz=CST -8", "tz='CST-8'", 'tz="x"', "=CST-8", "tz=\x07", "a\tb", "tz=CST\u00e9"]
)
def test_parse_code_rejects_with_one_line_naming_the_code(code):
    with pytest.raises(InputError) as err:
        bootcfg.parse_code(code)
    message = str(err.value)
    assert "\n" not in message
    if code:
        assert repr(code) in message


@pytest.mark.parametrize(
    "tz",
    [
        "CST-8",
        "IST-5:30",
        "UTC0",
        "<+0530>-5:30",
        "EST5EDT,M3.2.0,M11.1.0",
        "JST-9",
        "CET-1CEST,M3.5.0,M10.5.0/3",
        "NZST-12NZDT,J60/2,300",
    ],
)
def test_validate_tz_accepts_posix_strings(tz):
    assert bootcfg.validate_tz(tz) == tz


def test_validate_tz_rejects_iana_names_with_a_hint():
    with pytest.raises(InputError, match="POSIX TZ such as CST-8"):
        bootcfg.validate_tz("Asia/Shanghai")


@pytest.mark.parametrize("tz", ["", "UTC", "CST", "8", "CST-99", "CST-8 ", "C-8"])
def test_validate_tz_rejects_other_garbage(tz):
    with pytest.raises(InputError):
        bootcfg.validate_tz(tz)


@pytest.mark.parametrize(
    "tz, shown",
    [
        ("CST-8", "UTC+08:00"),
        ("IST-5:30", "UTC+05:30"),
        ("UTC0", "UTC+00:00"),
        ("EST5EDT,M3.2.0,M11.1.0", "UTC-05:00"),
        ("<+0530>-5:30", "UTC+05:30"),
        ("HST+10", "UTC-10:00"),
    ],
)
def test_tz_utc_offset_inverts_the_posix_sign(tz, shown):
    assert bootcfg.tz_utc_offset(tz) == shown


def test_apply_validates_tz_values():
    with pytest.raises(InputError, match="IANA"):
        bootcfg.apply(b"label a\n kernel /k\n append x\n", ["tz=Asia/Shanghai"])


# --- parsing -------------------------------------------------------------------


def test_parse_real_v19_cfg():
    cfg = bootcfg.parse(fixture("isolinux", "isolinux.cfg").read_bytes())
    assert [lb.name for lb in cfg.labels] == ["boot2docker"]
    label = cfg.labels[0]
    assert label.kernel == "/boot/vmlinuz"
    assert label.initrd == "/boot/initrd.img"
    assert label.append.startswith("loglevel=3 console=ttyS0")
    assert cfg.newline == b"\n"
    assert cfg.default is None


def test_parse_real_legacy_cfg():
    cfg = bootcfg.parse(fixture("isolinux", "isolinux.legacy_pre_v18.09.cfg").read_bytes())
    assert cfg.default == "boot2docker"
    label = cfg.label("boot2docker")
    assert label.kernel_path == "/boot/vmlinuz64"
    assert label.kernel == "/boot/vmlinuz64 com1=9600,8n1"
    assert "waitusb=10:LABEL=boot2docker-data" in label.append.split()


def test_parse_case_insensitive_keywords_crlf_and_missing_append():
    cfg = bootcfg.parse(
        b"DEFAULT one\r\nLABEL one\r\n  LINUX /vmlinuz\r\n  APPEND initrd=/i.gz quiet\r\n"
        b"label two\r\n  kernel /k2\r\n"
    )
    assert cfg.newline == b"\r\n"
    assert cfg.default == "one"
    one, two = cfg.labels
    assert (one.kernel, one.initrd, one.append) == ("/vmlinuz", "/i.gz", "initrd=/i.gz quiet")
    assert (two.name, two.kernel, two.append) == ("two", "/k2", None)


# --- applying ------------------------------------------------------------------


def test_apply_real_cfgs_changes_only_the_append_line(real_cfg):
    out = bootcfg.apply(real_cfg, ["tz=CST-8"])
    removed, added = changed_lines(real_cfg, out)
    assert len(removed) == len(added) == 1
    assert removed[0].lstrip().startswith("append ")
    assert added[0] == removed[0].rstrip("\n") + " tz=CST-8\n"
    assert bootcfg.apply(out, ["tz=CST-8"]) == out


def test_apply_replaces_existing_value_in_place():
    cfg = b"label b\n\tkernel /k\n\tappend a tz=UTC b\n"
    assert bootcfg.apply(cfg, ["tz=CST-8"]) == b"label b\n\tkernel /k\n\tappend a tz=CST-8 b\n"


def test_apply_keeps_one_value_per_key():
    cfg = b"label b\n kernel /k\n append tz=UTC a tz=EST5\n"
    assert bootcfg.apply(cfg, ["tz=CST-8"]) == b"label b\n kernel /k\n append tz=CST-8 a\n"


def test_apply_bare_flag_added_once_and_removed():
    cfg = b"label b\n kernel /k\n append a\n"
    once = bootcfg.apply(cfg, ["noembed"])
    assert once == b"label b\n kernel /k\n append a noembed\n"
    assert bootcfg.apply(once, ["noembed"]) == once
    assert bootcfg.apply(once, remove=["noembed"]) == cfg


def test_remove_by_key_or_exact_code():
    cfg = b"label b\n kernel /k\n append console=ttyS0 console=tty0 tz=UTC\n"
    assert bootcfg.apply(cfg, remove=["tz"]) == b"label b\n kernel /k\n append console=ttyS0 console=tty0\n"
    assert (
        bootcfg.apply(cfg, remove=["console=tty0"]) == b"label b\n kernel /k\n append console=ttyS0 tz=UTC\n"
    )


def test_remove_everything_writes_syslinux_none_marker():
    cfg = b"label b\n kernel /k\n append tz=UTC\n"
    assert bootcfg.apply(cfg, remove=["tz"]) == b"label b\n kernel /k\n append -\n"


def test_append_dash_is_replaced_not_extended():
    cfg = b"label b\n kernel /k\n append -\n"
    assert bootcfg.apply(cfg, ["tz=CST-8"]) == b"label b\n kernel /k\n append tz=CST-8\n"


def test_keeps_crlf_tabs_comments_case_and_initrd_code():
    cfg = (
        b"# top comment\r\nDEFAULT x\r\n\r\nLABEL x\r\n\tLINUX /vmlinuz\r\n# inner comment\r\n"
        b"\tAPPEND\tinitrd=/initrd.img  quiet\t \r\n"
    )
    out = bootcfg.apply(cfg, ["tz=CST-8"])
    assert out == cfg.replace(b"quiet\t \r\n", b"quiet tz=CST-8\t \r\n")


def test_label_without_append_gets_one_indented_like_its_siblings():
    cfg = (
        b"label a\n    kernel /ka\n    append x\n"
        b"label b\n    kernel /kb\n    initrd /ib\n\n"
        b"label c\n  kernel /kc"
    )
    out = bootcfg.apply(cfg, ["tz=CST-8"])
    assert out == (
        b"label a\n    kernel /ka\n    append x tz=CST-8\nlabel b\n    kernel /kb\n    initrd /ib\n"
        b"    append tz=CST-8\n\nlabel c\n  kernel /kc\n  append tz=CST-8"
    )
    assert bootcfg.apply(out, ["tz=CST-8"]) == out


def test_new_append_matches_uppercase_keywords_and_crlf():
    out = bootcfg.apply(b"LABEL a\r\n\tKERNEL /k\r\n", ["tz=CST-8"])
    assert out == b"LABEL a\r\n\tKERNEL /k\r\n\tAPPEND tz=CST-8\r\n"


def test_one_label_only_and_unknown_label():
    cfg = b"label a\n kernel /ka\n append x\nlabel b\n kernel /kb\n append y\n"
    assert bootcfg.apply(cfg, ["tz=CST-8"], label="b") == cfg.replace(b"append y", b"append y tz=CST-8")
    with pytest.raises(InputError, match="no label 'zz'.*labels: a, b"):
        bootcfg.apply(cfg, ["tz=CST-8"], label="zz")


def test_menu_modules_and_localboot_are_left_alone():
    cfg = b"label linux\n kernel /vmlinuz\n append q\nlabel hdt\n com32 hdt.c32\nlabel m\n kernel menu.c32\n"
    out = bootcfg.apply(cfg, ["tz=CST-8"])
    assert out == cfg.replace(b"append q", b"append q tz=CST-8")


def test_global_append_is_edited_and_inherited():
    cfg = b"append g\nlabel a\n kernel /ka\nlabel b\n kernel /kb\n append own\n"
    out = bootcfg.apply(cfg, ["tz=CST-8"])
    assert out == b"append g tz=CST-8\nlabel a\n kernel /ka\nlabel b\n kernel /kb\n append own tz=CST-8\n"
    # Only label a: it must keep the inherited codes it had before.
    only_a = bootcfg.apply(cfg, ["tz=CST-8"], label="a")
    assert (
        only_a == b"append g\nlabel a\n kernel /ka\n append g tz=CST-8\nlabel b\n kernel /kb\n append own\n"
    )


def test_contradictory_changes_are_refused():
    cfg = b"label a\n kernel /k\n append x\n"
    with pytest.raises(InputError, match="twice"):
        bootcfg.apply(cfg, ["tz=CST-8", "tz=UTC0"])
    with pytest.raises(InputError, match="both set"):
        bootcfg.apply(cfg, ["tz=CST-8"], remove=["tz"])


def test_no_labels_is_an_error():
    with pytest.raises(InputError, match="no LABEL"):
        bootcfg.apply(b"serial 0\nprompt 1\n", ["tz=CST-8"])


def test_non_utf8_bytes_survive():
    cfg = b"label a\n menu label Caf\xe9 \x85\x0c\n kernel /k\n append x\n"
    assert bootcfg.apply(cfg, ["tz=CST-8"]) == cfg.replace(b"append x", b"append x tz=CST-8")


def test_boot_codes_the_kernel_would_cut_off_are_refused():
    cfg = b"DEFAULT b\nLABEL b\n  KERNEL /boot/vmlinuz\n  APPEND loglevel=3\n"
    with pytest.raises(InputError, match="Linux keeps only the first 2047"):
        bootcfg.apply(cfg, ["x=" + "a" * 3000])
    with pytest.raises(InputError, match="Linux keeps only the first 2047"):  # a label without an append line
        bootcfg.apply(b"LABEL b\n  KERNEL /boot/vmlinuz\n", ["x=" + "a" * 3000])
    assert b"x=" + b"a" * 1000 in bootcfg.apply(cfg, ["x=" + "a" * 1000])  # long but whole: fine
