#!/usr/bin/env bash
# Print the path of a kubectl for offline checks (`kubectl kustomize`). Uses the one on PATH;
# otherwise unpacks Debian's kubernetes-client package into $HOME/.cache/nerite/kubectl
# (no system-wide install, nothing to remove). Exit 1 when none can be had.
# Usage: bash e2e/kubectl.sh [--debian]   (--debian: always use Debian's package)
set -euo pipefail
cache="${NERITE_CACHE:-$HOME/.cache/nerite}"
if [ "${1:-}" != "--debian" ] && command -v kubectl >/dev/null 2>&1; then
    command -v kubectl
    exit 0
fi
dest="$cache/kubectl"
bin="$dest/usr/bin/kubectl"
if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download kubernetes-client >&2 2>"$work/err"; then
    # The package lists may be missing on a fresh machine.
    if [ "$(id -u)" = 0 ]; then
        apt-get -o DPkg::Lock::Timeout=600 update >&2 || true
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n apt-get -o DPkg::Lock::Timeout=600 update >&2 || true
    fi
    apt-get download kubernetes-client >&2 || { cat "$work/err" >&2; exit 1; }
fi
mkdir -p "$dest"
dpkg -x ./kubernetes-client_*.deb "$dest"
[ -x "$bin" ] || { echo "kubernetes-client has no usr/bin/kubectl" >&2; exit 1; }
echo "$bin"
