#!/usr/bin/env bash
# Run b2dkit's tests (all of them, QEMU boots included) in the project venv, creating it
# on first use. Extra arguments go to pytest, e.g. ./test.sh -m "not e2e".
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"
