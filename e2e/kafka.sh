#!/usr/bin/env bash
# Throwaway Kafka-protocol brokers for nerite's tests: tansu (crates.io), built once and
# cached outside the clone.
#
#   e2e/kafka.sh install
#       Build tansu into $NERITE_CACHE (default ~/.cache/nerite) when missing; print its path.
#   e2e/kafka.sh start DIR PORT [USER:PASSWORD ...]
#       Start a broker with sqlite storage under DIR on 127.0.0.1:PORT and wait until it
#       listens. With users given, they are created (SCRAM-SHA-512) and the broker is
#       restarted with SASL authentication required.
#   e2e/kafka.sh stop DIR
#       Kill the broker started from DIR (only the pid its pid file names, and only while that
#       process is still tansu).
#
# Environment: NERITE_KAFKA_OWNER_PID, when set, is a process whose exit stops the broker (so
# a test run that is killed does not leave brokers behind). NERITE_KAFKA_ADVERTISED, when set
# (host:port), is the address the broker advertises instead of its own (a TLS front).
set -euo pipefail

TANSU_VERSION=0.6.0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
CACHE="${NERITE_CACHE:-$HOME/.cache/nerite}"
ROOT="$CACHE/tansu-$TANSU_VERSION"
BIN="$ROOT/bin/tansu"

die() { echo "kafka.sh: $*" >&2; exit 1; }

cmd_install() {
    if [ -x "$BIN" ]; then
        echo "$BIN"
        return 0
    fi
    echo "kafka.sh: building tansu $TANSU_VERSION (debug profile, sqlite storage; first time only, 15-20 minutes on 2 cores)" >&2
    mkdir -p "$ROOT"
    # A private target dir keeps this build from holding the project's build lock; only the
    # sqlite engine (libsql) is built.
    env -u CARGO_TARGET_DIR CARGO_TARGET_DIR="$CACHE/tansu-build" \
        cargo install tansu --version "$TANSU_VERSION" --locked --debug \
        --features libsql --root "$ROOT" >&2
    [ -x "$BIN" ] || die "tansu is still missing after the build"
    # The build tree is large and not needed once the binary is installed.
    rm -rf "$CACHE/tansu-build"
    echo "$BIN"
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

# Kill the process in FILE if it still runs and its command line mentions WHAT.
kill_pid_file() {
    local file=$1 what=$2 pid cmd i
    pid=$(read_pid "$file")
    if pid_alive "$pid"; then
        cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
        if [[ "$cmd" == *"$what"* ]]; then
            kill -KILL "$pid" 2>/dev/null || true
            for i in $(seq 1 50); do
                pid_alive "$pid" || break
                sleep 0.1
            done
        fi
    fi
    rm -f "$file"
}

# Start the broker process; $@: extra broker flags.
launch() {
    local dir=$1 port=$2
    shift 2
    (cd "$dir" && exec setsid "$BIN" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://${NERITE_KAFKA_ADVERTISED:-127.0.0.1:$port}" \
        --storage-engine "sqlite://tansu.db" "$@" </dev/null >>"$dir/tansu.log" 2>&1) &
    local pid=$!
    echo "$pid" >"$dir/tansu.pid"
    local deadline=$((SECONDS + 30))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ! pid_alive "$pid"; then
            tail -n 20 "$dir/tansu.log" >&2 || true
            die "tansu exited during start-up"
        fi
        [ $SECONDS -lt $deadline ] || die "tansu did not listen on $port within 30s"
        sleep 0.1
    done
}

cmd_start() {
    [ $# -ge 2 ] || die "usage: kafka.sh start DIR PORT [USER:PASSWORD ...]"
    local dir=$1 port=$2
    shift 2
    case "$port" in '' | *[!0-9]*) die "not a port number: $port" ;; esac
    cmd_install >/dev/null
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if pid_alive "$(read_pid "$dir/tansu.pid")"; then
        die "a broker already runs from $dir (stop it first)"
    fi
    echo "$port" >"$dir/port"
    launch "$dir" "$port"
    if [ $# -gt 0 ]; then
        # Users can only be created while no authentication is required; they live in the
        # sqlite store and survive the restart.
        local u
        for u in "$@"; do
            "$BIN" user create --broker "tcp://127.0.0.1:$port" --mechanism scram512 \
                "${u%%:*}" "${u#*:}" >>"$dir/tansu.log" 2>&1 ||
                die "cannot create user ${u%%:*}"
        done
        kill_pid_file "$dir/tansu.pid" tansu
        launch "$dir" "$port" --authentication
    fi

    local owner="${NERITE_KAFKA_OWNER_PID:-}"
    if [ -n "$owner" ]; then
        pid_alive "$owner" || die "owner process $owner is not running"
        # shellcheck disable=SC2016
        setsid bash -c 'while [ -e "/proc/$1" ] && [ "$(cut -d" " -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; do sleep 1; done; exec bash "$2" stop "$3"' \
            nerite-kafka-watchdog "$owner" "$SELF" "$dir" </dev/null >/dev/null 2>&1 &
        echo $! >"$dir/watchdog.pid"
    fi
    echo "kafka.sh: tansu on 127.0.0.1:$port (pid $(cat "$dir/tansu.pid"))${1:+, SASL required}" >&2
}

cmd_stop() {
    [ $# -ge 1 ] || die "usage: kafka.sh stop DIR"
    local dir=$1
    [ -d "$dir" ] || return 0
    dir=$(cd "$dir" && pwd)
    if [ "$(read_pid "$dir/watchdog.pid")" = "$$" ]; then
        rm -f "$dir/watchdog.pid"
    else
        kill_pid_file "$dir/watchdog.pid" watchdog
    fi
    kill_pid_file "$dir/tansu.pid" tansu
}

case "${1:-}" in
    install) shift; cmd_install "$@" ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    *) die "usage: kafka.sh install | start DIR PORT [USER:PASSWORD ...] | stop DIR" ;;
esac
