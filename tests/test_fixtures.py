"""tests/fixtures/ is complete: every real output has its source noted, every noted file exists."""

import re

import pytest

from conftest import FIXTURES


@pytest.mark.parametrize("folder", ["vbox", "isolinux"])
def test_every_fixture_has_a_source_and_every_source_a_file(folder):
    sources = (FIXTURES / folder / "SOURCES.md").read_text()
    listed = set(re.findall(r"^\| ([^ |]+) \|", sources, re.M)) - {"file"}
    present = {p.name for p in (FIXTURES / folder).iterdir() if p.name != "SOURCES.md"}
    assert listed, "SOURCES.md lists no file"
    assert present - listed == set(), "fixtures without a noted source"
    assert listed - present == set(), "sources noted for fixtures that are missing"
