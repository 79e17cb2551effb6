#!/usr/bin/env bash
# A Kafka-protocol broker for tests: tansu (crates.io), built once and cached outside the clone.
#   bash e2e/kafka.sh install            build tansu if the cached binary is missing; print its path
#   bash e2e/kafka.sh start DIR PORT     start a broker with sqlite storage under DIR on 127.0.0.1:PORT
#   bash e2e/kafka.sh stop DIR           stop it (by the PID in DIR/tansu.pid)
set -euo pipefail

TANSU_VERSION=0.6.0
CACHE="${NERITE_CACHE:-$HOME/.cache/nerite}"
ROOT="$CACHE/tansu-$TANSU_VERSION"
BIN="$ROOT/bin/tansu"

die() { echo "kafka.sh: $*" >&2; exit 1; }

cmd_install() {
    if [ -x "$BIN" ]; then
        echo "$BIN"
        return 0
    fi
    echo "kafka.sh: building tansu $TANSU_VERSION (debug profile; first time only, several minutes)" >&2
    mkdir -p "$ROOT"
    # A private target dir keeps this build from holding the project's build lock.
    env -u CARGO_TARGET_DIR CARGO_TARGET_DIR="$CACHE/tansu-build" \
        cargo install tansu --version "$TANSU_VERSION" --locked --debug \
        --features libsql,dynostore --root "$ROOT" >&2
    [ -x "$BIN" ] || die "tansu is still missing after the build"
    echo "$BIN"
}

cmd_start() {
    local dir=${1:?DIR} port=${2:?PORT}
    local bin
    bin=$(cmd_install)
    mkdir -p "$dir"
    (
        cd "$dir"
        nohup "$bin" broker \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine "sqlite://tansu.db" >"$dir/tansu.log" 2>&1 &
        echo $! >"$dir/tansu.pid"
    )
    local deadline=$((SECONDS + 30))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ! kill -0 "$(cat "$dir/tansu.pid")" 2>/dev/null; then
            tail -n 20 "$dir/tansu.log" >&2 || true
            die "tansu exited during start-up"
        fi
        [ $SECONDS -lt $deadline ] || die "tansu did not listen on $port within 30s"
        sleep 0.1
    done
    echo "kafka.sh: tansu on 127.0.0.1:$port (pid $(cat "$dir/tansu.pid"))" >&2
}

cmd_stop() {
    local dir=${1:?DIR}
    [ -f "$dir/tansu.pid" ] || return 0
    local pid
    pid=$(cat "$dir/tansu.pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/tansu.pid"
}

case "${1:-}" in
    install) shift; cmd_install "$@" ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    *) die "usage: kafka.sh install | start DIR PORT | stop DIR" ;;
esac
