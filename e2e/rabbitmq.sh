#!/usr/bin/env bash
# Install and run throwaway RabbitMQ brokers for nerite's tests.
#
#   e2e/rabbitmq.sh install
#       Install the Debian rabbitmq-server package when it is missing (idempotent).
#   e2e/rabbitmq.sh start DIR AMQP_PORT MGMT_PORT [DIST_PORT EPMD_PORT]
#       Start an isolated broker whose every file lives under DIR, bound to 127.0.0.1, and wait
#       until it and its management API answer. Starting again on the same DIR and ports after
#       `stop` keeps the broker's data (same node name, same data directory).
#   e2e/rabbitmq.sh stop DIR
#       Kill the broker and its epmd (idempotent).
#   e2e/rabbitmq.sh status DIR
#       Exit 0 and print "running" when the broker answers, else print "stopped" and exit 3.
#
# The management API accepts guest/guest from localhost. Statistics are collected every second
# so tests see new queue depths within one to two seconds.
#
# Environment: NERITE_CACHE (default $HOME/.cache/nerite) holds downloaded packages;
# NERITE_RABBITMQ_START_TIMEOUT (default 60) is the readiness deadline in seconds;
# NERITE_RABBITMQ_OWNER_PID, when set, is a process whose exit stops the broker (so a test run
# that is killed does not leave brokers behind); NERITE_RABBITMQ_PLUGINS (comma-separated,
# default rabbitmq_management,rabbitmq_shovel,rabbitmq_shovel_management) are the plugins.

set -euo pipefail

RABBIT_BIN=/usr/lib/rabbitmq/bin
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
CACHE="${NERITE_CACHE:-${HOME:-/root}/.cache/nerite}"
START_TIMEOUT="${NERITE_RABBITMQ_START_TIMEOUT:-60}"

die() {
    echo "rabbitmq.sh: $*" >&2
    exit 1
}

usage() {
    cat >&2 <<'EOF'
usage: rabbitmq.sh install
       rabbitmq.sh start DIR AMQP_PORT MGMT_PORT [DIST_PORT EPMD_PORT]
       rabbitmq.sh stop DIR
       rabbitmq.sh status DIR
EOF
    exit 2
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "installing packages needs root or sudo"
    fi
}

cmd_install() {
    if [ -x "$RABBIT_BIN/rabbitmq-server" ] && [ -x "$RABBIT_BIN/rabbitmqctl" ]; then
        return 0
    fi
    echo "rabbitmq.sh: installing rabbitmq-server" >&2
    mkdir -p "$CACHE/apt/partial"
    as_root apt-get -o DPkg::Lock::Timeout=600 update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get \
        -o DPkg::Lock::Timeout=600 \
        -o Dir::Cache::archives="$CACHE/apt" \
        install -y --no-install-recommends rabbitmq-server
    [ -x "$RABBIT_BIN/rabbitmq-server" ] || die "rabbitmq-server is still missing after install"
}

is_port() {
    case "$1" in
        '' | *[!0-9]*) return 1 ;;
    esac
    [ "$1" -ge 1 ] && [ "$1" -le 65535 ]
}

# A port derived from BASE that stays in range: BASE+OFFSET, or BASE-OFFSET near the top.
derived_port() {
    local base=$1 offset=$2
    if [ $((base + offset)) -le 65535 ]; then
        echo $((base + offset))
    else
        echo $((base - offset))
    fi
}

# Absolute form of DIR (created if missing).
abs_dir() {
    mkdir -p "$1"
    (cd "$1" && pwd)
}

