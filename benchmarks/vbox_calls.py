"""Count VBoxManage calls per provider operation (issue #3 budgets), via the fake's call log.

docker-machine's create makes 13 calls (reference §2.2); b2dkit's targets: create ≤ 10,
forward ≤ 2, status 1, on every VirtualBox version the fake imitates (issue #12).
Run: PYTHONPATH=. python benchmarks/vbox_calls.py [VERSION ...]
"""

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from ports import free_port  # noqa: E402  (the tests' one: never the same port twice)

import fakevbox  # noqa: E402
from fakevbox.versions import VERSIONS  # noqa: E402

DOCKER_MACHINE_CREATE = 13
BUDGETS = {
    "create": 10,
    "create again (no-op)": 1,
    "add_forward (stopped)": 2,
    "add_forward (running)": 2,
    "add_forward again (no-op)": 2,
    "remove_forward": 2,
    "state": 1,
    "info (vm.status)": 1,
    "start": 3,
    "stop": 4,
    "destroy": 4,
}


def main(versions=None):
    over = 0
    summary = []
    for version in versions or list(VERSIONS):
        print(f"== VirtualBox {version} (fake)")
        os.environ["FAKEVBOX_VERSION"] = version
        bad, counts = run_version()
        over += bad
        summary.append((version, counts))
        print()
    keys = ["create", "add_forward (stopped)", "add_forward (running)", "info (vm.status)"]
    print(f"{'version':10} " + " ".join(f"{k:>22}" for k in keys))
    for version, counts in summary:
        print(f"{version:10} " + " ".join(f"{counts[k]:>22}" for k in keys))
    return 1 if over else 0


def run_version():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["B2DKIT_HOME"] = str(tmp / "home")
        fake = fakevbox.install(tmp / "fake")
        os.environ.update(fake.env())
        from b2dkit.forwards import Forward, parse_spec
        from b2dkit.hypervisors.base import MachineSpec
        from b2dkit.hypervisors.virtualbox.provider import VirtualBoxProvider

        iso = tmp / "b2d.iso"
        iso.write_bytes(b"iso")
        spec = MachineSpec(
            "bench",
            1024,
            2,
            16,
            iso,
            [Forward(free_port(), 22, name="ssh"), parse_spec(f"{free_port()}:8000")],
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBench bench",
        )
        vm = VirtualBoxProvider("bench", sleep=lambda s: None)
        web = parse_spec(f"{free_port()}:80")
        steps = [
            ("create", lambda: vm.create(spec)),
            ("create again (no-op)", lambda: vm.create(spec)),
            ("add_forward (stopped)", lambda: vm.add_forward(web)),
            ("add_forward again (no-op)", lambda: vm.add_forward(web)),
            ("remove_forward", lambda: vm.remove_forward(web.name)),
            ("state", vm.state),
            ("info (vm.status)", vm.info),
            ("start", vm.start),
            ("add_forward (running)", lambda: vm.add_forward(web)),
            ("stop", lambda: vm.stop(timeout=1)),
            ("destroy", vm.destroy),
        ]
        print(f"{'operation':28} {'calls':>5} {'budget':>6}  subcommands")
        over = 0
        counts = {}
        for name, step in steps:
            mark = len(fake.calls())
            step()
            calls = fake.calls()[mark:]
            budget = BUDGETS[name]
            counts[name] = len(calls)
            over += len(calls) > budget
            flag = "" if len(calls) <= budget else "  OVER BUDGET"
            print(f"{name:28} {len(calls):>5} {budget:>6}  {' '.join(c[0] for c in calls)}{flag}")
            if name == "create":
                create_calls = len(calls)
        print(
            f"\ncreate: {create_calls} calls vs docker-machine {DOCKER_MACHINE_CREATE} "
            f"(ratio {create_calls / DOCKER_MACHINE_CREATE:.2f})"
        )
        return over, counts


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
