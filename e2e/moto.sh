#!/usr/bin/env bash
# Install and run throwaway moto servers (an SQS-compatible API) for nerite's tests.
#
#   e2e/moto.sh install
#       Install moto into the project's Python virtualenv (e2e/venv.sh) when missing.
#   e2e/moto.sh start DIR PORT
#       Start `moto_server` bound to 127.0.0.1:PORT with its files under DIR, and wait until
#       it answers (deadline NERITE_MOTO_START_TIMEOUT seconds, default 60).
#   e2e/moto.sh stop DIR
#       Kill the server started from DIR (idempotent; only the pid its pid file names, and
#       only while that process is still a moto server).
#   e2e/moto.sh status DIR
#       Exit 0 and print "running" when the server answers, else print "stopped" and exit 3.
#
# Environment: NERITE_MOTO_OWNER_PID, when set, is a process whose exit stops the server (so a
# test run that is killed does not leave servers behind).

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
START_TIMEOUT="${NERITE_MOTO_START_TIMEOUT:-60}"

die() {
    echo "moto.sh: $*" >&2
    exit 1
}

usage() {
    cat >&2 <<'EOF'
usage: moto.sh install
       moto.sh start DIR PORT
       moto.sh stop DIR
       moto.sh status DIR
EOF
    exit 2
}

venv() {
    bash "$HERE/venv.sh" path
}

cmd_install() {
    local v
    v=$(venv)
    if [ -x "$v/bin/moto_server" ]; then
        return 0
    fi
    echo "moto.sh: installing moto into $v" >&2
    bash "$HERE/venv.sh" >/dev/null
    [ -x "$v/bin/moto_server" ] || die "moto_server is still missing after installing e2e/requirements.txt"
}

# True when PID runs; a zombie counts as gone.
pid_alive() {
    [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    [ "${stat:0:1}" != "Z" ]
}

read_pid() {
    [ -f "$1" ] || return 0
    tr -dc '0-9' <"$1"
}

answers() {
    local port=$1
    "$(venv)/bin/python" - "$port" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/data.json", timeout=2).read()
EOF
}

cmd_start() {
    [ $# -ge 2 ] || usage
    local dir=$1 port=$2
    case "$port" in '' | *[!0-9]*) die "not a port number: $port" ;; esac
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    cmd_install
    if pid_alive "$(read_pid "$dir/moto.pid")"; then
        die "a moto server already runs from $dir (stop it first)"
    fi
    echo "$port" >"$dir/port"
    local started
    started=$(date +%s)
    (cd "$dir" && exec setsid "$(venv)/bin/moto_server" -H 127.0.0.1 -p "$port" \
        </dev/null >"$dir/moto.log" 2>&1) &
    local pid=$!
    echo "$pid" >"$dir/moto.pid"

    local owner="${NERITE_MOTO_OWNER_PID:-}"
    if [ -n "$owner" ]; then
        pid_alive "$owner" || die "owner process $owner is not running"
        # shellcheck disable=SC2016
        setsid bash -c 'while [ -e "/proc/$1" ] && [ "$(cut -d" " -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; do sleep 1; done; exec bash "$2" stop "$3"' \
            nerite-moto-watchdog "$owner" "$SELF" "$dir" </dev/null >/dev/null 2>&1 &
        echo $! >"$dir/watchdog.pid"
    fi

    local deadline=$((started + START_TIMEOUT))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if ! pid_alive "$pid"; then
            echo "moto.sh: moto_server exited during startup:" >&2
            tail -n 30 "$dir/moto.log" >&2 || true
            cmd_stop "$dir" >/dev/null 2>&1 || true
            exit 1
        fi
        if answers "$port"; then
            echo "moto.sh: moto ready in $(($(date +%s) - started))s on http://127.0.0.1:$port (pid $pid)" >&2
            return 0
        fi
        sleep 0.2
    done
    echo "moto.sh: moto in $dir did not answer within ${START_TIMEOUT}s:" >&2
    tail -n 30 "$dir/moto.log" >&2 || true
    cmd_stop "$dir" >/dev/null 2>&1 || true
    exit 1
}

# Kill the process in FILE if it still runs and its command line mentions WHAT.
kill_pid_file() {
    local file=$1 what=$2 pid cmd i
    pid=$(read_pid "$file")
    if pid_alive "$pid"; then
        cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
        if [[ "$cmd" == *"$what"* ]]; then
            kill -TERM "$pid" 2>/dev/null || true
            for i in $(seq 1 30); do
                pid_alive "$pid" || break
                sleep 0.1
            done
            pid_alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$file"
}

cmd_stop() {
    [ $# -ge 1 ] || usage
    local dir=$1
    [ -d "$dir" ] || return 0
    dir=$(cd "$dir" && pwd)
    if [ "$(read_pid "$dir/watchdog.pid")" = "$$" ]; then
        rm -f "$dir/watchdog.pid"
    else
        kill_pid_file "$dir/watchdog.pid" watchdog
    fi
    kill_pid_file "$dir/moto.pid" moto_server
}

cmd_status() {
    [ $# -ge 1 ] || usage
    local dir=$1
    if [ -d "$dir" ] && pid_alive "$(read_pid "$dir/moto.pid")" && answers "$(cat "$dir/port")"; then
        echo "running (port $(cat "$dir/port"))"
        return 0
    fi
    echo "stopped"
    return 3
}

[ $# -ge 1 ] || usage
sub=$1
shift
case "$sub" in
    install) cmd_install "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    *) usage ;;
esac
