"""``b2dkit profile.*`` through the real invoke Program, as a user types it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from b2dkit import profile
from cli import run, run_failing

REPO = Path(__file__).resolve().parents[1]




def test_show_prints_yaml_that_parses_back_to_the_resolved_profile(capsys):
    run("profile.show", "--profile=cst")
    out = capsys.readouterr().out
    assert yaml.safe_load(out) == profile.load("cst").to_dict()
    header = [line for line in out.splitlines() if line.startswith("#")]
    assert "cst.yaml <- " in header[0] and header[0].endswith("default.yaml")
    assert header[1] == "# tz CST-8 is UTC+08:00"


def test_show_json_with_overrides(capsys):
    run("profile.show", "-p", "cst", "--json", "--provider", "virtualbox", "--name", "dev-2")
    data = json.loads(capsys.readouterr().out)
    assert data == profile.load("cst", provider="virtualbox", name="dev-2").to_dict()
    assert (data["name"], data["provider"]) == ("dev-2", "virtualbox")
    assert data["boot_codes"] == {"tz": "CST-8"}
    assert [(f["host"], f["guest"], f["host_ip"]) for f in data["forwards"]] == [
        (2022, 22, "127.0.0.1"), (8000, 8000, "127.0.0.1")]


def test_show_defaults_to_the_default_profile(capsys):
    run("profile.show", "--json")
    assert json.loads(capsys.readouterr().out) == profile.load("default").to_dict()


def test_show_unknown_profile_is_one_line_and_exit_2(capsys):
    code, captured = run_failing(capsys, "profile.show", "--profile=nosuch")
    assert code == 2
    assert captured.out == ""
    assert captured.err.startswith("b2dkit: error: unknown profile 'nosuch'")
    assert captured.err.count("\n") == 1


def test_check_ok_exits_zero(tmp_path, capsys):
    path = tmp_path / "team.yaml"
    path.write_text("extends: cst\nmemory: 4096\n")
    run("profile.check", str(path))
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {path}: VM 'b2dkit'")
    assert "cst.yaml" in out


def test_check_bad_file_prints_the_one_line_error_and_exits_nonzero(tmp_path, capsys):
    path = tmp_path / "team.yaml"
    path.write_text("extends: cst\nboot_codes: {tz: Asia/Shanghai}\n")
    code, captured = run_failing(capsys, "profile.check", str(path))
    assert code == 2
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"b2dkit: error: {path}: boot_codes.tz: time zone 'Asia/Shanghai'")
    assert "Traceback" not in captured.err


def test_check_missing_file(tmp_path, capsys):
    code, captured = run_failing(capsys, "profile.check", str(tmp_path / "nope.yaml"))
    assert code == 2 and "does not exist" in captured.err


def test_list_names_every_profile_with_its_path(tmp_path, monkeypatch, capsys):
    (tmp_path / "team.yaml").write_text("extends: default\ndescription: team box\n")
    (tmp_path / "broken.yaml").write_text("memroy: 1\n")
    monkeypatch.setenv("B2DKIT_PROFILES", str(tmp_path))
    run("profile.list")
    lines = capsys.readouterr().out.splitlines()
    by_name = {line.split()[0]: line for line in lines}
    assert set(by_name) == {"broken", "cst", "default", "demo", "team"}
    assert "team box" in by_name["team"] and str(tmp_path / "team.yaml") in by_name["team"]
    assert "invalid" in by_name["broken"]
    run("profile.list", "--json")
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == ["broken", "cst", "default", "demo", "team"]


def test_help_documents_every_option():
    # A fresh process: invoke 3 pops each task's help dict the first time it builds the
    # parser, so in-process runs after the first one show no help text.
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    out = subprocess.run(
        [sys.executable, "-m", "b2dkit", "--help", "profile.show"],
        capture_output=True, text=True, env=env, check=True, cwd=REPO,
    ).stdout
    words = " ".join(out.split())
    for flag, text in [
        ("--profile", "profile name in profiles/"),
        ("--provider", "override the profile's provider"),
        ("--name", "override the profile's VM name"),
        ("--json", "print JSON instead of YAML"),
    ]:
        assert f"{flag} " in words or f"{flag}=" in words
        assert text in words


def test_list_shows_every_task(capsys):
    run("--list")
    listing = capsys.readouterr().out
    for name in ("profile.show", "profile.check", "profile.list"):
        assert name in listing
