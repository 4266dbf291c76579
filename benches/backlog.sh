#!/usr/bin/env bash
# An offline persistent session receiving a large backlog: what it costs
# petrel in memory and on disk, how long a restart with it takes, and how
# long the session takes to drain it once it connects.
#
# 1. petrel (durability = "sync", release build) starts on a free port with
#    a fresh data directory.
# 2. mosquitto_sub subscribes a persistent session (clean session 0, QoS 1)
#    to `#` and leaves.
# 3. `petrel bench --scenario fan-in --qos 1 --e2e-window 1000` publishes N
#    messages of 64 bytes; its own subscriber receives them live (the
#    window keeps that subscriber's queue short, so what grows is the
#    offline session's), and every one is also queued for the offline
#    session.
# 4. Reported: broker RSS before and after, the data directory's size.
# 5. petrel is stopped (SIGTERM) and started again on the same directory:
#    the time until it accepts connections, and its RSS then.
# 6. mosquitto_sub resumes the session and receives all N (QoS 1): the time
#    it takes, and how many arrived.
#
# Usage: benches/backlog.sh [--no-build] [--messages N] [--out DIR]
#
#   --messages N   backlog size (default 1000000, at most max_queued_messages)
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
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done

# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
OUT=${OUT:-$TARGET_DIR/bench/backlog-$(date +%Y%m%d-%H%M%S)}
command -v mosquitto_sub >/dev/null || { echo "mosquitto_sub not found (apt-get install mosquitto-clients)" >&2; exit 1; }

PUBLISHERS=16
if [ $(( MESSAGES % PUBLISHERS )) != 0 ]; then
    echo "--messages must be a multiple of $PUBLISHERS" >&2
    exit 2
fi

WORK=$(mktemp -d /tmp/petrel-backlog.XXXXXX)
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
PORT=$(free_port)
DATA="$WORK/data"

start() {
    "$PETREL_BIN" serve -c "$ROOT/config/petrel.toml" -p "$PORT" --data-dir "$DATA" \
        >>"$OUT/petrel.log" 2>&1 &
    PID=$!
    wait_listening "$PORT" "$PID" || { tail -20 "$OUT/petrel.log" >&2; exit 1; }
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$PID/status"; }
now_ms() { date +%s%3N; }

start
mosquitto_sub -p "$PORT" -i backlog-sub -c -q 1 -t '#' -E
RSS_BEFORE=$(rss_kb)
log "publishing $MESSAGES messages for the offline session"
T0=$(now_ms)
"$BENCH_BIN" bench --port "$PORT" --scenario fan-in --qos 1 --publishers "$PUBLISHERS" \
    --messages $(( MESSAGES / PUBLISHERS )) --e2e-window 1000 --json >"$OUT/publish.json"
PUBLISH_S=$(awk -v ms=$(( $(now_ms) - T0 )) 'BEGIN { printf "%.1f", ms / 1000 }')
RSS_AFTER=$(rss_kb)
DISK_KB=$(du -sk "$DATA" | cut -f1)
LOG_KB=$(du -sk "$DATA/log" | cut -f1)

log "restarting"
kill "$PID"; wait "$PID" || true
T0=$(now_ms)
start
START_MS=$(( $(now_ms) - T0 ))
RSS_RESTARTED=$(rss_kb)

log "draining"
T0=$(now_ms)
RECEIVED=$(timeout 600 mosquitto_sub -p "$PORT" -i backlog-sub -c -q 1 -t '#' -C "$MESSAGES" -F x | wc -l)
DRAIN_MS=$(( $(now_ms) - T0 ))
RSS_DRAINED=$(rss_kb)

mb() { awk -v kb="$1" 'BEGIN { printf "%.1f", kb / 1024 }'; }
REPORT="## Offline backlog ($(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ))

$MESSAGES QoS 1 messages of 64 bytes published (\`petrel bench --scenario fan-in --qos 1 --publishers $PUBLISHERS --e2e-window 1000\`, ${PUBLISH_S} s) while a persistent session subscribed to \`#\` was offline; petrel \`durability = \"sync\"\`, embedded defaults.

| measure | value |
|---|---|
| broker RSS before / after the backlog | $(mb "$RSS_BEFORE") MB / $(mb "$RSS_AFTER") MB (+$(mb $(( RSS_AFTER - RSS_BEFORE ))) MB) |
| data directory (of which the log) | $(mb "$DISK_KB") MB ($(mb "$LOG_KB") MB) |
| restart until accepting connections | ${START_MS} ms |
| RSS after the restart | $(mb "$RSS_RESTARTED") MB |
| drain with mosquitto_sub (QoS 1) | $RECEIVED of $MESSAGES in ${DRAIN_MS} ms ($(awk -v n="$RECEIVED" -v ms="$DRAIN_MS" 'BEGIN { printf "%.0f", n * 1000 / ms }') msg/s) |
| RSS after draining | $(mb "$RSS_DRAINED") MB |"
echo "$REPORT" | tee "$OUT/report.md"
