#!/usr/bin/env bash
# A Python virtualenv for test tools (moto, pika, helm-python-sdk, ...), outside the clone.
# Usage: bash e2e/venv.sh          -> installs e2e/requirements.txt, prints the venv path
#        bash e2e/venv.sh path     -> prints the venv path only
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv="${NERITE_VENV:-$HOME/.cache/nerite/venv}"
req="$here/requirements.txt"
if [ "${1:-}" = "path" ]; then
    echo "$venv"
    exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2
fi
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$venv/bin/pip" install --disable-pip-version-check -q -r "$req" >&2
    echo "$want" > "$stamp"
fi
echo "$venv"