# Export the environment one broker instance needs; reads DIR/ports.env written by start.
load_env() {
    local dir=$1
    [ -f "$dir/ports.env" ] || return 1
    # shellcheck source=/dev/null
    . "$dir/ports.env"
    export HOME="$dir/home"
    export RABBITMQ_NODENAME="nerite-${AMQP_PORT}@localhost"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$AMQP_PORT"
    export RABBITMQ_DIST_PORT="$DIST_PORT"
    export ERL_EPMD_PORT="$EPMD_PORT"
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
    export RABBITMQ_PLUGINS_EXPAND_DIR="$dir/plugins-expand"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-rabbit quorum_tick_interval 1000"
    # Keep the CLI tools' own distribution ports away from the ephemeral range tests pick from.
    export RABBITMQ_CTL_DIST_PORT_MIN="$CTL_DIST_PORT"
    export RABBITMQ_CTL_DIST_PORT_MAX="$((CTL_DIST_PORT + 10))"
}

# True when PID runs; a zombie (killed, not yet reaped by init) counts as gone.
pid_alive() {
    [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    [ "${stat:0:1}" != "Z" ]
}

read_pid() {
    local file=$1
    [ -f "$file" ] || return 0
    tr -dc '0-9' <"$file"
}

log_tail() {
    local dir=$1 f
    for f in "$dir/server.out" "$dir"/log/*.log; do
        [ -s "$f" ] || continue
        echo "---- errors in $f ----" >&2
        grep -iE 'error|crash|failed|eaddrinuse|eacces|enoent' "$f" | tail -n 15 >&2 || true
        echo "---- last lines of $f ----" >&2
        tail -n 25 "$f" >&2
    done
}

# True when something answers HTTP on 127.0.0.1:PORT.
http_answers() {
    local port=$1
    if command -v curl >/dev/null 2>&1; then
        curl -s -o /dev/null --max-time 2 -u guest:guest "http://127.0.0.1:$port/api/overview"
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
    fi
}

cmd_start() {
    [ $# -ge 3 ] || usage
    local dir amqp=$2 mgmt=$3
    dir=$(abs_dir "$1")
    local dist=${4:-$(derived_port "$amqp" 20000)}
    local epmd=${5:-$(derived_port "$mgmt" 20000)}
    local p
    for p in "$amqp" "$mgmt" "$dist" "$epmd"; do
        is_port "$p" || die "not a port number: $p"
    done
    [ -x "$RABBIT_BIN/rabbitmq-server" ] || cmd_install

    if [ -f "$dir/ports.env" ]; then
        load_env "$dir"
        if pid_alive "$(read_pid "$RABBITMQ_PID_FILE")"; then
            die "a broker already runs from $dir (stop it first)"
        fi
    fi

    mkdir -p "$dir/home" "$dir/mnesia" "$dir/log" "$dir/plugins-expand"
    cat >"$dir/ports.env" <<EOF
AMQP_PORT=$amqp
MGMT_PORT=$mgmt
DIST_PORT=$dist
EPMD_PORT=$epmd
CTL_DIST_PORT=$(derived_port "$dist" 100)
EOF
    : >"$dir/rabbitmq-env.conf"
    echo "[${NERITE_RABBITMQ_PLUGINS:-rabbitmq_management,rabbitmq_shovel,rabbitmq_shovel_management}]." >"$dir/enabled_plugins"
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$amqp
management.tcp.ip = 127.0.0.1
management.tcp.port = $mgmt
loopback_users.guest = true
collect_statistics_interval = 1000
management.sample_retention_policies.global.minute = 1
management.sample_retention_policies.basic.minute = 1
management.sample_retention_policies.detailed.10 = 1
EOF
    load_env "$dir"
    rm -f "$RABBITMQ_PID_FILE"

    local started
    started=$(date +%s)

    # Our own epmd on our own port, so runs never share (or kill) each other's.
    local epmd_bin
    epmd_bin=$(command -v epmd || true)
    if [ -z "$epmd_bin" ]; then
        epmd_bin=$(find /usr/lib/erlang -name epmd -type f -perm -u+x 2>/dev/null | head -n 1)
    fi
    [ -n "$epmd_bin" ] || die "epmd not found (is erlang installed?)"
    setsid "$epmd_bin" -port "$EPMD_PORT" </dev/null >"$dir/epmd.out" 2>&1 &
    echo $! >"$dir/epmd.pid"

    # The broker, detached from our stdio so callers capturing our output are not held open.
    setsid "$RABBIT_BIN/rabbitmq-server" </dev/null >"$dir/server.out" 2>&1 &
    local wrapper=$!
    echo "$wrapper" >"$dir/wrapper.pid"

    local owner="${NERITE_RABBITMQ_OWNER_PID:-}"
    if [ -n "$owner" ]; then
        pid_alive "$owner" || die "owner process $owner is not running"
        # Polls /proc: the owner is gone when its entry is, or when it is a zombie.
        # shellcheck disable=SC2016
        setsid bash -c 'while [ -e "/proc/$1" ] && [ "$(cut -d" " -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; do sleep 1; done; exec bash "$2" stop "$3"' \
            nerite-rabbitmq-watchdog "$owner" "$SELF" "$dir" </dev/null >/dev/null 2>&1 &
        echo $! >"$dir/watchdog.pid"
    fi

    local deadline=$((started + START_TIMEOUT)) ready=""
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if ! pid_alive "$wrapper"; then
            echo "rabbitmq.sh: the broker exited during startup" >&2
            log_tail "$dir"
            cmd_stop "$dir" >/dev/null 2>&1 || true
            exit 1
        fi
        if [ -s "$RABBITMQ_PID_FILE" ] &&
            timeout 15 "$RABBIT_BIN/rabbitmqctl" -q await_startup --timeout 10 >/dev/null 2>&1 &&
            http_answers "$MGMT_PORT"; then
            ready=1
            break
        fi
        sleep 0.3
    done
    if [ -z "$ready" ]; then
        echo "rabbitmq.sh: the broker in $dir was not ready within ${START_TIMEOUT}s" >&2
        log_tail "$dir"
        cmd_stop "$dir" >/dev/null 2>&1 || true
        exit 1
    fi
    echo "rabbitmq.sh: broker ready in $(($(date +%s) - started))s: amqp 127.0.0.1:$AMQP_PORT," \
        "management http://127.0.0.1:$MGMT_PORT, pid $(read_pid "$RABBITMQ_PID_FILE")" >&2
}

# Kill the process in FILE if it still runs and its command line mentions WHAT (a pid file left
# by a process that died on its own may name an unrelated process by now).
kill_pid_file() {
    local file=$1 what=$2 pid cmd
    pid=$(read_pid "$file")
    if pid_alive "$pid"; then
        cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
        if [[ "$cmd" == *"$what"* ]]; then
            kill -KILL "$pid" 2>/dev/null || true
            # Wait until it is gone so a restart on the same ports does not race it.
            local i
            for i in $(seq 1 50); do
                pid_alive "$pid" || break
                sleep 0.1
            done
        fi
    fi
    rm -f "$file"
}

cmd_stop() {
    [ $# -ge 1 ] || usage
    local dir=$1
    [ -d "$dir" ] || return 0
    dir=$(cd "$dir" && pwd)
    # The watchdog first, unless this is the watchdog (it execs this script to stop).
    if [ "$(read_pid "$dir/watchdog.pid")" = "$$" ]; then
        rm -f "$dir/watchdog.pid"
    else
        kill_pid_file "$dir/watchdog.pid" watchdog
    fi
    kill_pid_file "$dir/rabbitmq.pid" beam
    kill_pid_file "$dir/wrapper.pid" rabbitmq-server
    kill_pid_file "$dir/epmd.pid" epmd
}

cmd_status() {
    [ $# -ge 1 ] || usage
    local dir=$1
    if [ -d "$dir" ] && load_env "$(cd "$dir" && pwd)" &&
        pid_alive "$(read_pid "$RABBITMQ_PID_FILE")" && http_answers "$MGMT_PORT"; then
        echo "running (amqp $AMQP_PORT, management $MGMT_PORT)"
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
