"""Every task the ``b2dkit`` command offers has a one-line summary and help for each argument."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# invoke pops a task's help texts when it builds a parser, so read them in a fresh interpreter.
_PROBE = """
import inspect, json
from b2dkit.tasks import ns
out = {}
for name in ns.task_names:
    task = ns[name]
    params = list(inspect.signature(task.body).parameters)[1:]
    doc = inspect.getdoc(task.body) or ""
    out[name] = {"params": params, "help": sorted(task.help), "doc": doc}
print(json.dumps(out))
"""


def _tasks():
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(proc.stdout)


def test_every_task_has_a_summary_and_help_for_every_argument():
    tasks = _tasks()
    expected = {"onboard", "doctor", "vm.create", "vm.start", "vm.stop", "vm.destroy", "vm.status", "vm.ssh",
                "vm.env", "vm.list", "vm.forward", "vm.unforward", "vm.forwards", "vm.mount", "vm.unmount",
                "vm.mounts", "iso.remaster", "iso.show", "iso.cache", "profile.show", "profile.check",
                "profile.list"}
    assert expected <= set(tasks)
    for name, info in tasks.items():
        summary = info["doc"].splitlines()[0] if info["doc"] else ""
        assert summary.endswith("."), f"{name} has no one-line summary"
        missing = set(info["params"]) - set(info["help"])
        assert not missing, f"{name}: no help for {sorted(missing)}"


def test_profile_taking_tasks_also_take_provider_and_name():
    for name, info in _tasks().items():
        if "profile" in info["params"]:
            assert {"provider", "name"} <= set(info["params"]), name


def test_console_command_and_invoke_share_the_namespace():
    listed = subprocess.run([sys.executable, "-m", "b2dkit", "--list"], capture_output=True, text=True, cwd=REPO)
    via_invoke = subprocess.run([sys.executable, "-m", "invoke", "--list"], capture_output=True, text=True,
                                cwd=REPO)
    names = [line.split()[0] for line in listed.stdout.splitlines()[1:] if line.startswith("  ") and
             not line.startswith("   ")]
    assert "vm.forward" in names and "iso.remaster" in names
    for name in names:
        assert name in via_invoke.stdout


def test_a_bug_is_one_line_naming_a_log_with_the_traceback(tmp_path):
    """No traceback reaches a user: an unexpected exception exits 70 with the log to report."""
    home = tmp_path / "home"
    vm = home / "data" / "vms" / "dev"
    vm.mkdir(parents=True)
    (vm / "b2dkit.json").write_text(json.dumps({"name": "dev", "provider": "qemu"}))
    (vm / "machine.json").write_text(json.dumps({"forwards": [{"bogus": 1}]}))  # valid JSON, wrong shape
    env = {"PATH": "/usr/bin:/bin", "B2DKIT_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "b2dkit", "vm.forwards", "--name", "dev"], capture_output=True,
                          text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 70
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("b2dkit: internal error") and "please report" in lines[0]
    logs = list((home / "data" / "logs").glob("crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in lines[0]
    assert "Traceback" in logs[0].read_text() and "TypeError" in logs[0].read_text()
