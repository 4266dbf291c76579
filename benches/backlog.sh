#!/usr/bin/env bash
# An offline persistent session receiving a large backlog: what it costs
# in memory and on disk, how long a restart with it takes, and how long the
# session takes to drain it once it connects; petrel and Mosquitto, one
# after the other in the same run.
#
# 1. The broker starts on a free port with a fresh data directory: petrel
#    with durability = "sync" (release build, embedded defaults), Mosquitto
#    with persistence true; both queue up to N messages per session.
# 2. mosquitto_sub subscribes a persistent session (clean session 0, QoS 1)
#    to `#` and leaves.
# 3. `petrel bench --scenario fan-in --qos 1 --e2e-window 1000` publishes N
#    messages of 64 bytes; its own subscriber receives them live (the
#    window keeps that subscriber's queue short, so what grows is the
#    offline session's), and every one is also queued for the offline
#    session.
# 4. Reported: broker RSS before and after, the data directory's size
#    once the broker stopped.
# 5. The broker is stopped (SIGTERM) and started again on the same
#    directory: the time until it accepts connections, and its RSS then.
# 6. mosquitto_sub resumes the session and receives all N (QoS 1): the time
#    it takes, and how many arrived.
#
# Usage: benches/backlog.sh [--no-build] [--messages N] [--out DIR]
#
#   --messages N   backlog size (default 1000000); both brokers queue that many
#   --no-build     use the existing release binary
#   --out DIR      where the report and the broker log go (default
#                  target/bench/backlog-<time>)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=1
MESSAGES=1000000
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) BUILD=0 ;;
        --messages) MESSAGES=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done

# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
OUT=${OUT:-$TARGET_DIR/bench/backlog-$(date +%Y%m%d-%H%M%S)}
command -v mosquitto_sub >/dev/null || { echo "mosquitto_sub not found (apt-get install mosquitto-clients)" >&2; exit 1; }
command -v mosquitto >/dev/null || { echo "mosquitto not found (apt-get install mosquitto)" >&2; exit 1; }

PUBLISHERS=16
if [ $(( MESSAGES % PUBLISHERS )) != 0 ]; then
    echo "--messages must be a multiple of $PUBLISHERS" >&2
    exit 2
fi

WORK=$(mktemp -d /tmp/petrel-backlog.XXXXXX)
chmod 755 "$WORK" # Mosquitto drops root privileges
PID=""
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "[backlog] $*" >&2; }

if [ "$BUILD" = 1 ]; then
    log "building petrel (release)"
    (cd "$ROOT" && cargo build --release --quiet)
fi
mkdir -p "$OUT"

start() { # target port data-dir
    case "$1" in
        petrel)
            env PETREL_LIMITS__MAX_QUEUED_MESSAGES="$MESSAGES" \
                "$PETREL_BIN" serve -c "$ROOT/config/petrel.toml" -p "$2" --data-dir "$3" \
                >>"$OUT/petrel.log" 2>&1 &
            ;;
        mosquitto)
            cat > "$WORK/mosquitto.conf" <<EOF
listener $2 127.0.0.1
allow_anonymous true
max_queued_messages $MESSAGES
persistence true
persistence_location $3/
log_dest stderr
log_type error
log_type warning
EOF
            mosquitto -c "$WORK/mosquitto.conf" >>"$OUT/mosquitto.log" 2>&1 &
            ;;
    esac
    PID=$!
    wait_listening "$2" "$PID" || { tail -20 "$OUT/$1.log" >&2; exit 1; }
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$PID/status"; }
now_ms() { date +%s%3N; }
mb() { awk -v kb="$1" 'BEGIN { printf "%.1f", kb / 1024 }'; }

# run TARGET -> one table row on stdout
run() {
    local target=$1 port data t0 publish_s rss_before rss_after disk_kb start_ms
    local rss_restarted received drain_ms rss_drained
    port=$(free_port)
    data="$WORK/$target-data"
    mkdir -p "$data"
    chmod 1777 "$data" # written by the unprivileged mosquitto user
    start "$target" "$port" "$data"
    mosquitto_sub -p "$port" -i backlog-sub -c -q 1 -t '#' -E
    rss_before=$(rss_kb)
    log "$target: publishing $MESSAGES messages for the offline session"
    t0=$(now_ms)
    "$BENCH_BIN" bench --port "$port" --scenario fan-in --qos 1 --publishers "$PUBLISHERS" \
        --messages $(( MESSAGES / PUBLISHERS )) --e2e-window 1000 --json >"$OUT/$target-publish.json"
    publish_s=$(awk -v ms=$(( $(now_ms) - t0 )) 'BEGIN { printf "%.1f", ms / 1000 }')
    rss_after=$(rss_kb)
    log "$target: restarting"
    kill "$PID"; wait "$PID" || true
    disk_kb=$(du -sk "$data" | cut -f1)
    t0=$(now_ms)
    start "$target" "$port" "$data"
    start_ms=$(( $(now_ms) - t0 ))
    rss_restarted=$(rss_kb)
    log "$target: draining"
    t0=$(now_ms)
    received=$(timeout 600 mosquitto_sub -p "$port" -i backlog-sub -c -q 1 -t '#' -C "$MESSAGES" -F x | wc -l)
    drain_ms=$(( $(now_ms) - t0 ))
    rss_drained=$(rss_kb)
    kill "$PID"; wait "$PID" || true
    PID=""
    echo "| $target | ${publish_s} s | $(mb "$rss_before") / $(mb "$rss_after") (+$(mb $(( rss_after - rss_before )))) | $(mb "$disk_kb") | ${start_ms} ms | $(mb "$rss_restarted") | $received in ${drain_ms} ms ($(awk -v n="$received" -v ms="$drain_ms" 'BEGIN { printf "%.0f", n * 1000 / ms }') msg/s) | $(mb "$rss_drained") |"
}

ROWS=$(run petrel)
ROWS+=$'\n'$(run mosquitto)
REPORT="## Offline backlog ($(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ))

$MESSAGES QoS 1 messages of 64 bytes published (\`petrel bench --scenario fan-in --qos 1 --publishers $PUBLISHERS --e2e-window 1000\`) while a persistent session subscribed to \`#\` was offline; then the broker stopped with SIGTERM and started again; then the session drained with \`mosquitto_sub -c -q 1\`. petrel: \`durability = \"sync\"\`, embedded defaults; Mosquitto: \`persistence true\` (it saves its state at exit and restores it at start). Both queue up to $MESSAGES messages per session. Memory and disk in MB.

| broker | publish | RSS before / after the backlog | data dir after stop | restart until accepting | RSS after restart | drain | RSS after drain |
|---|---|---|---|---|---|---|---|
$ROWS"
echo "$REPORT" | tee "$OUT/report.md"
