#!/usr/bin/env bash
# First-day onboarding for a laptop that has only Python 3: make (or reuse) a venv,
# install b2dkit into it, then run `b2dkit onboard` with your arguments.
# Safe to re-run at any time; every step skips what is already done.
#   ./onboard.sh --profile=cst            # the team's VirtualBox set-up
#   ./onboard.sh --profile=demo           # no VirtualBox, no internet: QEMU + a locally built guest
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${B2DKIT_VENV:-$here/.venv}"
python="${PYTHON:-python3}"
sudo="sudo "  # hints as b2dkit prints them: root runs the package manager itself (no sudo on a bare machine)
[ "$EUID" -ne 0 ] || sudo=""

if ! command -v "$python" >/dev/null 2>&1; then
    echo "onboard.sh: $python not found; install Python 3.9+ first (macOS: brew install python; Debian: ${sudo}apt-get install python3 python3-venv)" >&2
    exit 3
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "onboard.sh: creating a virtualenv in $venv"
    "$python" -m venv "$venv" || {
        echo "onboard.sh: could not create a venv; on Debian/Ubuntu: ${sudo}apt-get install python3-venv" >&2
        exit 3
    }
fi
stamp="$venv/.b2dkit-installed"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
    echo "onboard.sh: installing b2dkit into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$here"
    touch "$stamp"
fi
exec "$venv/bin/b2dkit" onboard "$@"
